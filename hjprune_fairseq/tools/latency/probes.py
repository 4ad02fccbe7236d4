"""Timing probes: each component of a latency table as a small module.

A probe is built from the encoder's own classes (``core.encoder``) at the kept sizes of one grid point and fed
what it gets inside the encoder at the table's input length: a CNN layer its input channels over the previous
layer's frames, a Transformer layer (1, T, d). ``graphs`` exports them and runs them on a backend.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from hjprune_manifests.audio import SAMPLE_RATE
from torch import nn

from ...core import cost_model
from ...core.encoder import EncoderLayer, MaskedLayerNorm, PositionalConv
from ...core.spec import EncoderSpec


class ConvProbe(nn.Module):
    """CNN layer ``i`` of ``spec`` with ``c_in`` -> ``c_out`` channels, as ``ConvFeatureExtractor`` runs it:
    conv -> norm (GroupNorm on layer 0, or LayerNorm over channels in ``layer_norm`` mode) -> GELU."""

    def __init__(self, spec: EncoderSpec, i: int, c_in: int, c_out: int):
        super().__init__()
        _, k, stride = spec.conv_layers[i]
        self.conv = nn.Conv1d(c_in, c_out, k, stride=stride, bias=spec.conv_bias)
        self.layer_norm = MaskedLayerNorm(c_out, eps=1e-5) if spec.extractor_mode == "layer_norm" else None
        self.group_norm = nn.GroupNorm(c_out, c_out, eps=1e-5) if spec.extractor_mode != "layer_norm" and i == 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.group_norm is not None:
            x = self.group_norm(x)
        return F.gelu(x)


class FrontProbe(nn.Module):
    """What the hidden size and the last CNN layer's channels set outside the layers, in the encoder's order:
    feature LayerNorm, feature projection, positional conv (its groups as a slim model has them), encoder
    LayerNorm: (1, T, conv_dim) -> (1, T, d)."""

    def __init__(self, conv_dim: int, pos_groups: Sequence[int], kernel: int):
        super().__init__()
        d = sum(pos_groups)
        self.layer_norm = MaskedLayerNorm(conv_dim, eps=1e-5)
        self.post_extract_proj = nn.Linear(conv_dim, d)
        self.pos_conv = PositionalConv(pos_groups, kernel)
        self.encoder_layer_norm = MaskedLayerNorm(d, eps=1e-5)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.post_extract_proj(self.layer_norm(feats))
        return self.encoder_layer_norm(x + self.pos_conv(x))


class LayerProbe(nn.Module):
    """One Transformer layer without padding: (1, T, d) -> (1, T, d)."""

    def __init__(self, layer: EncoderLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, None)


def spread(total: int, heads: int, head_dim: int, low: int, g: torch.Generator) -> List[int]:
    """``total`` dims spread over ``heads`` heads at random (as learned gates leave them), each in low..head_dim."""
    mask = torch.zeros(heads * head_dim)
    mask[torch.randperm(heads * head_dim, generator=g)[:total]] = 1
    return [max(low, int(n)) for n in mask.view(heads, head_dim).sum(1)]


def pos_groups(spec: EncoderSpec, d: int, g: torch.Generator) -> List[int]:
    """The positional-conv groups of ``d`` kept hidden dims out of the spec's: even when every dim is kept,
    else the uneven groups of a random choice (what a slim model has; it runs one conv per group)."""
    if d >= spec.embed_dim:
        return list(spec.pos_conv_groups)
    keep = torch.zeros(spec.embed_dim)
    keep[torch.randperm(spec.embed_dim, generator=g)[:d]] = 1
    return [int(k.sum()) for k in torch.split(keep, spec.pos_conv_groups)]


def probe(spec: EncoderSpec, seconds: float, name: str, point: Sequence[float],
          seed: int = 0) -> Tuple[nn.Module, Tuple[torch.Tensor, ...]]:
    """(module, inputs) of component ``name`` of a latency table at grid ``point`` (its axes' values)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lengths = cost_model.frames_for(spec, seconds)
    T = lengths[-1]
    if name.startswith("conv"):
        i = int(name[4:])
        c_in, c_out = (1, int(point[0])) if i == 0 else (int(point[0]), int(point[1]))
        n_in = int(round(seconds * SAMPLE_RATE)) if i == 0 else lengths[i - 1]
        return ConvProbe(spec, i, c_in, c_out).eval(), (torch.randn(1, c_in, n_in, generator=g),)
    if name == "front":
        c, d = int(point[0]), int(point[1])
        return FrontProbe(c, pos_groups(spec, d, g), spec.pos_conv_kernel).eval(), (torch.randn(1, T, c, generator=g),)
    d = int(point[0])
    heads, dims, ffn = 0, 1.0, 0
    if name == "attention":
        heads, dims = int(point[1]), float(point[2])
    elif name == "ffn":
        ffn = int(point[1])
    elif name != "layer_base":
        raise ValueError(f"unknown latency table component {name!r}")
    qk = vo = None
    if dims < 1.0 and heads:
        total = int(round(dims * heads * spec.head_dim))
        qk, vo = spread(total, heads, spec.head_dim, 0, g), spread(total, heads, spec.head_dim, 1, g)
    layer = EncoderLayer(d, heads, spec.head_dim, ffn, spec.layer_norm_first, qk_dims=qk, vo_dims=vo)
    return LayerProbe(layer).eval(), (torch.randn(1, T, d, generator=g),)
