"""The sparsity penalty every hjprune criterion adds to its task loss (core/sparsity.py's constraint)."""

from typing import Optional

from fairseq import metrics

from ...core.sparsity import SparsityConstraint, add_to_logging_output, reduce_logged
from ..run_budget import ladder_checkpoint


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

    def budget_checkpoint(self, num_updates: int):
        """(file name, extra_state entries) of the budget ladder's checkpoint due after ``num_updates``, or None
        (compat quirk 19 saves it)."""
        return None if self.sparsity is None else ladder_checkpoint(self.sparsity, num_updates)

    @staticmethod
    def log_sparsity(logging_outputs) -> None:
        for k, v in reduce_logged(logging_outputs).items():
            metrics.log_scalar(k, v, weight=0, round=4)
