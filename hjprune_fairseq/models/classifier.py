"""Registered fairseq models for utterance classification (spoken-language understanding, e.g.
SLURP intents): the gated and slim encoders of hjprune_ctc with a classification head.

The head mean-pools the encoder output over non-padded frames and applies a linear layer with one
output per symbol of the task's label dictionary (special symbols included, so a class is its
dictionary index, as fairseq-generate expects; they are never targets). Initialising from a CTC or
pre-training checkpoint takes the encoder only; from a classification checkpoint the head too.
"""

from typing import Any, Dict, Optional

import torch
from fairseq import utils
from fairseq.models import register_model

from ..fairseq_import import ImportedCheckpoint
from .hjprune_ctc import HJPruneCtcConfig, HJPruneGatedCtc, HJPruneGatedCtcConfig, HJPruneParpCtcConfig, HJPruneSlimCtc
from .parp import ParpMixin

CLASSIFIERS = ("hjprune_wav2vec_cls", "hjprune_slim_cls", "hjprune_parp_cls")


class ClassificationHead:
    """Mixin replacing the per-frame CTC output by a pooled utterance-level one."""

    def load_imported(self, ckpt: ImportedCheckpoint) -> None:
        if ckpt.arch not in CLASSIFIERS:
            ckpt.head_state = None  # a CTC output layer is no classifier: keep the fresh head
        super().load_imported(ckpt)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> Dict[str, Any]:
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


@register_model("hjprune_slim_cls", dataclass=HJPruneCtcConfig)
class HJPruneSlimCls(ClassificationHead, HJPruneSlimCtc):
    """The exported (physically pruned) classifier."""

    ARCH = "hjprune_slim_cls"


@register_model("hjprune_parp_cls", dataclass=HJPruneParpCtcConfig)
class HJPruneParpCls(ClassificationHead, ParpMixin, HJPruneSlimCtc):
    """The classifier fine-tuned with PARP's unstructured magnitude pruning (models/parp.py)."""

    ARCH = "hjprune_parp_cls"


@register_model("hjprune_wav2vec_cls", dataclass=HJPruneGatedCtcConfig)
class HJPruneGatedCls(ClassificationHead, HJPruneGatedCtc):
    """wav2vec2/HuBERT + mean pooling + linear classifier, with the four HardConcrete gate groups."""

    ARCH = "hjprune_wav2vec_cls"
