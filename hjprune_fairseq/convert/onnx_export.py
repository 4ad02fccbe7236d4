"""ONNX export of an hjprune model, and its int8 (dynamic) quantisation for onnxruntime.

Any checkpoint ``checkpoints.load_model`` reads can be exported: a dense (fine-tuned) model, a slim
one, a PARP one, or a gated one, whose deterministic 0/1 masks are folded in by removing the pruned
units first (``slim_export.slim_checkpoint``: the graph is that of its slim model). The graph:

- inputs ``source`` (B, S) float32 waveform and ``padding_mask`` (B, S) bool, True at padding (every
  sample False for an unpadded batch); audio normalised as the model was trained (metadata
  ``normalize``), 16 kHz;
- outputs, by the model's output layer (its registry ``head``): CTC ``logits`` (B, T, V) (with the
  model's ``blank_weight``; padded frames are NOT forced to blank, ``frame_padding_mask`` says which
  they are) and ``frame_padding_mask`` (B, T) bool; a classifier's ``logits`` (B, C); a distillation
  model's encoder output ``features`` (B, T, d) and ``frame_padding_mask`` (its prediction heads are
  for training only);
- batch, samples and frames are dynamic axes. One frame needs ``min_samples`` samples, the CNN's
  receptive field (400 for wav2vec2's CNN, :func:`min_samples`): the metadata records it, and the tools
  that feed a graph refuse a shorter input in one line (:func:`check_samples`) where onnxruntime would
  fail inside the first Conv.

Exporter: torch's ``torch.export``-based one. :func:`export_graph` captures the graph with
``torch.export.export`` (non-strict; batch and samples symbolic) and translates that program with
``torch.onnx.export(program, dynamo=True)``, whose onnxscript optimiser folds the constants. Where the
TorchScript tracer froze a branch into the graph, right for the example input only, the export fails and
says why: a Python branch on a tensor's value (with its line; the encoder has one on purpose, no padding ->
no frame mask, which :class:`~.core.encoder.Wav2Vec2Encoder`'s ``trace_padding`` turns off for export), a
size fixed to the example's, or a branch on the input's length. Both axes are ``Dim.DYNAMIC``, so that
conditions torch sets itself and cannot prove (the frame count is not 1, inside the attention's shape
function; the bounds of the HuBERT frame rule's slice) do not fail the capture; :func:`_check_dynamic` then
refuses a program that holds for fewer sizes than declared.

``torch.export`` takes every dynamic size to be at least 2 (its 0/1 specialisation), the frame count
too, so the capture declares at least two frames' worth of samples (:func:`dynamic_shapes`). What that
adds on the frame count are torch's own contiguity checks, which pick a memory layout, not a value, and
ONNX has no layout: the graph computes one frame, and batch size 1, as PyTorch does (the tests run every
graph at exactly ``min_samples`` samples). The export costs tens of seconds where the deprecated
TorchScript exporter took a few: symbolic shapes, traced three times (capture, decomposition, type
promotion); docs/REFERENCE.md ("ONNX export") has the figures.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import traceback
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from hjprune_manifests.audio import SAMPLE_RATE
from hjprune_manifests.data_checks import receptive_field
from hjprune_manifests.output_dir import write_atomically
from torch import nn

from ..core.spec import EncoderSpec
from ..plugin.models.base import HJPruneModel
from .slim_export import check_output_path, exportable_model

OPSET = 18  # the opset torch's exporter builds in (LayerNormalization is an ONNX op from 17)
INPUTS = ("source", "padding_mask")
MIN_SAMPLES = "min_samples"  # the metadata key of min_samples(spec)
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
    for every input (``trace_padding``); ``spec`` is its encoder's."""

    def __init__(self, model: HJPruneModel, head: str):
        super().__init__()
        self.model = model.eval()
        self.eval()
        model.encoder.trace_padding = True
        self.spec: EncoderSpec = model.spec
        self.output_axes, self.compute = OUTPUTS[head]

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.compute(self.model, source, padding_mask))


class EncoderGraph(nn.Module):
    """A bare :class:`~.core.encoder.Wav2Vec2Encoder` as a graph: -> features (B, T, d), frame padding (B, T)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval()
        self.eval()
        encoder.trace_padding = True
        self.spec: EncoderSpec = encoder.spec
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


# ---- the shortest input ---------------------------------------------------------------------------
def min_samples(spec: EncoderSpec) -> int:
    """The fewest samples the encoder takes: those of one frame, the receptive field of its CNN
    (``spec.conv_layers``; 400 for wav2vec2's, 25 ms at 16 kHz). Fewer, and a Conv has no output."""
    return receptive_field(spec.conv_layers)


def graph_min_samples(sess, path: str) -> int:
    """The ``min_samples`` metadata of the graph of onnxruntime session ``sess`` (read from ``path``)."""
    value = sess.get_modelmeta().custom_metadata_map.get(MIN_SAMPLES)
    if value is None or not value.isdigit() or int(value) < 1:
        raise ValueError(f"{path}: metadata {MIN_SAMPLES}={value!r} (expected a positive integer, as hjprune-export "
                         "--onnx writes it; export the graph again)")
    return int(value)


def check_samples(samples: int, minimum: int, path: str) -> None:
    """Refuse, in one line naming the graph ``path``, an input of fewer than ``minimum`` samples."""
    if samples < minimum:
        raise ValueError(f"{path}: an input of {samples} samples is shorter than the graph takes (expected at least "
                         f"{MIN_SAMPLES}={minimum} samples, {1000 * minimum / SAMPLE_RATE:g} ms at {SAMPLE_RATE} Hz: "
                         "the CNN's receptive field, one frame)")


# ---- export ---------------------------------------------------------------------------------------
def dynamic_shapes(spec: EncoderSpec) -> Dict[str, Dict[int, Any]]:
    """Batch and samples dynamic for both inputs. The samples of at least two frames: torch.export takes every
    dynamic size, the frame count included, to be at least 2 (module docstring)."""
    from torch.export import Dim

    hop = math.prod(stride for _, _, stride in spec.conv_layers)
    return {name: {0: Dim.DYNAMIC(min=2), 1: Dim.DYNAMIC(min=min_samples(spec) + hop)} for name in INPUTS}


def _user_line(e: BaseException) -> str:
    """``file:line: code`` of the innermost frame of ``e``'s traceback outside torch: the line that caused it."""
    torch_files = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not os.path.abspath(f.filename).startswith(torch_files)]
    if not frames:
        return "inside torch"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _check_dynamic(program: torch.export.ExportedProgram, spec: EncoderSpec, source: str) -> None:
    """Refuse a captured program that holds for fewer inputs than declared: an input axis replaced by an
    expression (e.g. samples a multiple of the hop), a range narrowed, or a condition left to a run-time assertion
    (which the ONNX translation drops). ``Dim.DYNAMIC`` lets the capture accept what it cannot prove; this
    checks that what it accepted constrains nothing."""
    from torch.utils._sympy.numbers import int_oo  # the upper bound of an unbounded size

    declared = {axis: dim.min for axis, dim in dynamic_shapes(spec)[INPUTS[0]].items()}
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user_inputs = program.graph_signature.user_inputs  # the names of source's and padding_mask's placeholders
    for name in user_inputs:
        shape = placeholders[name].meta["val"].shape
        for axis, low in declared.items():
            size = shape[axis]
            expr = size.node.expr if isinstance(size, torch.SymInt) else size
            vr = program.range_constraints.get(expr)
            if vr is None:
                raise ValueError(f"{source}: the captured graph holds only where axis {axis} of {name} is {expr} "
                                 f"(expected any size from {low}): the model fixes or divides that size")
            if vr.lower != low or vr.upper != int_oo:
                held = f"{vr.lower} or more" if vr.upper == int_oo else f"from {vr.lower} to {vr.upper}"
                raise ValueError(f"{source}: the captured graph holds only where axis {axis} of {name} is {held} "
                                 f"(expected any size from {low}): a Python branch on that size")
    asserts = [n for n in program.graph.nodes
               if n.op == "call_function" and str(n.target).startswith("aten._assert_scalar")]
    if asserts:
        conditions = "; ".join(str(n.args[1]) for n in asserts[:2])
        raise ValueError(f"{source}: the captured graph holds only under conditions on the input sizes "
                         f"({conditions}); expected none")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Without the notices of torch's own code that a user cannot act on: the ONNX registry's warning per
    torchvision op when torchvision is absent (not needed here), and a deprecation inside torch.export."""
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        registry_logger.setLevel(level)


def export_graph(graph: nn.Module, path: str, source: str, metadata: Optional[Dict[str, str]] = None,
                 opset: int = OPSET) -> None:
    """Export ``graph`` (:class:`ModelGraph` or :class:`EncoderGraph`), captured on a padded example, as the
    ONNX model ``path`` (a file this module owns: a temporary one) with metadata ``min_samples`` and
    ``metadata``. ``source`` names the model in errors: a Python branch on a tensor's value, or a size the
    capture cannot keep dynamic, fails with the line that caused it."""
    onnx, _ = import_onnx()
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    outputs = graph.output_axes
    example = padded_batch(TRACE_LENGTHS)
    with torch.no_grad(), _quiet_exporter():
        try:
            program = torch.export.export(graph, example, dynamic_shapes=dynamic_shapes(graph.spec), strict=False)
        except GuardOnDataDependentSymNode as e:
            raise ValueError(f"{source}: the graph would branch on a value computed from the input ({_user_line(e)}); "
                             "expected a graph with no such branch") from e
        except torch._dynamo.exc.UserError as e:  # a size the graph would fix to the example's
            lines = [line.strip(" -") for line in str(e).splitlines() if line.startswith("  - ")]
            detail = (lines or [str(e).strip().splitlines()[0]])[0].split(". If you")[0]
            raise ValueError(f"{source}: the graph cannot keep batch and samples dynamic ({detail}); expected a "
                             "graph with no fixed input size") from e
        _check_dynamic(program, graph.spec, source)
        exported = torch.onnx.export(program, dynamo=True, input_names=list(INPUTS), output_names=list(outputs),
                                     opset_version=opset, external_data=False, verbose=False)
    # The exporter names the axes by the capture's symbols (s0, s1, the frames' formula in them): name them
    # as the module docstring does, in every value of the graph.
    ir_graph = exported.model.graph
    axes = {}
    for value in ir_graph.inputs:
        axes.update({value.shape[0]: "batch", value.shape[1]: "samples"})
    for value in ir_graph.outputs:
        axes.update({value.shape[axis]: name for axis, name in outputs[value.name].items()})
    exported.rename_axes(axes)
    proto = exported.model_proto
    for k, v in {MIN_SAMPLES: str(min_samples(graph.spec)), **(metadata or {})}.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, path)


def export_fixed(module: nn.Module, inputs: Sequence[torch.Tensor], names: Sequence[str], path: str,
                 opset: int = OPSET) -> None:
    """Export ``module`` (eval mode) with the fixed input shapes of ``inputs`` (named ``names``) as the ONNX
    model ``path``, by the same exporter as :func:`export_graph`: a timing probe of one component
    (``tools/latency``), whose sizes are what is measured, so nothing is dynamic and nothing is checked."""
    onnx, _ = import_onnx()
    with torch.no_grad(), _quiet_exporter():
        exported = torch.onnx.export(module.eval(), tuple(inputs), dynamo=True, input_names=list(names),
                                     opset_version=opset, external_data=False, verbose=False)
    onnx.save(exported.model_proto, path)


def quantize_int8(fp32_path: str, int8_path: str, op_types: Sequence[str] = INT8_OPS) -> None:
    """onnxruntime's dynamic quantisation of ``fp32_path`` into ``int8_path``: the weights of ``op_types``
    int8 (per tensor, in 7 bits), their inputs quantised to uint8 at run time; everything else stays fp32.

    7-bit weights (``reduce_range``): onnxruntime's uint8 x int8 kernels for x86-64 CPUs without VNNI (AVX2,
    AVX-512F) add pairs of products in 16 bits, which saturate with 8-bit weights. On such a CPU (AMD EPYC, AVX2)
    the tiny test models' logits came out 12 to 15 % off with 8-bit weights, 1.5 % with 7-bit ones, so a graph
    that runs on any x86-64 CPU keeps one bit less.

    Conv (the CNN and the positional conv) is not quantised by default: ConvInteger made the CNN slower
    on CPU and the output further off (docs/RESULTS.md, "onnxruntime")."""
    import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # onnxruntime's recommended pre-processing (shape inference, graph optimisation) first.
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        quantize_dynamic(pre, int8_path, op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8,
                         reduce_range=True)


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
    output names, the model's ``normalize``, the graph's ``min_samples`` and that comparison.
    """
    import_onnx()
    check_output_path(checkpoint, out, overwrite)
    model, arch = exportable_model(checkpoint)
    graph = ModelGraph(model, arch.head)
    normalize = bool(model.cfg.normalize)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{os.path.basename(out)}.") as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        meta = {"hjprune_arch": arch.name, "normalize": str(normalize).lower(), "sample_rate": str(SAMPLE_RATE),
                "hjprune_exported_from": os.path.abspath(checkpoint)}
        export_graph(graph, fp32, checkpoint, meta)
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
            "normalize": normalize, "min_samples": min_samples(graph.spec), "opset": OPSET, "check_vs_pytorch": check}
