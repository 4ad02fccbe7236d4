"""The HardConcrete gates of an encoder: one block per prunable unit group.

conv: one gate per output channel of every CNN layer; heads / ffn: one gate per head / FFN unit of
every layer; hidden: ONE gate vector over the model dimension, shared by all layers; qk / vo
(fine-grained attention, Wang et al. 2023): one gate per query/key dim and per value/output dim of
every head of every layer, so a layer may keep many thin heads.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .gate_state import GateMasks
from .hard_concrete import HardConcrete
from .spec import EncoderSpec

GROUPS = ("conv", "heads", "ffn", "hidden", "qk", "vo")


class EncoderGates(nn.Module):
    def __init__(
        self, spec: EncoderSpec, conv: bool = True, heads: bool = True, ffn: bool = True, hidden: bool = True,
        init_keep_prob: float = 0.99, ste: bool = False, head_dims: bool = False,
    ):
        super().__init__()
        if head_dims and (spec.qk_dims is not None or spec.vo_dims is not None):
            raise ValueError("fine-grained head gates need heads of equal size (a model not yet pruned by them)")

        def blocks(sizes: List[int]) -> nn.ModuleList:
            return nn.ModuleList(HardConcrete((n,), init_keep_prob, ste=ste) for n in sizes)

        self.conv = blocks([c for c, _, _ in spec.conv_layers]) if conv else None
        self.heads = blocks(spec.num_heads) if heads else None
        self.ffn = blocks(spec.ffn_dims) if ffn else None
        self.hidden = HardConcrete((spec.embed_dim,), init_keep_prob, ste=ste) if hidden else None

        def dim_blocks() -> nn.ModuleList:  # one (heads, head_dim) block per layer
            return nn.ModuleList(HardConcrete((h, spec.head_dim), init_keep_prob, ste=ste) for h in spec.num_heads)

        self.qk = dim_blocks() if head_dims else None
        self.vo = dim_blocks() if head_dims else None

    def enabled(self) -> List[str]:
        return [g for g in GROUPS if getattr(self, g) is not None]

    def _collect(self, fn) -> GateMasks:
        def each(mods: Optional[nn.ModuleList]) -> Optional[List[torch.Tensor]]:
            return None if mods is None else [fn(m) for m in mods]

        return GateMasks(
            conv=each(self.conv), heads=each(self.heads), ffn=each(self.ffn),
            hidden=None if self.hidden is None else fn(self.hidden), qk=each(self.qk), vo=each(self.vo),
        )

    def forward(self) -> GateMasks:
        """Samples in training mode (deterministic masks with straight-through gradients under ``ste``),
        deterministic 0/1 masks in eval mode."""
        return self._collect(lambda g: g())

    def keep_probs(self) -> GateMasks:
        """P(z != 0) of every unit: differentiable, feeds the expected cost."""
        return self._collect(lambda g: g.keep_prob())

    def deterministic(self) -> GateMasks:
        """The 0/1 masks used at evaluation and by the slim export."""
        return self._collect(lambda g: g.deterministic_mask())
