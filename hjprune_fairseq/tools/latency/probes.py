"""Timing probes: each component of a latency table as a small module, and how a backend runs it.

A probe is built from the encoder's own classes (``core.encoder``) at the kept sizes of one grid point and fed
what it gets inside the encoder at the table's input length: a CNN layer its input channels over the previous
layer's frames, a Transformer layer (1, T, d). A backend turns a module and its inputs into a call for
``tools.timing.median_times``: PyTorch eager (fp32, CPU), onnxruntime fp32 or int8 (the graph
``hjprune-export --onnx [--int8]`` makes: the same exporter and the same dynamic quantisation), CUDA (fp16/bf16).
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from hjprune_manifests.audio import SAMPLE_RATE
from torch import nn

from ...core import cost_model
from ...core.encoder import EncoderLayer, MaskedLayerNorm, PositionalConv
from ...core.latency_table import BACKENDS
from ...core.spec import EncoderSpec

Call = Callable[[int], object]


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


class Backend:
    """Runs probes and whole encoders on one backend (``core.latency_table.BACKENDS``) with fixed threads;
    ONNX graphs are written into ``folder``."""

    def __init__(self, name: str, threads: int, folder: str, dtype: str = "float32"):
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}, expected one of {BACKENDS}")
        if name == "cuda" and not torch.cuda.is_available():
            raise ValueError("backend cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
        if name != "cuda" and dtype != "float32":
            raise ValueError(f"backend {name} runs float32, got dtype {dtype} (float16/bfloat16 are for cuda)")
        if name == "cuda" and dtype not in ("float16", "bfloat16"):
            raise ValueError(f"backend cuda runs float16 or bfloat16, got {dtype}")
        if name.startswith("onnxruntime"):
            from ...convert.onnx_export import import_onnx

            import_onnx()  # one line naming the extra, before anything is measured
        self.name, self.threads, self.folder, self.dtype = name, threads, folder, dtype
        self.count = 0

    def versions(self) -> dict:
        v = {"torch": torch.__version__}
        if self.name.startswith("onnxruntime"):
            import onnxruntime

            v["onnxruntime"] = onnxruntime.__version__
        if self.name == "cuda":
            v["cuda"] = torch.version.cuda
            v["gpu"] = torch.cuda.get_device_name()
        return v

    def _paths(self) -> Tuple[str, str]:
        self.count += 1
        base = os.path.join(self.folder, f"g{self.count}")
        return base + ".onnx", base + "_int8.onnx"

    def _session(self, fp32: str, int8: str):
        from ...convert import onnx_export

        if self.name == "onnxruntime_int8":
            onnx_export.quantize_int8(fp32, int8)
            fp32 = int8
        return onnx_export.session(fp32, self.threads, spinning=False)

    def _cuda(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Call:
        dtype = getattr(torch, self.dtype)
        module = module.to("cuda", dtype)
        inputs = [x.to("cuda", dtype if x.is_floating_point() else x.dtype) for x in inputs]

        def call(i: int):
            module(*inputs)
            torch.cuda.synchronize()
        return call

    def call(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Call:
        """A call running the probe ``module`` on ``inputs`` (for median_times, under torch.inference_mode)."""
        if self.name == "pytorch":
            return lambda i: module(*inputs)
        if self.name == "cuda":
            return self._cuda(module, inputs)
        from ...convert import onnx_export

        fp32, int8 = self._paths()
        names = [f"x{j}" for j in range(len(inputs))]
        onnx_export.export_fixed(module, inputs, names, fp32)
        sess = self._session(fp32, int8)
        feed = {n: x.numpy() for n, x in zip(names, inputs)}
        return lambda i: sess.run(None, feed)

    def encoder_call(self, encoder: nn.Module, wav: torch.Tensor, label: Optional[str] = None) -> Call:
        """A call running a whole :class:`~.core.encoder.Wav2Vec2Encoder` on ``wav`` (1, S): in onnxruntime the
        graph ``hjprune-export --onnx`` makes of it (``onnx_export.EncoderGraph``), int8 as ``--int8``."""
        encoder = encoder.eval()
        if self.name == "pytorch":
            return lambda i: encoder(wav)
        if self.name == "cuda":
            return self._cuda(encoder, [wav])
        from ...convert import onnx_export

        fp32, int8 = self._paths()
        onnx_export.export_graph(onnx_export.EncoderGraph(encoder), fp32, label or "encoder")
        sess = self._session(fp32, int8)
        pad = torch.zeros(wav.shape, dtype=torch.bool)
        return lambda i: onnx_export.run(sess, wav, pad)
