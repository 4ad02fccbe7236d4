"""The sparsity constraint of HJ-Pruning, shared by every hjprune criterion.

Augmented Lagrangian (Eq. 5-6, CoFiPruning): the criterion adds

    g = lambda1 * (s - t) + lambda2 * (s - t)^2            (one pair per constrained quantity)

minimised over weights and log_alpha and MAXIMISED over the multipliers (gradient ascent, done by the
``hjprune_adamw`` optimizer). ``s`` is an expected sparsity from the one cost model, ``t`` rises
linearly from 0 to its final value over ``warmup_updates`` and then holds. A budget ladder (several
rungs of targets, each quantity's non-decreasing) ramps to each rung in turn over ``warmup_updates``, every
quantity from its previous rung's target, and holds it ``hold_updates``; the end of each hold is where the
run saves that budget's checkpoint.

The logged ``mask_sparsity`` is that of the masks export gives (``core/budget.py``: the deterministic
masks fitted to the final target, or the current rung's; in training refitted every ``REFIT_EVERY``
updates), ``trained_mask_sparsity`` that of the deterministic masks as they are.

What ``s`` measures is a mode of the registry in ``measures.py`` (size, sep_size, macs,
transformer_only, latency). Sparsity is measured against the dense structure of the model being pruned (its
``spec``).
The criteria's config (``criterions/sparsity_config.py``) builds a :class:`SparsityConstraint`.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import cost_model
from .budget import BudgetResult, fit_budget, measure_sparsity
from .hard_concrete import KeepsParameterDtype
from .latency_table import LatencyTable, check_family
from .measures import MEASURES

LAMBDA_GROUP = "hjprune_lambda"  # lambda1: rate optimizer.lambda_lr
LAMBDA2_GROUP = "hjprune_lambda2"  # lambda2: rate optimizer.lambda_lr * optimizer.lambda2_lr_scale
REFIT_EVERY = 10  # updates between two fits of the logged budget masks in training


class SparsityConstraint(KeepsParameterDtype):
    """Holds the Lagrange multipliers and computes the penalty and its log values for a gated model.
    The multipliers stay float64 under fp16/bf16 training: their gradient, gap * sample_size * loss
    scale, accumulated over update_freq micro-batches, overflows 16 bits."""

    def __init__(self, mode: str, targets: Dict[str, float], warmup_updates: int, seconds: float,
                 latency_table: Optional[LatencyTable] = None, target_latency_ms: Optional[float] = None,
                 ladder: Optional[List[Dict[str, float]]] = None, hold_updates: int = 0):
        """mode: a measure of :data:`measures.MEASURES`; targets: {constrained quantity: final target}
        (the measure's quantities); warmup_updates: updates over which the targets rise from 0 (from the
        previous rung's on a ladder); seconds: the virtual input length at which MACs are counted;
        ladder: the targets of every rung, none decreasing, the last one ``targets``; hold_updates: how long
        each rung holds. latency_table: the measured table of the ``latency`` measure (with any mode, the log
        shows predicted latency); target_latency_ms: the latency target in ms instead of a fraction (``targets``
        then omits it): converted to the fraction of the model's dense predicted latency when the model is
        first seen (not with a ladder: its rungs are fractions)."""
        super().__init__()
        if mode not in MEASURES:
            raise ValueError(f"unknown sparsity mode {mode!r} (expected one of {sorted(MEASURES)})")
        self.latency_table = latency_table
        self.target_latency_ms = target_latency_ms
        if target_latency_ms is not None:
            if mode != "latency":
                raise ValueError(f"a latency target in ms needs sparsity_mode=latency, got {mode}")
            if ladder is not None:
                raise ValueError("a budget ladder takes its latency targets as fractions (criterion.target_sparsity), "
                                 "not criterion.target_latency_ms")
            targets = {**targets, "latency": 0.0}  # set by check_model, from the model's dense latency
        if set(targets) != set(MEASURES[mode].quantities):
            raise ValueError(f"sparsity_mode={mode} constrains {list(MEASURES[mode].quantities)}, got targets for {sorted(targets)}")
        self.mode = mode
        self.measure = MEASURES[mode]
        self.names: List[str] = list(targets)
        # Plain floats: fairseq's .half() under fp16 would round a tensor target (0.4 -> 0.39990).
        self.final_targets: List[float] = [targets[n] for n in self.names]
        self.warmup_updates = warmup_updates
        self.seconds = seconds
        self.ladder: Optional[List[List[float]]] = None
        if ladder is not None:
            self.ladder = [[float(r[n]) for n in self.names] for r in ladder]
            if self.ladder[-1] != self.final_targets:
                raise ValueError(f"the ladder's last rung {ladder[-1]} is not the final target {targets}")
        self.hold_updates = hold_updates
        self._fit_key: Optional[Tuple] = None
        self._fit: Optional[BudgetResult] = None
        # lambda1, lambda2 per constrained quantity; both start at 0 (Sec. 2.2).
        self.lambda1 = nn.Parameter(torch.zeros(len(self.names), dtype=torch.float64))
        self.lambda2 = nn.Parameter(torch.zeros(len(self.names), dtype=torch.float64))
        self.lambda1.param_group = LAMBDA_GROUP
        self.lambda2.param_group = LAMBDA2_GROUP

    def check_model(self, model) -> None:
        gates = getattr(model, "gates", None)
        if gates is None:
            raise ValueError("the hjprune criteria need a gated model (model._name=hjprune_wav2vec_ctc with a prune_* group on)")
        self.measure.check_cnn_gates(gates.conv is not None)
        if self.latency_table is not None:
            check_family(self.latency_table, model.spec)
        if self.target_latency_ms is not None:
            dense_ms = 1000 * float(self.latency_table.predict(cost_model.counts(model.spec)))
            if not 0 < self.target_latency_ms < dense_ms:
                raise ValueError(f"criterion.target_latency_ms={self.target_latency_ms:g} must be positive and below "
                                 f"the dense model's predicted {dense_ms:.1f} ms ({self.latency_table.describe()})")
            self.final_targets[self.names.index("latency")] = 1 - self.target_latency_ms / dense_ms
            self.target_latency_ms = None  # converted once

    @property
    def rung_updates(self) -> int:
        """Updates of one rung of the ladder: its ramp and its hold."""
        return self.warmup_updates + self.hold_updates

    def rung(self, num_updates: int) -> int:
        """The rung of the ladder being ramped to or held after ``num_updates`` (0 without a ladder)."""
        if self.ladder is None or self.rung_updates <= 0:
            return 0 if self.ladder is None else len(self.ladder) - 1
        return min(len(self.ladder) - 1, max(0, num_updates - 1) // self.rung_updates)

    def rung_end(self, rung: int) -> int:
        """The update at which ``rung``'s hold ends (where its checkpoint is saved)."""
        return (rung + 1) * self.rung_updates

    def rung_targets(self, num_updates: int) -> List[float]:
        """The targets being ramped to or held: the final ones, or the current rung's."""
        return self.final_targets if self.ladder is None else self.ladder[self.rung(num_updates)]

    def target(self, num_updates: int) -> torch.Tensor:
        """Linear warm-up from 0 to the final targets over ``warmup_updates``, then constant; on a ladder,
        from each rung's target to the next one's over ``warmup_updates``, then ``hold_updates`` constant."""
        if self.ladder is None:
            ramp = 1.0 if self.warmup_updates <= 0 else min(1.0, num_updates / self.warmup_updates)
            return torch.tensor([t * ramp for t in self.final_targets], dtype=torch.float64)
        i = self.rung(num_updates)
        start = [0.0] * len(self.names) if i == 0 else self.ladder[i - 1]
        into = num_updates - i * self.rung_updates
        ramp = 1.0 if self.warmup_updates <= 0 else min(1.0, max(0, into) / self.warmup_updates)
        return torch.tensor([a + (b - a) * ramp for a, b in zip(start, self.ladder[i])], dtype=torch.float64)

    def budget_masks(self, model, num_updates: int) -> BudgetResult:
        """The masks export gives at the current final target (rung). In training they are fitted every
        :data:`REFIT_EVERY` updates (a fit is some 15 cost evaluations; the gates move little in between);
        otherwise (validation) whenever the gates changed."""
        if model.training:
            key: Tuple = ("train", num_updates // REFIT_EVERY, self.rung(num_updates))
        else:
            key = (num_updates, tuple(p._version for p in model.gates.parameters()))
        if key != self._fit_key:
            targets = dict(zip(self.names, self.rung_targets(num_updates)))
            self._fit = fit_budget(model.gates, self.measure, targets,
                                   measure_sparsity(self.measure, model.spec, self.seconds,
                                                    latency_table=self.latency_table))
            self._fit_key = key
        return self._fit

    def forward(self, model, num_updates: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(penalty, values to log). The penalty is differentiable in log_alpha and the multipliers."""
        self.check_model(model)
        dense = cost_model.cost(model.spec, None, self.seconds)
        expected = cost_model.cost(model.spec, model.gates.keep_probs(), self.seconds)
        kept = expected.counts
        resources = {"latency_table": self.latency_table}
        s_all = self.measure(expected, dense, **resources)
        s = torch.stack([torch.as_tensor(s_all[n], dtype=torch.float64) for n in self.names])
        t = self.target(num_updates).to(s.device)
        gap = s - t
        penalty = (self.lambda1 * gap + self.lambda2 * gap * gap).sum()

        with torch.no_grad():
            fitted = self.budget_masks(model, num_updates)
            trained_cost = cost_model.cost(model.spec, model.gates.deterministic(), self.seconds)
            trained = self.measure(trained_cost, dense, **resources)
        logs: Dict[str, float] = {"penalty": float(penalty.detach())}
        for i, n in enumerate(self.names):
            suffix = "" if len(self.names) == 1 else f"_{n}"
            logs[f"sparsity{suffix}"] = float(s[i].detach())
            logs[f"target{suffix}"] = float(t[i])
            logs[f"mask_sparsity{suffix}"] = fitted.delivered[n]
            logs[f"trained_mask_sparsity{suffix}"] = cost_model.to_float(trained[n])
            logs[f"lambda1{suffix}"] = float(self.lambda1[i].detach())
            logs[f"lambda2{suffix}"] = float(self.lambda2[i].detach())
        logs["exp_mparams"] = cost_model.to_float(expected.encoder_params) / 1e6
        logs["exp_gmacs"] = cost_model.to_float(expected.encoder_macs) / 1e9
        if self.latency_table is not None:  # predicted at the table's input length, beside the MACs
            logs["exp_latency_ms"] = 1000 * float(self.latency_table.predict(kept).detach())
            logs["mask_latency_ms"] = 1000 * float(self.latency_table.predict(
                cost_model.counts(model.spec, fitted.masks)))  # the masks export gives
        logs["kept_conv"] = sum(cost_model.to_float(c) for c in kept.conv)
        logs["kept_heads"] = sum(cost_model.to_float(h) for h in kept.heads)
        logs["kept_ffn"] = sum(cost_model.to_float(f) for f in kept.ffn)
        logs["kept_hidden"] = cost_model.to_float(kept.hidden)
        if model.gates.qk is not None:  # fine-grained attention: dims summed over heads and layers
            logs["kept_qk_dims"] = sum(cost_model.to_float(q) for q in kept.qk)
            logs["kept_vo_dims"] = sum(cost_model.to_float(v) for v in kept.vo)
        return penalty, logs


LOG_PREFIX = "hjprune_"
LOG_COUNT = LOG_PREFIX + "n"


def add_to_logging_output(logging_output: Dict, logs: Dict[str, float]) -> None:
    """Values are stored summable (fairseq sums logging outputs across batches and workers)."""
    for k, v in logs.items():
        logging_output[LOG_PREFIX + k] = v
    logging_output[LOG_COUNT] = 1


def reduce_logged(logging_outputs: List[Dict]) -> Dict[str, float]:
    """Mean of every hjprune value over the batches (and workers) that logged one."""
    n = sum(log.get(LOG_COUNT, 0) for log in logging_outputs)
    if not n:
        return {}
    keys = {k for log in logging_outputs for k in log if k.startswith(LOG_PREFIX) and k != LOG_COUNT}
    return {k[len(LOG_PREFIX):]: sum(log.get(k, 0.0) for log in logging_outputs) / n for k in sorted(keys)}
