"""``hjprune_ctc``: fairseq's CTC loss plus the HJ-Pruning sparsity constraint (core/sparsity.py)."""


from dataclasses import dataclass
from typing import Optional

from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig

from ..core.sparsity import SparsityConstraint, add_to_logging_output, reduce_logged
from .sparsity_config import SparsityConfig, constraint_from_config


@dataclass
class HJPruneCtcCriterionConfig(CtcCriterionConfig, SparsityConfig):
    pass


class SparsityPenaltyMixin:
    """Adds the sparsity penalty to a fairseq criterion's loss; shared by the hjprune criteria.

    The penalty is added as ``penalty * sample_size`` because the trainer divides all gradients by
    sample_size after backward: so the constraint keeps its weight whatever the batch size. In
    validation the penalty is logged but not added (the loss stays the task loss). With
    sparsity_mode=none there is no constraint and the loss is the task loss.
    """

    sparsity: Optional[SparsityConstraint]

    def add_penalty(self, model, loss, sample_size, logging_output):
        if self.sparsity is None:
            return loss
        penalty, logs = self.sparsity(model, getattr(model, "num_updates", 0))
        add_to_logging_output(logging_output, logs)
        if model.training:
            loss = loss + penalty.to(loss.dtype) * sample_size
        return loss

    @staticmethod
    def log_sparsity(logging_outputs) -> None:
        for k, v in reduce_logged(logging_outputs).items():
            metrics.log_scalar(k, v, weight=0, round=4)


@register_criterion("hjprune_ctc", dataclass=HJPruneCtcCriterionConfig)
class HJPruneCtcCriterion(SparsityPenaltyMixin, CtcCriterion):
    def __init__(self, cfg: HJPruneCtcCriterionConfig, task):
        super().__init__(cfg, task)
        self.sparsity = constraint_from_config(cfg)

    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        return self.add_penalty(model, loss, sample_size, logging_output), sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        cls.log_sparsity(logging_outputs)
