"""The sparsity fields every hjprune criterion adds to its config, and the constraint they describe.

The constraint itself (``core/sparsity.py``) takes typed arguments; this module is where the
criteria's ``cfg`` is read and checked.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ...core import latency_table
from ...core.measures import MEASURES
from ...core.sparsity import SparsityConstraint
from .. import compat

SPARSITY_MODES = ChoiceEnum(["none", *MEASURES])  # the registered measures (core/measures.py)


@dataclass
class SparsityConfig(FairseqDataclass):
    """Fields every hjprune criterion adds to its task loss's config."""

    sparsity_mode: SPARSITY_MODES = field(
        default="none", metadata={"help": f"what s measures: {' | '.join(MEASURES)}; none: no constraint (the "
                                          "plain task loss, for fine-tuning stages)"}
    )
    target_sparsity: Optional[Any] = field(  # Any: a float or a list (omegaconf has no Union of the two)
        default=None, metadata={"help": "final target in [0, 1) of a measure of one quantity (size, macs, "
                                        "transformer_only, latency: the fraction of predicted latency removed); or "
                                        "a budget ladder, increasing targets such as [0.2,0.4,0.6]: the target "
                                        "ramps to each in turn over sparsity_warmup_updates, holds "
                                        "budget_hold_updates, and the run saves checkpoint_budget_0.20.pt, ... at "
                                        "the end of each hold (max_update >= rungs x (warm-up + hold)); a measure "
                                        "of several quantities (sep_size) takes a list in each of its "
                                        "target_QUANTITY_sparsity fields instead"}
    )
    latency_table: Optional[str] = field(
        default=None, metadata={"help": "a latency table (JSON, made by hjprune-latency-table on the machine and "
                                        "backend the model will run on): needed by sparsity_mode=latency; with "
                                        "any mode the log shows predicted latency (exp_latency_ms, mask_latency_ms)"}
    )
    target_latency_ms: Optional[float] = field(
        default=None, metadata={"help": "latency mode: the target in milliseconds at the table's input length "
                                        "instead of target_sparsity; must be below the dense model's predicted "
                                        "latency (the fraction removed is 1 - target / dense)"}
    )
    target_cnn_sparsity: Optional[Any] = field(  # Any: a float or a list, as target_sparsity
        default=None, metadata={"help": "sep_size: final target of the CNN's parameter sparsity; or a budget "
                                        "ladder, a list such as [0.3,0.6,0.85] beside an equally long "
                                        "target_transformer_sparsity (see target_sparsity; no target may fall from a "
                                        "rung to the next, one at least must rise): the run saves "
                                        "checkpoint_budget_cnn0.30_transformer0.10.pt, ..."}
    )
    target_transformer_sparsity: Optional[Any] = field(
        default=None, metadata={"help": "sep_size: final target of the Transformer's parameter sparsity; or a "
                                        "budget ladder's list, as long as target_cnn_sparsity's"}
    )
    sparsity_warmup_updates: int = field(
        default=0, metadata={"help": "updates over which the target rises linearly from 0 (paper: first 5 of 30 epochs)"}
    )
    budget_hold_updates: int = field(
        default=0, metadata={"help": "budget ladder: updates each target holds after its ramp; the rung's "
                                     "checkpoint is saved at the end of its hold"}
    )
    macs_seconds: float = field(
        default=10.0, metadata={"help": "virtual input length (s) at which MACs are counted (macs mode, logs)"}
    )


def target_fields(mode: str) -> Dict[str, str]:
    """{quantity: the criterion field holding its target} of measure ``mode``: ``target_sparsity`` for a measure of
    one quantity, ``target_QUANTITY_sparsity`` each for several (sep_size: target_cnn_sparsity, ...)."""
    quantities = MEASURES[mode].quantities
    if quantities == (mode,):
        return {mode: "target_sparsity"}
    return {q: f"target_{q}_sparsity" for q in quantities}


def has_ladder(cfg: SparsityConfig) -> bool:
    """True if ``cfg`` asks for a budget ladder: a list among its measure's targets (or in target_sparsity)."""
    mode = str(cfg.sparsity_mode)
    if mode == "none":
        return False
    return any(_is_list(getattr(cfg, f, None)) for f in {"target_sparsity", *target_fields(mode).values()})


def ladder_from_config(cfg: SparsityConfig) -> List[Dict[str, float]]:
    """The targets of every rung of the budget ladder, {constrained quantity: target} each, in order; one rung
    without a ladder, none for sparsity_mode=none. Raises ValueError on a bad combination.

    A ladder gives every quantity of the measure a list, all of one length; no quantity's target falls from a
    rung to the next and at least one rises (for one quantity: increasing targets), so each rung is a new budget
    that the previous rung's masks can be pruned further to."""
    mode = str(cfg.sparsity_mode)
    if not has_ladder(cfg):
        return [] if mode == "none" else [targets_from_config(cfg)]
    fields = target_fields(mode)
    named = " and ".join(f"criterion.{f}" for f in fields.values())
    if _is_list(cfg.target_sparsity) and "target_sparsity" not in fields.values():
        raise ValueError(f"criterion.target_sparsity: sparsity_mode={mode} takes a budget ladder as lists in {named}")
    given = [getattr(cfg, f, None) for f in fields.values()]
    lists = [_fractions(v) for v in given]
    rungs = [dict(zip(fields, values)) for values in zip(*lists)] if all(lists) else []
    steps = list(zip(rungs, rungs[1:]))
    if (not rungs or len({len(v) for v in lists}) > 1 or any(any(b[q] < a[q] for q in a) for a, b in steps)
            or any(a == b for a, b in steps)):
        if len(fields) == 1:
            raise ValueError(f"criterion.target_sparsity must be a number or a list of increasing numbers in [0, 1), "
                             f"got {given[0]}")
        raise ValueError(f"{named} must be lists of one length of numbers in [0, 1), none decreasing and at least "
                         f"one rising from each rung to the next, got {' and '.join(str(v) for v in given)}")
    if cfg.budget_hold_updates < 0:
        raise ValueError(f"criterion.budget_hold_updates must be >= 0, got {cfg.budget_hold_updates}")
    targets_from_config(cfg, final=rungs[-1])  # the other fields' checks
    return rungs


def targets_from_config(cfg: SparsityConfig, final: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """{constrained quantity: final target} (the last rung of a ladder: ``final``); raises ValueError on a bad
    combination."""
    mode = str(cfg.sparsity_mode)
    if mode == "none":
        return {}
    if cfg.target_latency_ms is not None:
        if mode != "latency" or cfg.target_sparsity is not None:
            raise ValueError("criterion.target_latency_ms needs sparsity_mode=latency and no criterion.target_sparsity")
        if cfg.target_latency_ms <= 0:
            raise ValueError(f"criterion.target_latency_ms must be positive, got {cfg.target_latency_ms}")
        return {}  # converted by the constraint, from the model's dense predicted latency
    if final is None and has_ladder(cfg):
        return ladder_from_config(cfg)[-1]
    fields = target_fields(mode)
    missing = [f for f in fields.values() if getattr(cfg, f, None) is None]
    if missing and final is None:
        raise ValueError(f"criterion.sparsity_mode={mode} needs criterion.{' and criterion.'.join(missing)}")
    targets = final or {q: getattr(cfg, f) for q, f in fields.items()}
    for name, t in targets.items():
        if _fractions([t]) is None:
            raise ValueError(f"target sparsity for {name} must be in [0, 1), got {t}")
    if cfg.macs_seconds <= 0:
        raise ValueError(f"criterion.macs_seconds must be positive, got {cfg.macs_seconds}")
    if cfg.sparsity_warmup_updates < 0:
        raise ValueError(f"criterion.sparsity_warmup_updates must be >= 0, got {cfg.sparsity_warmup_updates}")
    return {k: float(v) for k, v in targets.items()}


def constraint_from_config(cfg: SparsityConfig) -> Optional[SparsityConstraint]:
    """The constraint of ``cfg``; None for sparsity_mode=none."""
    ladder = ladder_from_config(cfg)
    if not ladder:
        return None
    mode = str(cfg.sparsity_mode)
    table = None
    if cfg.latency_table:
        table = latency_table.load(cfg.latency_table)
        latency_table.warn_if_foreign(table)
    elif "latency_table" in MEASURES[mode].needs:
        raise ValueError(f"criterion.sparsity_mode={mode} needs criterion.latency_table=PATH (hjprune-latency-table)")
    laddered = has_ladder(cfg)
    if laddered:
        compat.save_budget_checkpoints()  # a rung's checkpoint at the end of its hold (quirk 19)
    return SparsityConstraint(mode, ladder[-1], cfg.sparsity_warmup_updates, cfg.macs_seconds,
                              ladder=ladder if laddered else None,
                              hold_updates=cfg.budget_hold_updates, latency_table=table,
                              target_latency_ms=cfg.target_latency_ms)


def _is_list(v: Any) -> bool:
    """A ladder: a list (a ListConfig from hydra), not one number."""
    return v is not None and not isinstance(v, (int, float, str))


def _fractions(v: Any) -> Optional[List[float]]:
    """The numbers of the list ``v``, each in [0, 1); None if it is not a non-empty list of such."""
    try:
        values = [float(t) for t in v] if _is_list(v) else []
    except (TypeError, ValueError):
        return None
    return values if values and all(0.0 <= t < 1.0 for t in values) else None
