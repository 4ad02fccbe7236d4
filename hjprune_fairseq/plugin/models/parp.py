"""PARP's fine-tuning schedule on the fairseq side: its config fields and the model mixin.

The registered PARP models are ``hjprune_parp_ctc`` (ctc.py) and ``hjprune_parp_cls`` (classifier.py):
the ungated :class:`~.base.HJPruneModel` with :class:`ParpMixin`.

The pruning maths is ``core/parp.py``; this module reads ``cfg`` (``parp_*`` fields) and runs it:
once when the model is built from ``w2v_path``, then every ``parp_interval_updates`` updates and
after the last one (``after_update``, called by the hjprune tasks after every optimizer step).
"""

import logging
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from ...core.parp import SCOPES, magnitude_prune_, prunable_weights
from .base import HJPruneCtcConfig

logger = logging.getLogger(__name__)

PARP_SCOPES = ChoiceEnum(list(SCOPES))


@dataclass
class ParpConfig(FairseqDataclass):
    parp_sparsity: float = field(
        default=0.5, metadata={"help": "fraction of the Transformer's weight-matrix entries set to zero, in [0, 1)"}
    )
    parp_scope: PARP_SCOPES = field(
        default="layer", metadata={"help": "layer: every weight matrix loses the same fraction; global: one "
                                           "magnitude threshold over all of them"}
    )
    parp_interval_updates: int = field(
        default=50, metadata={"help": "re-prune to parp_sparsity every this many updates (and after the last one)"}
    )
    parp_max_update: int = field(
        default=II("optimization.max_update"), metadata={"help": "the last update, after which the final prune runs"}
    )


@dataclass
class HJPruneParpCtcConfig(HJPruneCtcConfig, ParpConfig):
    """The config of the PARP models: an ungated model's fields and PARP's."""


def check_config(cfg: ParpConfig) -> None:
    if not 0.0 <= cfg.parp_sparsity < 1.0:
        raise ValueError(f"model.parp_sparsity must be in [0, 1), got {cfg.parp_sparsity}")
    if cfg.parp_interval_updates < 1:
        raise ValueError(f"model.parp_interval_updates must be >= 1, got {cfg.parp_interval_updates}")


class ParpMixin:
    """Adds PARP to an hjprune model class without gates (``hjprune_parp_ctc``, ``hjprune_parp_cls``)."""

    @classmethod
    def from_config(cls, cfg, vocab_size: int):
        check_config(cfg)
        fresh = cfg.encoder_spec is None and not cfg.no_pretrained_weights  # weights come from w2v_path
        model = super().from_config(cfg, vocab_size)
        if fresh:
            model.parp_prune("initial prune")
        return model

    def parp_prune(self, why: str) -> None:
        weights = [w for _, w in prunable_weights(self.encoder)]
        zeroed = magnitude_prune_(weights, self.cfg.parp_sparsity, str(self.cfg.parp_scope))
        logger.info("PARP %s: %d of %d Transformer weights set to zero (target %.3f, scope %s)", why, zeroed,
                    sum(w.numel() for w in weights), self.cfg.parp_sparsity, self.cfg.parp_scope)

    def after_update(self, num_updates: int) -> None:
        """Called by the hjprune tasks after every optimizer step with the new update count."""
        if self.cfg.parp_max_update <= 0:
            raise ValueError("PARP needs optimization.max_update > 0: its final prune runs after the last update")
        if num_updates >= self.cfg.parp_max_update:
            self.parp_prune(f"final prune at update {num_updates}")
        elif num_updates % self.cfg.parp_interval_updates == 0:
            self.parp_prune(f"re-prune at update {num_updates}")
