"""Measure a latency table (``core/latency_table.py``) of an encoder family on this machine.

Every component is timed on its grid (``probes``), and whole encoders with them (the dense one and
``calibration`` random slim ones of other seeds than ``predict``'s, ``shapes``), all in one set of turns
(``tools.timing.median_times``: warm-up, then the median of repeats, every probe and encoder in every round, so
that a drift in the machine's speed hits them alike; :func:`time_table`), with the thread count fixed. The scales
of the prediction are fitted on the slim ones through the origin (what running the components inside one model adds
or saves), the dense one getting its own (:func:`calibrate`). Sizes of a grid are fractions of the dense size
(``TableConfig``). A component's timings are made non-decreasing in its kept sizes (:func:`monotone`), so that
noise never makes a smaller model predicted slower.

Several tables (backends, thread counts) are measured in one run from the same graphs (:func:`measure_tables`):
for onnxruntime each probe and calibration encoder is exported once (and quantised once for int8), in worker
processes, before anything is timed (``graphs.exported``); then each table is timed alone, as it would be in a
run of its own, with its own sessions and threads.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from hjprune_manifests.output_dir import write_atomically

from ...core import cost_model
from ...core import latency_table as lt
from ...core.presets import PRESETS
from ...core.spec import EncoderSpec
from ..timing import fixed_threads, median_times
from .graphs import ONNX_BACKENDS, Backend, Files, Graph, exported
from .shapes import calibration_specs

logger = logging.getLogger(__name__)

MAX_CALIBRATION = 20


@dataclass
class TableConfig:
    """What ``hjprune-latency-table`` measures; grids are fractions of the dense size of each axis."""

    preset: str = field(default="wav2vec2_base", metadata={"help": "encoder family (core.presets)"})
    seconds: float = field(default=10.0, metadata={"help": "input length (s) at which every component is timed"})
    backend: str = field(default="pytorch", metadata={"help": f"one of {', '.join(lt.BACKENDS)}"})
    threads: int = field(default=1, metadata={"help": "torch / onnxruntime intra-op threads (fixed)"})
    dtype: str = field(default="float32", metadata={"help": "float32 on CPU; float16 or bfloat16 on cuda"})
    repeats: int = field(default=7, metadata={"help": "timed rounds (every grid point and calibration "
                                                                "encoder once per round); each one's median is kept"})
    warmup: int = field(default=1, metadata={"help": "untimed rounds first"})
    conv_grid: Tuple[float, ...] = field(default=(0.125, 0.25, 0.5, 0.75, 1.0),
                                         metadata={"help": "CNN channels, in and out"})
    hidden_grid: Tuple[float, ...] = field(default=(0.5, 0.75, 1.0), metadata={"help": "hidden dims (below: clamped)"})
    heads_grid: Tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "heads per layer"})
    dims_grid: Tuple[float, ...] = field(default=(0.25, 0.5, 0.75, 1.0),
                                         metadata={"help": "kept fraction of a head's dims"})
    ffn_grid: Tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "FFN units per layer"})
    calibration: int = field(default=6, metadata={"help": "random slim encoders (half with fine-grained heads) timed "
                                                          "whole, with the dense one, to fit scale and offset: "
                                                          f"0..{MAX_CALIBRATION}"})
    seed: int = field(default=0, metadata={"help": "seed of weights, inputs and which dims a probe keeps"})

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}, expected one of {sorted(PRESETS)}")
        if PRESETS[self.preset].has_rel_pos:
            raise ValueError(f"preset {self.preset}: latency tables do not model WavLM's relative position bias yet")
        if self.seconds <= 0 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"seconds > 0, repeats >= 1 and warmup >= 0 expected, got {self.seconds}, "
                             f"{self.repeats}, {self.warmup}")
        if not 0 <= self.calibration <= MAX_CALIBRATION:
            raise ValueError(f"calibration must be 0..{MAX_CALIBRATION}, got {self.calibration}")
        for name in ("conv_grid", "hidden_grid", "heads_grid", "dims_grid", "ffn_grid"):
            values = getattr(self, name)
            if not values or any(not 0 <= v <= 1 for v in values) or max(values) != 1:
                raise ValueError(f"{name} must be fractions in [0, 1] ending at 1, got {list(values)}")


def unaligned(points: List[int], full: int) -> List[int]:
    """``points`` with every even width below ``full`` made odd (one more, or one less where that is ``full``).

    Learned gates leave arbitrary widths, and a matrix product whose width is not a multiple of the SIMD width runs
    slower: on wav2vec2-base (PyTorch, 1 thread, 2-core AMD EPYC) the dense encoder took 7.6 % longer with 3071
    instead of 3072 FFN units per layer, 7.9 % with a hidden dim of 767 instead of 768, and 3 % less at 704 than
    at 705 (docs/RESULTS.md). So a grid of round widths predicts what an aligned export (``hjprune-export --align``)
    gets, and its inner points are timed at odd widths instead, as a slim model's are; the top stays the dense
    size, which is what the dense model has."""
    out = []
    for p in points:
        if 1 < p < full and p % 2 == 0:
            p = p + 1 if p + 1 < full else p - 1
        out.append(p)
    return sorted(set(out))


def axis_points(spec: EncoderSpec, cfg: TableConfig) -> Dict[str, Dict[str, List[float]]]:
    """{component: {axis: kept sizes}} of ``spec``'s table: widths (CNN channels, hidden, FFN units) at
    :func:`unaligned` points, heads (whole heads of head_dim each) at round ones."""

    def pts(full: int, fractions, low: int = 0) -> List[int]:
        return unaligned(lt.grid_points(full, fractions, low), full)

    hidden = pts(spec.embed_dim, cfg.hidden_grid, 1)
    layer = {
        "attention": {"hidden": hidden, "heads": lt.grid_points(max(spec.num_heads), cfg.heads_grid),
                      "dims": sorted({max(1 / spec.head_dim, f) for f in cfg.dims_grid})},
        "ffn": {"hidden": hidden, "units": pts(max(spec.ffn_dims), cfg.ffn_grid)},
        "layer_base": {"hidden": hidden},
        "front": {"conv_dim": pts(spec.conv_dim, cfg.conv_grid, 1), "hidden": hidden},
    }
    conv = {}
    for i, (c, _, _) in enumerate(spec.conv_layers):
        out = pts(c, cfg.conv_grid, 1)
        conv[f"conv{i}"] = {"out": out} if i == 0 else {"in": pts(spec.conv_layers[i - 1][0], cfg.conv_grid, 1), "out": out}
    return {**conv, **layer}


def component_graphs(spec: EncoderSpec, cfg: TableConfig) -> Dict[str, List[Graph]]:
    """{component: its probe at each grid point of :func:`axis_points`, in the order of the product of its axes}."""
    out = {}
    for name, axes in axis_points(spec, cfg).items():
        out[name] = [Graph(f"{name}@" + ",".join(map(str, p)), "probe", spec, cfg.seconds, cfg.seed, name, p)
                     for p in itertools.product(*axes.values())]
    return out


def calibration_graphs(spec: EncoderSpec, cfg: TableConfig) -> Tuple[Dict[str, EncoderSpec], List[Graph]]:
    """The specs timed whole (the dense one and ``cfg.calibration`` random slim ones, ``shapes.random_specs`` from
    ``shapes.CALIBRATION_SEED``, named ``cal_whole_0``, ``cal_fine_1``, ...), and their graphs: each encoder (key: its
    name) and its CNN alone (``cnn:`` + its name)."""
    specs = {"dense": spec, **calibration_specs(spec, cfg.calibration, cfg.seed)}
    graphs = [g for k, s in specs.items()
              for g in (Graph(k, "encoder", s, cfg.seconds, cfg.seed), Graph("cnn:" + k, "cnn", s, cfg.seconds, cfg.seed))]
    return specs, graphs


def grid_entry(measured: Dict[str, float], graphs: List[Graph], axes: Dict[str, List[float]],
               name: str = "component") -> Dict:
    """The component's grid entry from its points' ``measured`` seconds (``graphs``, :func:`component_graphs`), made
    non-decreasing in the kept sizes (:func:`monotone`)."""
    shape = [len(v) for v in axes.values()]
    flat = torch.tensor([measured[g.key] for g in graphs], dtype=torch.float64).view(*shape)
    seconds, _ = monotone(flat, list(axes))
    gap = seconds - flat
    big = (gap > RAISE_WARNING * flat) & (gap > RAISE_FLOOR_S)
    raised = float((gap[big] / flat[big]).max()) if big.any() else 0.0
    if raised:
        logger.warning("%s: a point timed %.0f %% faster than a smaller one of the grid (raised to it); was the machine "
                       "busy? (measure again on an idle machine)", name, 100 * raised)
    return {"axes": list(axes), "grid": [list(v) for v in axes.values()], "seconds": seconds.tolist()}


def time_table(backend: Backend, files: Files, table: Dict, components: Dict[str, List[Graph]], axes: Dict[str, Dict],
               specs: Dict[str, EncoderSpec], cal_graphs: List[Graph], cfg: TableConfig) -> Tuple[Dict, Dict]:
    """({component: grid entry}, calibration) of ``table`` (its header: machine, backend, spec, ...): every probe
    and calibration encoder timed in one set of turns (each round runs them all once), so that the machine's speed,
    which drifts on a shared machine, is the same for every component and for the encoders the calibration fits
    them to. All of them are held at once (onnxruntime, wav2vec2-base at 10 s: 19.5 GB on a 2-core VM).

    Timed a component at a time instead (a few seconds each), one component's grid was measured in a fast minute
    and another's in a slow one: on a 2-core VM, layers at grid points later timed 15-38 % slower than their table
    entries, every component by a different factor, while whole encoders moved 5-20 % (docs/RESULTS.md)."""
    t0 = time.perf_counter()
    graphs = [g for gs in components.values() for g in gs] + cal_graphs
    calls = backend.calls(graphs, files)
    with torch.inference_mode():
        measured = median_times(calls, cfg.repeats, cfg.warmup)
    del calls
    logger.info("%s, %d threads: %d probes and encoders timed in %.1f s", cfg.backend, cfg.threads, len(graphs),
                time.perf_counter() - t0)
    grids = {name: grid_entry(measured, gs, axes[name], name) for name, gs in components.items()}
    return grids, calibrate(measured, {**table, "components": grids}, specs)


# A raise above this is named in a warning. Below it, it is what odd widths cost: a round width (the grid's top)
# runs up to ~25 % faster than the odd one below it (wav2vec2-base, PyTorch CPU; e.g. the CNN's layers).
RAISE_WARNING = 0.3
# ... and a raise under this is the jitter of a call from Python, not a busy machine: the demo's tiny table (probes
# from 0.1 ms to a few ms, 3 repeats) had a 0-head attention point raised by 0.10-0.13 ms (72-92 %) in each of 5
# tables measured in a row on an idle 2-core Xeon: named in a warning in every `make demo`.
RAISE_FLOOR_S = 1e-3

# Axes along which more kept units never take less time; not ``dims``: heads of uneven dims run one attention
# call per size (core.encoder.SelfAttention._per_size), so 0.5 of the dims can be slower than all of them.
MONOTONE_AXES = ("in", "out", "conv_dim", "hidden", "heads", "units")


def monotone(seconds: torch.Tensor, axes: List[str]) -> Tuple[torch.Tensor, float]:
    """(``seconds`` made non-decreasing along every axis of :data:`MONOTONE_AXES`, the largest relative raise).

    A grid point timed faster than a smaller one is noise (a busy machine), and a table that predicts a smaller
    model slower makes the latency measure push the gates the wrong way: each point is raised to the largest time
    below it (a running maximum along each such axis in turn, which keeps the earlier axes non-decreasing)."""
    out = seconds
    for dim, name in enumerate(axes):
        if name in MONOTONE_AXES and out.shape[dim] > 1:
            out = torch.cummax(out, dim=dim).values
    return out, float(((out - seconds) / seconds.clamp(min=1e-12)).max()) if out.numel() else 0.0


# The dense encoder's time over the slim shapes' fit: its round widths made it up to ~10 % faster in PyTorch
# (wav2vec2-base, CPU: 0.91-1.00) and 0.97-1.05 in onnxruntime; far outside that the timings were noise (a busy
# machine, a tiny model's fixed costs), and a dense model predicted much faster than its slim ones would make
# pruning look like a loss.
DENSE_SCALE = (0.85, 1.15)


def slope_through_zero(x: torch.Tensor, y: torch.Tensor) -> float:
    """The least-squares slope of y on x through the origin (1 where it is not positive: timings too noisy for it)."""
    a = float((x * y).sum() / (x * x).sum().clamp(min=1e-30))
    return a if a > 0 else 1.0


def calibrate(measured: Dict[str, float], table: Dict, specs: Dict[str, EncoderSpec]) -> Dict:
    """From the ``measured`` seconds of whole encoders and their CNNs alone (:func:`calibration_graphs`), fit
    ``cnn = cnn_scale * sum of CNN layers`` and ``whole - cnn = scale * sum of the other components`` on the
    slim shapes, both by least squares through the origin (offset 0); the dense model, whose widths are all round
    (faster than the grid's odd ones), gets ``dense_scale``: its measured time over that fit's.

    Why no offset: the sum of the components holds every part of the encoder already, and an offset fitted on a
    few encoders is poorly determined: on wav2vec2-base (PyTorch, 1 thread) a line fitted on the dense encoder and
    three slim ones had an offset of 505 ms (23 % of the dense time) and over-predicted small slim shapes by up
    to 27 %; through the origin the same random shapes were predicted within 4.6 % (median; docs/RESULTS.md)."""
    raw = lt.from_dict({**table, "calibration": {"scale": 1.0, "offset_s": 0.0, "cnn_scale": 1.0}}, "<being measured>")
    parts = {k: {n: float(v) for n, v in lt.components(raw, cost_model.counts(s)).items()} for k, s in specs.items()}
    fit = [k for k in specs if k != "dense"] or ["dense"]  # the slim shapes; the dense alone without any

    def through_zero(x: Dict[str, float], y: Dict[str, float]) -> float:
        return slope_through_zero(torch.tensor([x[k] for k in fit], dtype=torch.float64),
                                  torch.tensor([y[k] for k in fit], dtype=torch.float64))

    cnn_sum = {k: parts[k]["cnn"] for k in specs}
    rest_sum = {k: sum(parts[k].values()) - parts[k]["cnn"] for k in specs}
    cnn_scale = through_zero(cnn_sum, {k: measured["cnn:" + k] for k in specs})
    scale = through_zero(rest_sum, {k: measured[k] - measured["cnn:" + k] for k in specs})
    fitted = {k: cnn_scale * cnn_sum[k] + scale * rest_sum[k] for k in specs}
    dense_scale = measured["dense"] / fitted["dense"]
    if not DENSE_SCALE[0] <= dense_scale <= DENSE_SCALE[1]:
        logger.warning("calibration: the dense encoder measured %.1f ms, %.2f of the fit on the slim ones (%.1f ms), "
                       "expected %.2f-%.2f; clamped (was the machine busy? measure again on an idle machine)",
                       1000 * measured["dense"], dense_scale, 1000 * fitted["dense"], *DENSE_SCALE)
        dense_scale = min(max(dense_scale, DENSE_SCALE[0]), DENSE_SCALE[1])
    predicted = {**fitted, "dense": dense_scale * fitted["dense"]}
    for k in specs:
        if abs(predicted[k] / measured[k] - 1) > 0.1:
            logger.warning("calibration: %s measured %.1f ms, the fitted table predicts %.1f ms; was the machine busy? "
                           "(measure again on an idle machine)", k, 1000 * measured[k], 1000 * predicted[k])
    return {"scale": scale, "offset_s": 0.0, "cnn_scale": cnn_scale, "dense_scale": dense_scale,
            "models": {k: {"measured_s": measured[k], "cnn_measured_s": measured["cnn:" + k],
                           "sum_of_components_s": sum(parts[k].values()), "fitted_s": fitted[k],
                           "predicted_s": predicted[k]} for k in specs}}


def measure_tables(cfgs: Sequence[TableConfig], spec: Optional[EncoderSpec] = None, family: Optional[str] = None,
                   export_jobs: int = 1, export_dir: Optional[str] = None) -> Iterator[Dict]:
    """The tables (JSON-ready dicts), one per config, of ``cfgs[0].preset`` (or of the dense ``spec``, named
    ``family``: e.g. a checkpoint's encoder) on this machine: configs that differ only in backend, threads and
    dtype. Every probe and calibration encoder is exported to ONNX once (int8: quantised once), in
    ``export_jobs`` processes (into ``export_dir``, kept and reused, if given), before anything is timed
    (``graphs.exported``); then the tables are measured one
    after the other, each as :func:`measure_table` would alone (its own sessions and threads), and yielded when
    done. A table's ``measure_seconds`` counts its own timings, and the exports when it is an onnxruntime one."""
    if not cfgs:
        raise ValueError("no table to measure (expected at least one backend and thread count)")
    for cfg in cfgs:
        cfg.check()
    runs = [(c.backend, c.threads) for c in cfgs]
    if len(set(runs)) != len(runs):
        raise ValueError(f"backend and threads must differ between tables, got {runs}")
    shared = {"backend": "", "threads": 0, "dtype": ""}
    if any(replace(c, **shared) != replace(cfgs[0], **shared) for c in cfgs):
        raise ValueError("tables measured together must differ only in backend, threads and dtype")
    start = time.perf_counter()
    if spec is not None and spec.has_rel_pos:
        raise ValueError(f"{family}: latency tables do not model WavLM's relative position bias yet")
    cfg = cfgs[0]
    spec = spec or PRESETS[cfg.preset]
    backends = [Backend(c.backend, c.threads, c.dtype) for c in cfgs]  # refuses what cannot run, before any export
    components, axes = component_graphs(spec, cfg), axis_points(spec, cfg)
    specs, cal_graphs = calibration_graphs(spec, cfg)
    everything = [g for gs in components.values() for g in gs] + cal_graphs
    prepared = time.perf_counter() - start
    with exported(everything, [c.backend for c in cfgs], export_jobs, export_dir) as files:
        exports = time.perf_counter() - start - prepared
        for c, backend in zip(cfgs, backends):
            t_table = time.perf_counter()
            with fixed_threads(c.threads):
                table = {
                    "format": lt.FORMAT, "version": lt.VERSION, "machine": lt.machine_info(), "backend": c.backend,
                    "threads": c.threads, "dtype": c.dtype, "versions": backend.versions(), "seconds": c.seconds,
                    "frames": cost_model.frames_for(spec, c.seconds)[-1], "family": family or c.preset,
                    "spec": spec.to_dict(), "config": asdict(c), "components": {},
                }
                table["components"], table["calibration"] = time_table(backend, files, table, components, axes,
                                                                       specs, cal_graphs, c)
            export_s = exports if c.backend in ONNX_BACKENDS else 0.0
            table["measure_seconds"] = prepared + export_s + time.perf_counter() - t_table
            lt.from_dict(table, "<measured>")  # what is written loads
            yield table


def measure_table(cfg: TableConfig, spec: Optional[EncoderSpec] = None, family: Optional[str] = None,
                  export_jobs: int = 1) -> Dict:
    """The table (a JSON-ready dict) of ``cfg.preset`` (or of the dense ``spec``, named ``family``: e.g. a
    checkpoint's encoder) on this machine and ``cfg.backend`` (:func:`measure_tables`)."""
    return list(measure_tables([cfg], spec, family, export_jobs))[0]


def check_new(path: str, overwrite: bool) -> None:
    """Refuse an existing ``path`` without ``overwrite`` (one line)."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (expected a new file; pass --overwrite to replace it)")


def table_paths(out: str, backends: Sequence[str], threads: Sequence[int]) -> Dict[Tuple[str, int], str]:
    """The file of each (backend, threads) table: ``out`` with ``{backend}`` and ``{threads}`` filled in. When
    several backends (thread counts) are asked, ``out`` must hold ``{backend}`` (``{threads}``), so that no two
    tables share a file; ValueError (one line) otherwise, or for a value asked twice."""
    for name, values in (("--backend", backends), ("--threads", threads)):
        if len(set(values)) != len(values):
            raise ValueError(f"{name} {' '.join(map(str, values))}: a value is given twice (expected distinct values)")
    missing = [f"{{{n}}}" for n, v in (("backend", backends), ("threads", threads)) if len(v) > 1 and f"{{{n}}}" not in out]
    if missing:
        raise ValueError(f"OUT {out}: one table per backend and thread count needs {' and '.join(missing)} in OUT "
                         "(expected e.g. tables/w2v_{backend}_t{threads}.json)")
    try:
        return {(b, t): out.format(backend=b, threads=t) for b in backends for t in threads}
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"OUT {out}: expected no braces but the fields {{backend}} and {{threads}} ({e!r})") from e


def write_table(table: Dict, path: str, overwrite: bool = False) -> None:
    """Write ``table`` to ``path`` atomically; refuse an existing file without ``overwrite``."""
    check_new(path, overwrite)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")

    write_atomically(path, write)


def parse_fractions(text: str, name: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise ValueError(f"{name}: comma-separated fractions expected, got {text!r}") from e


def default_grids() -> Dict[str, Sequence[float]]:
    cfg = TableConfig()
    return {k: getattr(cfg, k) for k in ("conv_grid", "hidden_grid", "heads_grid", "dims_grid", "ffn_grid")}
