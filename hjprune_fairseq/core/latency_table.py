"""Measured latency tables: the latency of an encoder as a function of its kept units, on one backend.

A table (JSON, written by ``hjprune-latency-table``, measured by ``tools/latency/``) holds, for one encoder
family (its dense :class:`EncoderSpec`), one machine, backend, thread count and dtype, at one input length
(``seconds``), the median time of each component on a grid of kept sizes:

- ``conv{i}``: CNN layer i (conv, its norm, GELU) by (input channels, output channels); layer 0 by its
  output channels only (its input is the waveform);
- ``front``: what the hidden dim and the last CNN layer's channels set outside the layers: the feature
  LayerNorm, the feature projection, the positional conv, the encoder LayerNorm; by (conv_dim, hidden);
- ``attention``: one Transformer layer without FFN units, by (hidden, heads, dims): heads = kept heads with
  a value/output dim, dims = the fraction of their head dims kept, the mean of query/key and value/output
  ((QK + VO) / (2 * heads * head_dim); 1 for whole-head pruning);
- ``ffn``: one Transformer layer without heads, by (hidden, units);
- ``layer_base``: one Transformer layer without heads or FFN units (its LayerNorms and residuals), by hidden.

A layer costs attention + ffn - layer_base (the base is in both). The prediction is
``cnn_scale * (CNN layers) + scale * (the rest) + offset``, fitted (``calibration``) on whole encoders timed
when the table was made (the dense one and random slim ones): the CNN timed alone against its layers' sum, the
rest of the encoder against the rest's sum, both through the origin (tables written since 2026-12-03 have
offset 0; older ones a fitted constant), on the random slim shapes; the dense model, the one whose every width
is round, is predicted with ``dense_scale`` more (its measured time over that fit's). The grid's inner widths
(CNN channels, hidden, FFN units) are odd, as a
slim model's are: a matrix product or convolution of an odd width runs slower than one of a round width
(wav2vec2-base, PyTorch CPU: 7.6 % slower with 3071 instead of 3072 FFN units per layer), so a model exported
with ``--align`` runs somewhat faster than its table predicts.

Interpolation is multilinear between grid points (bilinear for two axes), which is exact for the terms of
the cost model (T * C_in * C_out * K, T * d * h * head_dim, T^2 * h * head_dim, T * d * f are products of
axes). It is differentiable in fractional kept sizes: under the gates' keep
probabilities the measure uses the latency AT the expected kept counts (``cost_model.counts``), which
approximates the expected latency of a piecewise-linear function by its value at the expectation (exact
where it is linear, i.e. inside one grid cell; Jensen's gap otherwise, small on a table's coarse grid). Below a
grid's lowest point the first cell is extrapolated (pruning further still pays); the top is the dense size.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import cost_model
from .gate_state import GateMasks
from .spec import EncoderSpec

logger = logging.getLogger(__name__)

FORMAT = "hjprune-latency-table"
VERSION = 1
BACKENDS = ("pytorch", "onnxruntime", "onnxruntime_int8", "cuda")
LAYER_COMPONENTS = {"front": ("conv_dim", "hidden"), "attention": ("hidden", "heads", "dims"),
                    "ffn": ("hidden", "units"), "layer_base": ("hidden",)}
CALIBRATION = ("scale", "offset_s", "cnn_scale")
REQUIRED = ("format", "version", "machine", "backend", "threads", "dtype", "versions", "seconds", "spec",
            "components", "calibration")


def conv_axes(i: int) -> tuple:
    return ("out",) if i == 0 else ("in", "out")


def component_axes(spec: EncoderSpec) -> Dict[str, tuple]:
    """{component: its axes} of a table for ``spec``'s family."""
    return {**{f"conv{i}": conv_axes(i) for i in range(len(spec.conv_layers))}, **LAYER_COMPONENTS}


# The environment that sets how the process allocates memory, which changes the time of large tensors several-fold
# (wav2vec2-base's first CNN layer, 65 MB activations, 2-core VM: 160 ms fresh, 35 ms without page faults;
# docs/RESULTS.md): torch's huge-page allocation (read at its first allocation) and glibc's malloc tunables (e.g.
# glibc.malloc.mmap_threshold / trim_threshold, which keep large buffers in the heap). Read at process start.
ALLOCATOR_ENV = ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES", "LD_PRELOAD")


def machine_info() -> Dict[str, Any]:
    """What identifies the machine a table was measured on: the CPU model and its logical cores, and the allocator's
    environment (:data:`ALLOCATOR_ENV`, unset ones as "") (and the host name, for the reader; not compared:
    containers rename hosts)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count() or 0,
            "allocator": {k: os.environ.get(k, "") for k in ALLOCATOR_ENV}}


@dataclass
class Grid:
    """One component: ``axes`` names, ``points`` (one increasing list per axis), ``seconds`` (a tensor of
    the grid's shape, float64)."""

    axes: tuple
    points: List[torch.Tensor]
    seconds: torch.Tensor

    def __call__(self, *values) -> torch.Tensor:
        """Multilinear interpolation at ``values`` (one per axis; floats or tensors), clamped at the grid's top (a
        spec larger than the table's is refused by :func:`check_family`) and extrapolated linearly below its lowest
        point (down to 0; so that pruning below the grid still pays), never below 0 s."""
        out = self.seconds
        # Contract one axis at a time: out[..., i] * (1 - w) + out[..., i + 1] * w along the first axis left.
        for pts, v in zip(self.points, values):
            if len(pts) == 1:
                out = out[0]
                continue
            x = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            i = min(max(bisect.bisect_right(pts.tolist(), x), 1), len(pts) - 1) - 1  # the cell of x (first/last beyond)
            v = torch.as_tensor(v, dtype=torch.float64).clamp(0.0, float(pts[-1]))
            w = (v - pts[i]) / (pts[i + 1] - pts[i])
            out = out[i] * (1 - w) + out[i + 1] * w
        return out.clamp(min=0.0)


@dataclass
class LatencyTable:
    """A loaded, validated table (see the module docstring); ``source``: its path, for messages."""

    source: str
    data: Dict[str, Any]
    spec: EncoderSpec
    grids: Dict[str, Grid]
    scale: float = 1.0
    offset: float = 0.0
    cnn_scale: float = 1.0
    dense_scale: float = 1.0
    _exact: Dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _dense: Optional[List[float]] = field(default=None, repr=False)  # count_values of the dense model (is_dense)

    @property
    def backend(self) -> str:
        return self.data["backend"]

    @property
    def seconds(self) -> float:
        return float(self.data["seconds"])

    @property
    def threads(self) -> int:
        return int(self.data["threads"])

    def predict(self, counts: cost_model.Counts) -> torch.Tensor:
        """Predicted seconds of the whole encoder with kept units ``counts`` (see :func:`predict`); remembered for
        counts of plain ints (a spec's own sizes: the dense model the constraint compares with at every update)."""
        values = count_values(counts)
        if not all(isinstance(v, int) for v in values):
            return predict(self, counts)
        key = tuple(values) + (len(counts.conv), len(counts.ffn))
        if key not in self._exact:
            self._exact[key] = predict(self, counts)
        return self._exact[key]

    def describe(self) -> str:
        m = self.data["machine"]
        return (f"{self.source} ({self.backend}, {self.data['dtype']}, {self.threads} threads, "
                f"{self.seconds:g} s, measured on {m.get('cpu')} with {m.get('cores')} cores)")


def _fail(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: not a latency table ({what}); expected a JSON file written by hjprune-latency-table")


def _grid(path: str, name: str, entry: Any, axes: tuple) -> Grid:
    if not isinstance(entry, dict) or "grid" not in entry or "seconds" not in entry:
        raise _fail(path, f"component {name!r} has no 'grid' and 'seconds'")
    if list(entry.get("axes", [])) != list(axes):
        raise _fail(path, f"component {name!r} has axes {entry.get('axes')}, expected {list(axes)}")
    try:
        points = [torch.tensor([float(v) for v in p], dtype=torch.float64) for p in entry["grid"]]
        seconds = torch.tensor(entry["seconds"], dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"component {name!r} holds a value that is not a number ({e})") from e
    shape = tuple(len(p) for p in points)
    if len(points) != len(axes) or tuple(seconds.shape) != shape or not all(shape):
        raise _fail(path, f"component {name!r}: seconds of shape {tuple(seconds.shape)} for grid sizes {shape}")
    if any(bool((p[1:] <= p[:-1]).any()) for p in points):
        raise _fail(path, f"component {name!r}: grid points must increase")
    if not bool(torch.isfinite(seconds).all()) or bool((seconds < 0).any()):
        raise _fail(path, f"component {name!r}: seconds must be finite and >= 0")
    return Grid(tuple(axes), points, seconds)


def from_dict(data: Any, path: str = "<table>") -> LatencyTable:
    """Validate a table's JSON object; ValueError (one line naming ``path``) when it is not one."""
    if not isinstance(data, dict):
        raise _fail(path, "not a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise _fail(path, f"missing {', '.join(missing)}")
    if data["format"] != FORMAT or data["version"] != VERSION:
        raise _fail(path, f"format {data['format']!r} version {data['version']!r}, expected {FORMAT!r} {VERSION}")
    if not isinstance(data["machine"], dict) or not {"cpu", "cores"} <= set(data["machine"]):
        raise _fail(path, "machine needs 'cpu' and 'cores'")
    if not isinstance(data["threads"], int) or not isinstance(data["seconds"], (int, float)) or data["seconds"] <= 0:
        raise _fail(path, f"threads {data['threads']!r} and seconds {data['seconds']!r}: an integer and a positive number")
    if data["backend"] not in BACKENDS:
        raise _fail(path, f"backend {data['backend']!r}, expected one of {BACKENDS}")
    try:
        spec = EncoderSpec.from_dict(data["spec"])
    except (TypeError, ValueError) as e:
        raise _fail(path, f"spec: {e}") from e
    comps = data["components"]
    if not isinstance(comps, dict):
        raise _fail(path, "components is not an object")
    axes = component_axes(spec)
    missing = [n for n in axes if n not in comps]
    if missing:
        raise _fail(path, f"missing components {', '.join(missing)}")
    grids = {n: _grid(path, n, comps[n], a) for n, a in axes.items()}
    cal = data["calibration"]
    if not isinstance(cal, dict) or not all(isinstance(cal.get(k), (int, float)) for k in CALIBRATION):
        raise _fail(path, f"calibration needs numbers {', '.join(CALIBRATION)}")
    dense_scale = cal.get("dense_scale", 1.0)
    if not isinstance(dense_scale, (int, float)) or not dense_scale > 0:
        raise _fail(path, f"calibration dense_scale {dense_scale!r}, expected a positive number")
    return LatencyTable(path, data, spec, grids, float(cal["scale"]), float(cal["offset_s"]), float(cal["cnn_scale"]),
                        float(dense_scale))


def load(path: str) -> LatencyTable:
    """Read and validate the table ``path``: FileNotFoundError or ValueError, one line naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such latency table (make one with hjprune-latency-table)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"invalid JSON: {e}") from e
    return from_dict(data, path)


def foreign(table: LatencyTable, backend: Optional[str] = None) -> Optional[str]:
    """Why ``table`` may not predict here (another machine, or another ``backend`` than the one timed), or None."""
    why = []
    here, there = machine_info(), table.data["machine"]
    if (here["cpu"], here["cores"]) != (there.get("cpu"), there.get("cores")):
        why.append(f"it was measured on {there.get('cpu')} with {there.get('cores')} cores, this machine is "
                   f"{here['cpu']} with {here['cores']} cores")
    if backend is not None and backend != table.backend:
        why.append(f"it is for backend {table.backend}, not {backend}")
    if "allocator" in there and there["allocator"] != here["allocator"]:
        differ = [k for k in ALLOCATOR_ENV if there["allocator"].get(k, "") != here["allocator"][k]]
        why.append("it was timed with " + ", ".join(f"{k}={there['allocator'].get(k, '')!r}" for k in differ) +
                   ", this process has " + ", ".join(f"{k}={here['allocator'][k]!r}" for k in differ) +
                   " (how large tensors are allocated changes their time several-fold)")
    return "; ".join(why) or None


def warn_if_foreign(table: LatencyTable, backend: Optional[str] = None) -> Optional[str]:
    """Log (and return) a warning naming the table's machine and backend when it is not this one's."""
    why = foreign(table, backend)
    if why:
        msg = f"latency table {table.source} ({table.backend}): {why}; its predictions may not hold here"
        logger.warning(msg)
        return msg
    return None


def check_family(table: LatencyTable, spec: EncoderSpec, source: str = "the model") -> None:
    """Refuse a ``spec`` the table cannot predict: another CNN, head size or norm order, or sizes beyond its grid."""
    ref = table.spec
    if [c[1:] for c in spec.conv_layers] != [c[1:] for c in ref.conv_layers]:
        raise ValueError(f"{table.source}: measured for CNN kernels/strides {[c[1:] for c in ref.conv_layers]}, "
                         f"{source} has {[c[1:] for c in spec.conv_layers]}")
    if (spec.head_dim, spec.layer_norm_first, spec.has_rel_pos) != (ref.head_dim, ref.layer_norm_first, False):
        raise ValueError(f"{table.source}: measured for head_dim={ref.head_dim}, layer_norm_first="
                         f"{ref.layer_norm_first} without relative position bias; {source} has head_dim="
                         f"{spec.head_dim}, layer_norm_first={spec.layer_norm_first}, rel_pos={spec.has_rel_pos}")
    limits = {"conv channels": (max(c for c, _, _ in spec.conv_layers), max(c for c, _, _ in ref.conv_layers)),
              "hidden": (spec.embed_dim, ref.embed_dim), "heads": (max(spec.num_heads), max(ref.num_heads)),
              "ffn units": (max(spec.ffn_dims), max(ref.ffn_dims))}
    over = [f"{k} {v} > {m}" for k, (v, m) in limits.items() if v > m]
    if over:
        raise ValueError(f"{table.source}: {source} is larger than the table's grid ({', '.join(over)})")


def components(table: LatencyTable, counts: cost_model.Counts) -> Dict[str, torch.Tensor]:
    """Predicted seconds per component (scaled by the calibration) and ``constant`` (its offset), from kept
    units (``cost_model.counts``: ints, 0/1-mask sums or expected counts); differentiable in the counts. The dense
    model itself (:func:`is_dense`) is scaled by ``dense_scale`` too: the one shape with every width round, which
    runs faster than the grid's odd widths say (its calibration's measured time over its fitted one)."""
    g = table.grids
    head_dim = table.spec.head_dim
    d = counts.hidden
    cnn = g["conv0"](counts.conv[0])
    for i in range(1, len(counts.conv)):
        cnn = cnn + g[f"conv{i}"](counts.conv[i - 1], counts.conv[i])
    attention = ffn = norms = torch.zeros((), dtype=torch.float64)
    for h, qk, vo, f in zip(counts.attn_heads, counts.qk, counts.vo, counts.ffn):
        h = torch.as_tensor(h, dtype=torch.float64)
        dims = (qk + vo) / (2 * head_dim * h.clamp(min=1e-6))  # mean kept fraction of a kept head's dims
        base = g["layer_base"](d)
        attention = attention + g["attention"](d, h, dims) - base
        ffn = ffn + g["ffn"](d, f) - base
        norms = norms + base
    s = table.scale
    out = {"cnn": table.cnn_scale * cnn, "front": s * g["front"](counts.conv[-1], d), "attention": s * attention,
           "ffn": s * ffn, "layer_norms": s * norms, "constant": torch.tensor(table.offset, dtype=torch.float64)}
    if table.dense_scale != 1.0 and is_dense(table, counts):
        out = {k: table.dense_scale * v for k, v in out.items()}
    return out


def count_values(counts: cost_model.Counts) -> list:
    """Every kept count of ``counts`` in one list (what identifies a structure)."""
    return [*counts.conv, *counts.attn_heads, *counts.qk, *counts.vo, *counts.ffn, *counts.pos_groups]


def is_dense(table: LatencyTable, counts: cost_model.Counts) -> bool:
    """Whether ``counts`` are the table's dense model itself: fixed counts (no gradient), every unit kept."""
    values = count_values(counts)
    if any(isinstance(v, torch.Tensor) and v.requires_grad for v in values):
        return False
    if table._dense is None:
        table._dense = [float(v) for v in count_values(cost_model.counts(table.spec))]
    return len(values) == len(table._dense) and all(float(v) == r for v, r in zip(values, table._dense))


def predict(table: LatencyTable, counts: cost_model.Counts) -> torch.Tensor:
    """Predicted seconds of the whole encoder at the table's input length (float64 tensor)."""
    return sum(components(table, counts).values())


def expected_latency(spec: EncoderSpec, keep: Optional[GateMasks], table: LatencyTable) -> torch.Tensor:
    """Predicted seconds of ``spec`` under ``keep`` (keep probabilities: expected kept counts, differentiable;
    0/1 masks: the deterministic structure; None: the spec itself)."""
    check_family(table, spec)
    return predict(table, cost_model.counts(spec, keep))


def predicted_ms_by_component(table: LatencyTable, spec: EncoderSpec, keep: Optional[GateMasks] = None) -> Dict[str, float]:
    """JSON-ready {component: ms} and ``total``, for the reports."""
    check_family(table, spec)
    parts = {k: 1000 * float(v.detach()) for k, v in components(table, cost_model.counts(spec, keep)).items()}
    return {**parts, "total": sum(parts.values())}


def grid_points(full: int, fractions: Sequence[float], low: int = 0) -> List[int]:
    """Kept sizes of a grid axis: ``fractions`` of ``full`` rounded, at least ``low``, distinct, increasing."""
    return sorted({max(low, min(full, int(round(f * full)))) for f in fractions})
