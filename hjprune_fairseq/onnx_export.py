"""ONNX export of an hjprune model, and its int8 (dynamic) quantisation for onnxruntime.

Any checkpoint ``checkpoints.load_model`` reads can be exported: a dense (fine-tuned) model, a slim
one, a PARP one, or a gated one, whose deterministic 0/1 masks are folded in by removing the pruned
units first (``checkpoints.slim_checkpoint``: the graph is that of its slim model). The graph:

- inputs ``source`` (B, S) float32 waveform and ``padding_mask`` (B, S) bool, True at padding (every
  sample False for an unpadded batch); audio normalised as the model was trained (metadata
  ``normalize``), 16 kHz;
- outputs, by the model's output layer (its registry ``head``): CTC ``logits`` (B, T, V) (with the
  model's ``blank_weight``; padded frames are NOT forced to blank, ``frame_padding_mask`` says which
  they are) and ``frame_padding_mask`` (B, T) bool; a classifier's ``logits`` (B, C); a distillation
  model's encoder output ``features`` (B, T, d) and ``frame_padding_mask`` (its prediction heads are
  for training only);
- batch, samples and frames are dynamic axes.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which torch
2.13 still ships (deprecated). The dynamo exporter (``dynamo=True`` with ``dynamic_shapes``) also
exported a tiny fine-grained slim encoder correctly (dynamic batch and length, padding), but took 37 s
against 1.8 s on 2 cores, too slow for the tests. A tracer follows one input: a Python branch on a
tensor's value freezes into the graph. The encoder has one on purpose (no padding -> no frame mask);
:class:`~.core.encoder.Wav2Vec2Encoder`'s ``trace_padding`` turns it off for export, and any other such
branch (a ``TracerWarning``) makes the export fail with its line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from hjprune_manifests.audio import SAMPLE_RATE
from hjprune_manifests.output_dir import write_atomically
from omegaconf import OmegaConf
from torch import nn

from .checkpoints import arch_of, check_output_path, model_from_state, slim_checkpoint
from .fairseq_import import load_state
from .models import registry
from .models.base import HJPruneModel

OPSET = 17  # LayerNormalization is an ONNX op from 17
INPUTS = ("source", "padding_mask")
# A (B, S) example to trace with: two rows, the second padded (the padding path is in the graph anyway).
TRACE_LENGTHS = (16000, 12000)
# Dynamic quantisation quantises these (weights int8 per tensor, activations uint8 at run time). Conv is
# left out by default: see quantize_int8.
INT8_OPS = ("MatMul", "Gemm")


def import_onnx():
    """(onnx, onnxruntime), or an ImportError naming the extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"this needs the ONNX extra: pip install 'hjprune-fairseq[onnx]' ({e})") from e
    return onnx, onnxruntime


# ---- what the graph computes --------------------------------------------------------------------
def _ctc(model: HJPruneModel, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    out = model(source, padding_mask)
    # get_logits without a padding mask applies blank_weight only; the mask is an output of its own.
    logits = model.get_logits({"encoder_out": out["encoder_out"], "padding_mask": None})
    return logits.transpose(0, 1), out["padding_mask"]


def _classifier(model: HJPruneModel, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    return (model(source, padding_mask)["encoder_out"],)


def _features(model: HJPruneModel, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    return model.encode(source, padding_mask)


# Per output layer (registry head): the graph's output names and dynamic axes, and how to compute them.
OUTPUTS: Dict[str, Tuple[Dict[str, Dict[int, str]], Callable[..., Tuple[torch.Tensor, ...]]]] = {
    "ctc": ({"logits": {0: "batch", 1: "frames"}, "frame_padding_mask": {0: "batch", 1: "frames"}}, _ctc),
    "classifier": ({"logits": {0: "batch"}}, _classifier),
    "distill": ({"features": {0: "batch", 1: "frames"}, "frame_padding_mask": {0: "batch", 1: "frames"}}, _features),
}
ENCODER_OUTPUTS = OUTPUTS["distill"][0]  # a bare encoder (the benchmark): features and frame padding


class ModelGraph(nn.Module):
    """What the ONNX graph computes: ``forward(source (B, S), padding_mask (B, S))`` -> the outputs of
    ``OUTPUTS[head]``. The model is put in eval mode and its encoder computes the frame padding mask
    for every input (``trace_padding``)."""

    def __init__(self, model: HJPruneModel, head: str):
        super().__init__()
        self.model = model.eval()
        model.encoder.trace_padding = True
        self.output_axes, self.compute = OUTPUTS[head]

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.compute(self.model, source, padding_mask))


class EncoderGraph(nn.Module):
    """A bare :class:`~.core.encoder.Wav2Vec2Encoder` as a graph: -> features (B, T, d), frame padding (B, T)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval()
        encoder.trace_padding = True
        self.output_axes = ENCODER_OUTPUTS

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, frame_pad, _ = self.encoder(source, padding_mask)
        return x, frame_pad


def padded_batch(lengths: Sequence[int], seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random waveforms of ``lengths`` samples, right-padded with zeros: source (B, S), padding_mask (B, S)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.zeros(len(lengths), max(lengths))
    padding_mask = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g)
        padding_mask[i, :n] = False
    return source, padding_mask


# ---- tracing ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_frozen_branches(source: str) -> Iterator[None]:
    """Fail where the tracer met, outside torch's own files, a Python value computed from a tensor (it
    would be a constant in the graph, right for the example input only). torch's own (e.g. the size
    check of ``F.group_norm``) guard errors, not the result, and are dropped; other warnings pass
    through, but the exporter's notice that it is the TorchScript-based one (chosen here on purpose)."""
    torch_files = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning) and os.path.abspath(w.filename).startswith(torch_files):
            continue
        if issubclass(w.category, torch.jit.TracerWarning):
            raise ValueError(f"{source}: the traced graph would freeze a value computed from the example input "
                             f"({w.filename}:{w.lineno}: {w.message}); expected a graph with no such branch")
        if not (issubclass(w.category, DeprecationWarning) and "TorchScript-based ONNX export" in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def trace_to_onnx(graph: nn.Module, path: str, source: str, opset: int = OPSET) -> None:
    """Trace ``graph`` (:class:`ModelGraph` or :class:`EncoderGraph`) on a padded example and write its
    ONNX model to ``path`` (a file this module owns: a temporary one). ``source`` names the model in errors."""
    outputs = graph.output_axes
    axes = {name: {0: "batch", 1: "samples"} for name in INPUTS}
    axes.update(outputs)
    example = padded_batch(TRACE_LENGTHS)
    with torch.no_grad(), _no_frozen_branches(source):
        torch.onnx.export(graph, example, path, dynamo=False, input_names=list(INPUTS), output_names=list(outputs),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)


def quantize_int8(fp32_path: str, int8_path: str, op_types: Sequence[str] = INT8_OPS) -> None:
    """onnxruntime's dynamic quantisation of ``fp32_path`` into ``int8_path``: the weights of ``op_types``
    int8 (per tensor), their inputs quantised to uint8 at run time; everything else stays fp32.

    Conv (the CNN and the positional conv) is not quantised by default: ConvInteger made the CNN slower
    on CPU and the output further off (docs/RESULTS.md, "onnxruntime")."""
    import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # onnxruntime's recommended pre-processing (shape inference, graph optimisation) first.
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        quantize_dynamic(pre, int8_path, op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8)


def session(path: str, threads: int = 0, spinning: bool = True):
    """An onnxruntime CPU session of ``path``: ``threads`` intra-op threads (0: onnxruntime's choice);
    ``spinning`` False stops its idle threads spinning (fairer when another runtime runs in between)."""
    _, ort = import_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(sess, source: torch.Tensor, padding_mask: torch.Tensor) -> List[np.ndarray]:
    """Outputs of an onnxruntime session for one batch."""
    return sess.run(None, {"source": source.numpy(), "padding_mask": padding_mask.numpy()})


# ---- checkpoints --------------------------------------------------------------------------------
def exportable_model(path: str) -> Tuple[HJPruneModel, registry.Arch]:
    """The model of checkpoint ``path`` as it is exported: a gated model with gates becomes its slim
    model (deterministic masks folded in by removing the pruned units); any other as it is."""
    state = load_state(path)
    model = model_from_state(state, path)
    arch = registry.get(arch_of(state))
    if model.gates is not None:
        slim = slim_checkpoint(state, model, path)[0]
        slim["cfg"] = OmegaConf.create(slim["cfg"])  # as fairseq's loader gives it
        model, arch = model_from_state(slim, path), arch.slim
    return model, arch


def compare(reference: Sequence[torch.Tensor], outputs: Sequence[np.ndarray],
            frame_pad: Optional[torch.Tensor]) -> Dict[str, float]:
    """How far the first output (logits or features) is from PyTorch's, over the unpadded frames:
    max_abs_diff, rel_error (||a - b|| / ||b||) and argmax_agreement (fraction of frames, or rows, whose
    largest entry is the same)."""
    ref = reference[0].detach()
    out = torch.from_numpy(np.asarray(outputs[0]))
    if ref.shape != out.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    if frame_pad is not None and ref.dim() == 3:
        ref, out = ref[~frame_pad], out[~frame_pad]
    return {"max_abs_diff": float((ref - out).abs().max()),
            "rel_error": float((ref - out).norm() / ref.norm().clamp(min=1e-12)),
            "argmax_agreement": float((ref.argmax(-1) == out.argmax(-1)).float().mean())}


def export_onnx(checkpoint: str, out: str, overwrite: bool = False, int8: bool = False,
                check_lengths: Sequence[int] = (12000, 7000)) -> Dict[str, Any]:
    """Write the ONNX graph of ``checkpoint`` (int8-quantised with ``int8``) to ``out``.

    Refuses to write over the checkpoint, or over an existing ``out`` without ``overwrite``; ``out``
    appears complete or not at all. Then runs the written file in onnxruntime on a padded batch of
    ``check_lengths`` samples and compares it with PyTorch (:func:`compare`). Returns the arch, the
    output names, the model's ``normalize`` and that comparison.
    """
    onnx, _ = import_onnx()
    check_output_path(checkpoint, out, overwrite)
    model, arch = exportable_model(checkpoint)
    graph = ModelGraph(model, arch.head)
    normalize = bool(model.cfg.normalize)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{os.path.basename(out)}.") as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        trace_to_onnx(graph, fp32, checkpoint)
        proto = onnx.load(fp32)
        meta = {"hjprune_arch": arch.name, "normalize": str(normalize).lower(), "sample_rate": str(SAMPLE_RATE),
                "hjprune_exported_from": os.path.abspath(checkpoint)}
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, fp32)
        if int8:
            final = os.path.join(tmp, "int8.onnx")
            quantize_int8(fp32, final)
        else:
            final = fp32
        write_atomically(out, lambda dst: os.replace(final, dst))
    source, padding_mask = padded_batch(check_lengths, seed=1)
    with torch.no_grad():
        reference = graph(source, padding_mask)
    frame_pad = reference[1] if len(reference) > 1 else None
    check = compare(reference, run(session(out), source, padding_mask), frame_pad)
    return {"onnx": out, "arch": arch.name, "int8": int8, "inputs": list(INPUTS), "outputs": list(graph.output_axes),
            "normalize": normalize, "opset": OPSET, "check_vs_pytorch": check}
