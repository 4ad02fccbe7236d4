"""The sparsity fields every hjprune criterion adds to its config, and the constraint they describe.

The constraint itself (``core/sparsity.py``) takes typed arguments; this module is where the
criteria's ``cfg`` is read and checked.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ...core import latency_table
from ...core.measures import MEASURES
from ...core.sparsity import SparsityConstraint

SPARSITY_MODES = ChoiceEnum(["none", *MEASURES])  # the registered measures (core/measures.py)


@dataclass
class SparsityConfig(FairseqDataclass):
    """Fields every hjprune criterion adds to its task loss's config."""

    sparsity_mode: SPARSITY_MODES = field(
        default="none", metadata={"help": f"what s measures: {' | '.join(MEASURES)}; none: no constraint (the "
                                          "plain task loss, for fine-tuning stages)"}
    )
    target_sparsity: Optional[float] = field(
        default=None, metadata={"help": "final target in [0, 1) of a measure of one quantity (size, macs, "
                                        "transformer_only, latency: the fraction of predicted latency removed)"}
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
    target_cnn_sparsity: Optional[float] = field(
        default=None, metadata={"help": "sep_size: final target of the CNN's parameter sparsity"}
    )
    target_transformer_sparsity: Optional[float] = field(
        default=None, metadata={"help": "sep_size: final target of the Transformer's parameter sparsity"}
    )
    sparsity_warmup_updates: int = field(
        default=0, metadata={"help": "updates over which the target rises linearly from 0 (paper: first 5 of 30 epochs)"}
    )
    macs_seconds: float = field(
        default=10.0, metadata={"help": "virtual input length (s) at which MACs are counted (macs mode, logs)"}
    )


def targets_from_config(cfg: SparsityConfig) -> Dict[str, float]:
    """{constrained quantity: final target}; raises ValueError on a bad combination."""
    mode = str(cfg.sparsity_mode)
    if mode == "none":
        return {}
    quantities = MEASURES[mode].quantities
    if cfg.target_latency_ms is not None:
        if mode != "latency" or cfg.target_sparsity is not None:
            raise ValueError("criterion.target_latency_ms needs sparsity_mode=latency and no criterion.target_sparsity")
        if cfg.target_latency_ms <= 0:
            raise ValueError(f"criterion.target_latency_ms must be positive, got {cfg.target_latency_ms}")
        return {}  # converted by the constraint, from the model's dense predicted latency
    if quantities == (mode,):  # one quantity: criterion.target_sparsity
        if cfg.target_sparsity is None:
            raise ValueError(f"criterion.sparsity_mode={mode} needs criterion.target_sparsity")
        targets = {mode: cfg.target_sparsity}
    else:  # several: criterion.target_QUANTITY_sparsity each
        fields = {q: f"target_{q}_sparsity" for q in quantities}
        missing = [f for f in fields.values() if getattr(cfg, f, None) is None]
        if missing:
            raise ValueError(f"criterion.sparsity_mode={mode} needs criterion.{' and criterion.'.join(missing)}")
        targets = {q: getattr(cfg, f) for q, f in fields.items()}
    for name, t in targets.items():
        if not 0.0 <= float(t) < 1.0:
            raise ValueError(f"target sparsity for {name} must be in [0, 1), got {t}")
    if cfg.macs_seconds <= 0:
        raise ValueError(f"criterion.macs_seconds must be positive, got {cfg.macs_seconds}")
    if cfg.sparsity_warmup_updates < 0:
        raise ValueError(f"criterion.sparsity_warmup_updates must be >= 0, got {cfg.sparsity_warmup_updates}")
    return {k: float(v) for k, v in targets.items()}


def constraint_from_config(cfg: SparsityConfig) -> Optional[SparsityConstraint]:
    """The constraint of ``cfg``; None for sparsity_mode=none."""
    mode = str(cfg.sparsity_mode)
    targets = targets_from_config(cfg)
    if mode == "none":
        return None
    table = None
    if cfg.latency_table:
        table = latency_table.load(cfg.latency_table)
        latency_table.warn_if_foreign(table)
    elif "latency_table" in MEASURES[mode].needs:
        raise ValueError(f"criterion.sparsity_mode={mode} needs criterion.latency_table=PATH (hjprune-latency-table)")
    return SparsityConstraint(mode, targets, cfg.sparsity_warmup_updates, cfg.macs_seconds, table,
                              cfg.target_latency_ms)
