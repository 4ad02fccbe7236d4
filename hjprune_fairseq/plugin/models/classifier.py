"""Registered fairseq models for utterance classification (spoken-language understanding, e.g.
SLURP intents): the gated, slim and PARP models (base.py, parp.py) with a classification head.

The head mean-pools the encoder output over non-padded frames and applies a linear layer with one
output per symbol of the task's label dictionary (special symbols included, so a class is its
dictionary index, as fairseq-generate expects; they are never targets). Initialising from a CTC or
pre-training checkpoint takes the encoder only; from a classification checkpoint the head too.
"""

from typing import Any, Dict, Optional

import torch
from fairseq import utils

from ..fairseq_import import ImportedCheckpoint
from . import registry
from .base import HJPruneCtcConfig, HJPruneGatedCtcConfig, HJPruneGatedModel, HJPruneModel
from .parp import HJPruneParpCtcConfig, ParpMixin


class ClassificationHead:
    """Mixin: one prediction per utterance from the output layer ``proj``, on the mean-pooled encoder output."""

    def load_imported(self, ckpt: ImportedCheckpoint) -> None:
        arch = registry.find(ckpt.arch)
        if arch is None or arch.head != "classifier":
            ckpt.head_state = None  # a CTC output layer is no classifier: keep the fresh head
        super().load_imported(ckpt)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> Dict[str, Any]:
        """{"encoder_out": (B, C) logits, "padding_mask": None}."""
        x, frame_pad = self.encode(source, padding_mask)
        if frame_pad is None:
            pooled = x.mean(1)
        else:
            keep = (~frame_pad).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return {"encoder_out": self.proj(self.final_dropout(pooled)), "padding_mask": None}  # B x C

    def get_logits(self, net_output: Dict[str, Any], normalize: bool = False) -> torch.Tensor:
        logits = net_output["encoder_out"]
        return utils.log_softmax(logits.float(), dim=-1) if normalize else logits


@registry.register("hjprune_slim_cls", HJPruneCtcConfig, kind="slim", head="classifier")
class HJPruneSlimCls(ClassificationHead, HJPruneModel):
    """The exported (physically pruned) classifier."""


@registry.register("hjprune_parp_cls", HJPruneParpCtcConfig, kind="parp", head="classifier")
class HJPruneParpCls(ClassificationHead, ParpMixin, HJPruneModel):
    """The classifier fine-tuned with PARP's unstructured magnitude pruning (parp.py)."""


@registry.register("hjprune_wav2vec_cls", HJPruneGatedCtcConfig, kind="gated", head="classifier",
                   slim="hjprune_slim_cls")
class HJPruneGatedCls(ClassificationHead, HJPruneGatedModel):
    """wav2vec2/HuBERT + mean pooling + linear classifier, with the four HardConcrete gate groups."""
