"""Registered CTC models: gated (pruning), slim (after export) and PARP (the unstructured baseline).

``hjprune_wav2vec_ctc`` is the gated encoder with a linear CTC output layer; ``hjprune_slim_ctc`` is
the same network with per-layer sizes and no gates (what ``hjprune-export`` writes);
``hjprune_parp_ctc`` is the dense model fine-tuned with PARP's magnitude pruning (parp.py).
"""

from typing import Any, Dict, Optional, Tuple

import torch
from fairseq import utils

from . import registry
from .base import HJPruneCtcConfig, HJPruneGatedCtcConfig, HJPruneGatedModel, HJPruneModel
from .parp import HJPruneParpCtcConfig, ParpMixin


class CtcOutput:
    """Mixin: per-frame vocabulary logits from the output layer ``proj``."""

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> Dict[str, Any]:
        """{"encoder_out": (T, B, V) logits, "padding_mask": (B, T) frame padding or None}."""
        x, frame_pad = self.encode(source, padding_mask)
        x = self.proj(self.final_dropout(x))
        return {"encoder_out": x.transpose(0, 1), "padding_mask": frame_pad}

    def blank_rule(self) -> Tuple[float, float]:
        """``blank_weight`` as an affine map of the blank's logit x -> scale * x + shift: ``add`` (1, w), ``set``
        (0, w). The one rule, for decoding (:meth:`get_logits`) and for exports that fold it into the output layer
        (``hf_export.ctc_output_layer``: the blank's weight row times scale, its bias times scale plus shift)."""
        return (1.0 if self.cfg.blank_mode == "add" else 0.0), float(self.cfg.blank_weight)

    def get_logits(self, net_output: Dict[str, Any], normalize: bool = False) -> torch.Tensor:
        """T x B x V logits, ``blank_weight`` applied (:meth:`blank_rule`); padded frames forced to blank (as
        fairseq's Wav2VecCtc)."""
        logits = net_output["encoder_out"]
        if self.cfg.blank_weight != 0:
            scale, shift = self.blank_rule()
            logits[..., 0] = logits[..., 0] * scale + shift
        pad = net_output["padding_mask"]
        if pad is not None and pad.any():
            blank_only = torch.full((logits.size(-1),), float("-inf"), device=logits.device, dtype=logits.dtype)
            blank_only[0] = 0
            logits = torch.where(pad.T.unsqueeze(-1), blank_only, logits)
        if normalize:
            logits = utils.log_softmax(logits.float(), dim=-1)
        return logits


@registry.register("hjprune_slim_ctc", HJPruneCtcConfig, kind="slim", head="ctc")
class HJPruneSlimCtc(CtcOutput, HJPruneModel):
    """The physically pruned model written by ``hjprune-export`` (per-layer sizes, no gates)."""


@registry.register("hjprune_parp_ctc", HJPruneParpCtcConfig, kind="parp", head="ctc")
class HJPruneParpCtc(ParpMixin, CtcOutput, HJPruneModel):
    """The unstructured baseline: the dense model fine-tuned with PARP's magnitude pruning (parp.py)."""


@registry.register("hjprune_wav2vec_ctc", HJPruneGatedCtcConfig, kind="gated", head="ctc", slim="hjprune_slim_ctc")
class HJPruneGatedCtc(CtcOutput, HJPruneGatedModel):
    """wav2vec2/HuBERT + CTC output layer with HardConcrete gates on conv channels, heads, FFN units, hidden dims."""
