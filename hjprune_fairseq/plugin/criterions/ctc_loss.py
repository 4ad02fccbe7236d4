"""``hjprune_ctc``: fairseq's CTC loss plus the HJ-Pruning sparsity constraint (core/sparsity.py)."""


from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.ctc import CtcCriterion, CtcCriterionConfig

from .penalty import SparsityPenaltyMixin
from .sparsity_config import SparsityConfig, constraint_from_config


@dataclass
class HJPruneCtcCriterionConfig(CtcCriterionConfig, SparsityConfig):
    pass


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
