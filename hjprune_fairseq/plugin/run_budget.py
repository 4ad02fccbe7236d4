"""The budget a pruning run was asked for, as its checkpoint records it: what ``hjprune-export`` meets by default.

A checkpoint of a budget ladder's rung (``checkpoint_budget_0.40.pt``; with several quantities
``checkpoint_budget_cnn0.30_transformer0.10.pt``) records its rung in
``extra_state[BUDGET_KEY]``; any other checkpoint of a pruning stage has its criterion's config
(``cfg.criterion``: sparsity_mode, its targets, macs_seconds), whose final target is the budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from omegaconf import OmegaConf

from ..core.measures import MEASURES
from ..core.sparsity import SparsityConstraint
from .criterions.sparsity_config import SparsityConfig, targets_from_config

BUDGET_KEY = "hjprune_budget"  # extra_state entry of a ladder rung's checkpoint: RunBudget.to_dict()


@dataclass
class RunBudget:
    """mode: a measure of the registry; targets: {its quantity: fraction}; seconds: the MACs' virtual length;
    latency_table: the table of the latency measure (its path); target_latency_ms: a latency target given in ms
    (``targets`` then lacks it: it is a fraction of the dense model's predicted latency, see ``slim_export``)."""

    mode: str
    targets: Dict[str, float]
    seconds: float = 10.0
    latency_table: Optional[str] = None
    target_latency_ms: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def run_budget(state: Dict[str, Any], path: str) -> Optional[RunBudget]:
    """The budget of the run that wrote the checkpoint ``state`` (read from ``path``); None when it records none
    (no criterion config, or sparsity_mode=none)."""
    recorded = (state.get("extra_state") or {}).get(BUDGET_KEY)
    if recorded is not None:
        return RunBudget(str(recorded["mode"]), {k: float(v) for k, v in recorded["targets"].items()},
                         float(recorded["seconds"]), recorded.get("latency_table"))
    criterion = (state.get("cfg") or {}).get("criterion")
    if criterion is None:
        return None
    if not isinstance(criterion, dict):
        criterion = OmegaConf.to_container(criterion, resolve=True, enum_to_str=True)
    names = {f.name for f in dataclasses.fields(SparsityConfig)}
    fields = {k: v for k, v in criterion.items() if k in names and not k.startswith("_")}
    if str(fields.get("sparsity_mode", "none")) not in MEASURES:
        return None
    cfg = OmegaConf.merge(OmegaConf.structured(SparsityConfig), fields)
    try:
        targets = targets_from_config(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: cfg.criterion: {e}") from None
    return RunBudget(str(cfg.sparsity_mode), targets, float(cfg.macs_seconds), cfg.latency_table, cfg.target_latency_ms)


def ladder_checkpoint_name(targets: Dict[str, float]) -> str:
    """The file of a ladder's rung of ``targets`` {quantity: target}: ``checkpoint_budget_0.40.pt`` for a measure
    of one quantity, ``checkpoint_budget_cnn0.30_transformer0.10.pt`` (each quantity named) for several."""
    if len(targets) == 1:
        return f"checkpoint_budget_{next(iter(targets.values())):.2f}.pt"
    return "checkpoint_budget_" + "_".join(f"{q}{t:.2f}" for q, t in targets.items()) + ".pt"


def ladder_checkpoint(constraint: SparsityConstraint, num_updates: int) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(file name, extra_state entries recording the rung's budget) when ``num_updates`` ends a rung's hold."""
    if constraint.ladder is None:
        return None
    for i, rung in enumerate(constraint.ladder):
        if num_updates == constraint.rung_end(i):
            targets = dict(zip(constraint.names, rung))
            table = constraint.latency_table.source if constraint.latency_table is not None else None
            budget = RunBudget(constraint.mode, targets, constraint.seconds, table)
            return ladder_checkpoint_name(targets), {BUDGET_KEY: budget.to_dict()}
    return None
