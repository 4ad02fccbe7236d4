"""Exact budgets: the 0/1 masks of a gated encoder that meet sparsity targets, from the gates' ranking.

The deterministic rule (``hard_concrete.deterministic_mask``) keeps round(sum P(z != 0)) units of every
row, ranked by log_alpha; the sparsity of those masks is near the run's target but not at it (a demo's
``macs_40`` exported at 0.428). :func:`fit_budget` starts from those masks and moves units, in log_alpha
order, closest to the decision first, until every target is met as closely as the units allow:

- too little sparsity: remove kept units, smallest log_alpha first;
- too much: add back pruned units, largest log_alpha first.

Every row keeps its units of largest log_alpha (a mask is a kept count per row), so a state is one count
per row. Sparsity never decreases as units are removed, so the number of moves is found by bisection over
the sorted list (a few cost evaluations). Of the two prefixes around the target the closer one is taken
(on a tie, the one with fewer moves: never more than needed). When even the closer one is more than 0.5
points off (the move across the target is coarse: a block of 8 hidden dims of a 192-dim model, a head of a
small one), the moves after it are taken in the same order, leaving out the rows whose next move would
overshoot (each row still keeps its units of largest log_alpha).

``align=N``: every aligned row (a CNN layer's channels, a layer's FFN units, the hidden dim, a head's
query/key or value/output dims) keeps a multiple of N units (or all of them); the moves are then blocks of
N units of a row, scored by their mean log_alpha (a row's blocks stay in rank order). CNN layers and the
hidden dim keep at least N (at least one unit without alignment): an empty one cannot be exported.

A measure of several quantities is fitted one quantity at a time, each with the gate groups its
measure's entry gives (``SparsityMeasure.budget_groups``: sep_size fits ``cnn`` with the conv gates
first, then ``transformer`` with the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from . import cost_model
from .gate_state import GateMasks
from .gates import GROUPS, EncoderGates
from .hard_concrete import keep_prob
from .measures import SparsityMeasure
from .spec import EncoderSpec

Sparsity = Callable[[GateMasks], Dict[str, float]]
TOLERANCE = 0.005  # 0.5 points absolute: what "meets the budget" means
ALIGNED = ("conv", "ffn", "hidden", "qk", "vo")  # rows whose kept count --align rounds (not the head count)
AT_LEAST_ONE = ("conv", "hidden")  # an empty CNN layer or hidden size cannot be exported
FIRST_FIT_EVALUATIONS = 200  # bound of the refinement after a too coarse move (export only: it is rare)


@dataclass
class _Row:
    group: str
    block: int
    row: int
    order: torch.Tensor  # unit indices, largest log_alpha first
    sorted_alpha: torch.Tensor  # log_alpha in that order
    allowed: torch.Tensor  # the kept counts the row may have, ascending

    def nearest(self, k: int) -> int:
        """The allowed count nearest ``k`` (the smaller one on a tie)."""
        return int(self.allowed[(self.allowed - k).abs().argmin()])  # argmin: the first, i.e. smaller, of equals


def _allowed(n: int, low: int, step: int) -> torch.Tensor:
    """Multiples of ``step`` and ``n`` itself, from ``low`` (or ``n`` if fewer) to ``n``."""
    counts = list(range(0, n + 1, step))
    if counts[-1] != n:
        counts.append(n)
    return torch.tensor([c for c in counts if c >= min(low, n)])


@dataclass
class BudgetResult:
    """The fitted masks, the sparsity before (deterministic masks) and after, and the units moved per group."""

    masks: GateMasks
    targets: Dict[str, float]
    before: Dict[str, float]
    delivered: Dict[str, float]
    added: Dict[str, int] = field(default_factory=dict)
    removed: Dict[str, int] = field(default_factory=dict)
    align: int = 1

    @property
    def met(self) -> bool:
        return all(abs(self.delivered[q] - t) <= TOLERANCE + 1e-12 for q, t in self.targets.items())

    def summary(self) -> Dict:
        return {"targets": self.targets, "as_trained": self.before, "delivered": self.delivered,
                "added": self.added, "removed": self.removed, "align": self.align}


def measure_sparsity(measure: SparsityMeasure, spec: EncoderSpec, seconds: float,
                     reference: Optional[EncoderSpec] = None, **resources: Any) -> Sparsity:
    """``masks -> {quantity: fraction removed}`` of ``measure`` at ``seconds``, against ``reference`` (default:
    ``spec``, as the training constraint measures it); ``resources``: what the measure needs (``needs``, e.g. the
    ``latency_table`` of the latency measure)."""
    dense = cost_model.cost(reference or spec, None, seconds)

    def sparsity(masks: GateMasks) -> Dict[str, float]:
        fractions = measure(cost_model.cost(spec, masks, seconds), dense, **resources)
        return {q: cost_model.to_float(v) for q, v in fractions.items()}

    return sparsity


def _blocks(gates: EncoderGates, group: str) -> List[torch.Tensor]:
    g = getattr(gates, group)
    if g is None:
        return []
    return [g.log_alpha] if group == "hidden" else [m.log_alpha for m in g]


def _rows_of(alpha: torch.Tensor) -> torch.Tensor:
    """(rows, units) view of a gate block; a block with no unit has one empty row per leading index."""
    return alpha.detach().reshape(math.prod(alpha.shape[:-1]), alpha.shape[-1])


def _rows(gates: EncoderGates, groups: Sequence[str], align: int) -> List[_Row]:
    rows = []
    for group in groups:
        for b, alpha in enumerate(_blocks(gates, group)):
            for r, a in enumerate(_rows_of(alpha).float()):
                order = a.argsort(descending=True, stable=True)
                step = align if group in ALIGNED else 1
                low = step if group in AT_LEAST_ONE else 0
                rows.append(_Row(group, b, r, order, a[order], _allowed(int(a.numel()), low, step)))
    return rows


def _as_trained(rows: List[_Row]) -> List[int]:
    """Kept count per row of the deterministic rule: round(expected L0), as ``hard_concrete.deterministic_mask``."""
    return [int(keep_prob(row.sorted_alpha).sum().round()) if row.sorted_alpha.numel() else 0 for row in rows]


def _masks(gates: EncoderGates, rows: List[_Row], counts: List[int]) -> GateMasks:
    built: Dict[str, List[torch.Tensor]] = {}
    for group in GROUPS:
        built[group] = [torch.zeros_like(_rows_of(a)) for a in _blocks(gates, group)]
    for row, k in zip(rows, counts):
        built[row.group][row.block][row.row, row.order[:k]] = 1.0
    for group in GROUPS:
        built[group] = [m.reshape(a.shape).to(a.dtype) for m, a in zip(built[group], _blocks(gates, group))]
    return GateMasks(**{g: (None if getattr(gates, g) is None else (built[g][0] if g == "hidden" else built[g]))
                        for g in GROUPS})


@dataclass
class _Moves:
    """The moves in the order they are made: ``row[j]`` is the row of the j-th; ``steps[i]`` the counts row i
    goes through, in its order."""

    row: torch.Tensor
    steps: Dict[int, List[int]]

    def __len__(self) -> int:
        return int(self.row.numel())

    def apply(self, counts: List[int], n: int) -> List[int]:
        """The counts after the first ``n`` moves."""
        made = torch.bincount(self.row[:n], minlength=len(counts)).tolist()
        return [self.steps[i][m - 1] if m else c for i, (c, m) in enumerate(zip(counts, made))]


def _moves(rows: List[_Row], counts: List[int], which: List[int], remove: bool) -> _Moves:
    """Removal from the smallest log_alpha, addition from the largest; a row's moves keep their order (their
    scores are made monotone)."""
    scores, row_ids, steps = [], [], {}
    for i in which:
        row, k = rows[i], counts[i]
        allowed = row.allowed
        step = allowed[allowed < k].flip(0) if remove else allowed[allowed > k]
        if step.numel() == 0:
            continue
        bounds = torch.cat([torch.tensor([k]), step])
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), row.sorted_alpha.double().cumsum(0)])
        lo, hi = torch.minimum(bounds[:-1], bounds[1:]), torch.maximum(bounds[:-1], bounds[1:])
        mean = (csum[hi] - csum[lo]) / (hi - lo)  # mean log_alpha of each move's units
        # removal: smallest first, so a row's later (higher) blocks may not score below its earlier ones
        scores.append(mean.cummax(0).values if remove else -mean.cummin(0).values)
        row_ids.append(torch.full((step.numel(),), i))
        steps[i] = step.tolist()
    if not scores:
        return _Moves(torch.zeros(0, dtype=torch.long), {})
    order = torch.sort(torch.cat(scores), stable=True).indices  # stable: a row's equal scores keep their order
    return _Moves(torch.cat(row_ids)[order], steps)


def _fit_one(gates, rows, counts, which, quantity: str, target: float, sparsity: Sparsity) -> List[int]:
    s0 = sparsity(_masks(gates, rows, counts))[quantity]
    if s0 == target:
        return counts
    remove = s0 < target
    moves = _moves(rows, counts, which, remove)

    def s(n: int) -> float:
        return sparsity(_masks(gates, rows, moves.apply(counts, n)))[quantity]

    def past(v: float) -> bool:  # the target is reached (or passed) after these moves
        return v >= target if remove else v <= target

    lo, hi = 0, len(moves)  # past(s(lo)) is False; find the fewest moves that reach the target
    s_lo, s_hi = s0, s(hi)
    if not past(s_hi):
        return moves.apply(counts, hi)  # as close as the units allow
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = s(mid)
        if past(v):
            hi, s_hi = mid, v
        else:
            lo, s_lo = mid, v
    n = hi if abs(s_hi - target) < abs(s_lo - target) else lo
    if min(abs(s_hi - target), abs(s_lo - target)) <= TOLERANCE:
        return moves.apply(counts, n)
    # The move that passes the target is too coarse (a block of a wide row, a head of a small model):
    # go on in the same order, leaving out the rows whose next move would pass it too far.
    state, v = _first_fit(moves, counts, lo, s_lo, lambda c: sparsity(_masks(gates, rows, c))[quantity], past, target)
    return state if abs(v - target) < abs(min((s_hi, s_lo), key=lambda x: abs(x - target)) - target) \
        else moves.apply(counts, n)


def _first_fit(moves: "_Moves", counts: List[int], lo: int, s_lo: float, s: Callable[[List[int]], float],
               past: Callable[[float], bool], target: float) -> "tuple[List[int], float]":
    """From the first ``lo`` moves (short of the target), the later moves in order, each row's in its order,
    skipping the rows whose next move would pass the target further than it is now; at most
    :data:`FIRST_FIT_EVALUATIONS` cost evaluations."""
    state, v = moves.apply(counts, lo), s_lo
    passed: "tuple[List[int], float] | None" = None  # the closest state found past the target
    taken = torch.bincount(moves.row[:lo], minlength=len(counts)).tolist()
    blocked = set()
    evaluations = 0
    for i in moves.row[lo:].tolist():
        if i in blocked:
            continue
        trial = list(state)
        trial[i] = moves.steps[i][taken[i]]
        w = s(trial)
        evaluations += 1
        if not past(w):
            state, v = trial, w
            taken[i] += 1
        else:
            if passed is None or abs(w - target) < abs(passed[1] - target):
                passed = (trial, w)
            blocked.add(i)
        if abs(v - target) <= TOLERANCE / 2 or evaluations >= FIRST_FIT_EVALUATIONS:
            break
    if passed is not None and abs(passed[1] - target) < abs(v - target):
        return passed
    return state, v


def fit_budget(gates: EncoderGates, measure: SparsityMeasure, targets: Dict[str, float], sparsity: Sparsity,
               align: int = 1) -> BudgetResult:
    """Masks of ``gates`` whose ``sparsity`` meets ``targets`` ({quantity of ``measure``: fraction}) as closely as
    the units allow (see the module's docstring); ``align``: kept counts in multiples of it."""
    if align < 1:
        raise ValueError(f"align must be a positive number of units, got {align}")
    if set(targets) != set(measure.quantities):
        raise ValueError(f"sparsity_mode={measure.name} constrains {list(measure.quantities)}, "
                         f"got targets for {sorted(targets)}")
    for q, t in targets.items():
        if not 0.0 <= t < 1.0:
            raise ValueError(f"budget for {q} must be in [0, 1), got {t}")
    groups = [g for g in GROUPS if getattr(gates, g) is not None]
    rows = _rows(gates, groups, align)
    start = _as_trained(rows)
    before = sparsity(_masks(gates, rows, start))
    counts = [row.nearest(k) for row, k in zip(rows, start)]  # aligned, CNN layers and hidden not empty
    for q in measure.quantities:
        allowed_groups = measure.budget_groups.get(q, GROUPS) if measure.budget_groups else GROUPS
        which = [i for i, r in enumerate(rows) if r.group in allowed_groups]
        counts = _fit_one(gates, rows, counts, which, q, targets[q], sparsity)
    masks = _masks(gates, rows, counts)
    added = {g: 0 for g in groups}
    removed = {g: 0 for g in groups}
    for row, a, b in zip(rows, start, counts):
        added[row.group] += max(0, b - a)
        removed[row.group] += max(0, a - b)
    return BudgetResult(masks, dict(targets), before, sparsity(masks), added, removed, align)
