"""``hjprune_cross_entropy``: utterance classification loss (e.g. SLURP intents) plus the HJ-Pruning
sparsity constraint, the same one as ``hjprune_ctc`` (penalty.py). Logs accuracy."""

import math
from dataclasses import dataclass

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion

from .penalty import SparsityPenaltyMixin
from .sparsity_config import SparsityConfig, constraint_from_config


@dataclass
class HJPruneCrossEntropyConfig(SparsityConfig):
    pass


@register_criterion("hjprune_cross_entropy", dataclass=HJPruneCrossEntropyConfig)
class HJPruneCrossEntropyCriterion(SparsityPenaltyMixin, FairseqCriterion):
    def __init__(self, cfg: HJPruneCrossEntropyConfig, task):
        super().__init__(task)
        self.sparsity = constraint_from_config(cfg)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)  # B x C
        target = sample["target"][:, 0].long()  # one label per utterance
        loss = F.nll_loss(lprobs, target, reduction="sum" if reduce else "none")
        sample_size = target.numel()
        logging_output = {
            "loss": loss.item() if reduce else loss.detach(),
            "ntokens": sample_size,
            "nsentences": sample_size,
            "sample_size": sample_size,
            "correct": (lprobs.argmax(-1) == target).sum().item(),
        }
        return self.add_penalty(model, loss, sample_size, logging_output), sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        n = sum(log.get("sample_size", 0) for log in logging_outputs)
        correct = sum(log.get("correct", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(n, 1) / math.log(2), n, round=3)
        metrics.log_scalar("_correct", correct)
        metrics.log_scalar("_total", n)
        metrics.log_derived(
            "accuracy",
            lambda m: round(100.0 * m["_correct"].sum / m["_total"].sum, 3) if m["_total"].sum > 0 else float("nan"),
        )
        cls.log_sparsity(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
