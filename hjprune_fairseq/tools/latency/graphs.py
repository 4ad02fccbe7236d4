"""What a latency measurement times, built once and exported once, and how each backend runs it.

A :class:`Graph` is a recipe for one module to time and its input (a probe of ``probes`` at one grid point, a
whole :class:`~.core.encoder.Wav2Vec2Encoder` of a spec with seeded weights, its CNN alone, or a checkpoint's
encoder): small and picklable, so that a worker process rebuilds the same module. For the onnxruntime backends
:func:`exported` writes every graph once as ONNX (fp32, by the exporter of ``hjprune-export --onnx``) and
quantises it once (int8, as ``--int8``) when an int8 backend is asked, in ``jobs`` worker processes (torch's
exporter is single-threaded Python), all before anything is timed, into a temporary folder removed afterwards.
Then a :class:`Backend` turns each graph into a call for ``tools.timing.median_times``: PyTorch eager (fp32,
CPU), an onnxruntime session with the backend's threads on the fp32 or int8 file, CUDA (fp16/bf16). Several
backends and thread counts thus time the same files, each with sessions of its own.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Collection, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from hjprune_manifests.audio import SAMPLE_RATE
from torch import nn

from ...core.encoder import ConvFeatureExtractor, Wav2Vec2Encoder
from ...core.latency_table import BACKENDS
from ...core.spec import EncoderSpec
from .probes import probe

logger = logging.getLogger(__name__)

Call = Callable[[int], object]
Files = Dict[str, Dict[str, str]]  # graph key -> {ONNX backend: its file}
ONNX_BACKENDS = ("onnxruntime", "onnxruntime_int8")
KINDS = ("probe", "encoder", "cnn", "checkpoint")
WHOLE = ("encoder", "checkpoint")  # exported as hjprune-export --onnx does (dynamic batch and samples)


def waveform(seconds: float, seed: int) -> torch.Tensor:
    """The random input (1, S) every whole encoder of a measurement is timed on."""
    return torch.randn(1, int(round(seconds * SAMPLE_RATE)), generator=torch.Generator().manual_seed(seed))


@dataclass
class Graph:
    """One module to time: ``kind`` ``probe`` (component ``component`` of ``spec``'s table at grid ``point``,
    ``probes.probe``), ``encoder`` (``spec``'s encoder), ``cnn`` (its CNN alone) or ``checkpoint`` (the encoder of
    the checkpoint ``checkpoint``); weights and input drawn from ``seed``; ``key`` names it (unique in a run)."""

    key: str
    kind: str
    spec: EncoderSpec
    seconds: float
    seed: int = 0
    component: str = ""
    point: Tuple[float, ...] = ()
    checkpoint: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"graph {self.key}: unknown kind {self.kind!r}, expected one of {KINDS}")

    def build(self) -> Tuple[nn.Module, Tuple[torch.Tensor, ...]]:
        """(module in eval mode, inputs); the same on every call."""
        if self.kind == "probe":
            return probe(self.spec, self.seconds, self.component, self.point, self.seed)
        wav = waveform(self.seconds, self.seed)
        if self.kind == "checkpoint":
            from ...plugin.checkpoints import load_model

            return load_model(self.checkpoint)[0].encoder.eval(), (wav,)
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random state left as it was
            torch.manual_seed(self.seed)
            if self.kind == "cnn":
                s = self.spec
                return ConvFeatureExtractor(s.conv_layers, s.conv_bias, s.extractor_mode).eval(), (wav,)
            return Wav2Vec2Encoder(self.spec).eval(), (wav,)

    def inputs(self) -> Tuple[torch.Tensor, ...]:
        if self.kind == "probe":
            return self.build()[1]
        return (waveform(self.seconds, self.seed),)

    def feed(self) -> Dict[str, np.ndarray]:
        """The inputs of its ONNX graph, by name (:meth:`export`)."""
        x = self.inputs()
        if self.kind in WHOLE:
            return {"source": x[0].numpy(), "padding_mask": np.zeros(tuple(x[0].shape), dtype=bool)}
        return {f"x{j}": v.numpy() for j, v in enumerate(x)}

    def export(self, fp32: str, int8: Optional[str] = None) -> None:
        """Write its ONNX graph to ``fp32`` (a whole encoder as ``hjprune-export --onnx``'s
        ``onnx_export.EncoderGraph``, a probe or CNN with its fixed input shapes) and, with ``int8``, quantise it
        there as ``--int8``."""
        from ...convert import onnx_export

        module, inputs = self.build()
        if self.kind in WHOLE:
            onnx_export.export_graph(onnx_export.EncoderGraph(module), fp32, self.key)
        else:
            onnx_export.export_fixed(module, inputs, list(self.feed()), fp32)
        if int8:
            onnx_export.quantize_int8(fp32, int8)


# ---- exports, once per graph, before any timing -------------------------------------------------------------
def _init_worker() -> None:
    torch.set_num_threads(1)  # the exporter is Python; one thread per worker keeps the workers off each other


def _export(graph: Graph, fp32: str, int8: Optional[str]) -> float:
    t0 = time.perf_counter()
    graph.export(fp32, int8)
    return time.perf_counter() - t0


def default_jobs() -> int:
    return os.cpu_count() or 1


@contextlib.contextmanager
def exported(graphs: Sequence[Graph], backends: Collection[str], jobs: int = 1) -> Iterator[Files]:
    """{graph key: {backend: file}}: each graph exported once when any of ``backends`` is an onnxruntime one, and
    quantised once when one is ``onnxruntime_int8``; ``jobs`` worker processes (1: in this process), every export
    done before the block runs; the files in a temporary folder this removes afterwards. No ONNX backend: {}."""
    wanted = [b for b in ONNX_BACKENDS if b in backends]
    if not wanted:
        yield {}
        return
    if jobs < 1:
        raise ValueError(f"--export-jobs must be at least 1, got {jobs}")
    keys = [g.key for g in graphs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"graph keys must be unique, got {keys}")
    with tempfile.TemporaryDirectory(prefix="hjprune-latency-") as folder:
        files: Files = {}
        tasks = []
        # whole encoders first: the longest exports, so that the workers end together
        for n, g in sorted(enumerate(graphs), key=lambda ng: ng[1].kind not in WHOLE):
            base = os.path.join(folder, f"g{n}")
            paths = {"onnxruntime": base + ".onnx", "onnxruntime_int8": base + "_int8.onnx"}
            files[g.key] = {b: paths[b] for b in wanted}
            tasks.append((g, paths["onnxruntime"], paths["onnxruntime_int8"] if "onnxruntime_int8" in wanted else None))
        start = time.perf_counter()
        what = "exported and quantised" if len(wanted) == 2 or wanted == ["onnxruntime_int8"] else "exported"

        def progress(done: int) -> None:
            if done == len(tasks) or done % max(1, len(tasks) // 10) == 0:
                logger.info("%s %d/%d graphs in %.0f s", what, done, len(tasks), time.perf_counter() - start)

        if jobs == 1 or len(tasks) == 1:
            for n, task in enumerate(tasks):
                _export(*task)
                progress(n + 1)
        else:
            # spawn: a fork of a process whose OpenMP threads already ran can hang in the child
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=ctx, initializer=_init_worker) as pool:
                pending = {pool.submit(_export, *task) for task in tasks}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    failed = [f for f in done if f.exception() is not None]
                    if failed:
                        for f in pending:
                            f.cancel()
                        failed[0].result()  # raises the worker's error
                    progress(len(tasks) - len(pending))
        yield files


# ---- backends -------------------------------------------------------------------------------------------------
class Backend:
    """Runs graphs on one backend (``core.latency_table.BACKENDS``) with ``threads`` fixed (torch's: the caller
    holds ``tools.timing.fixed_threads``; onnxruntime's: each session's)."""

    def __init__(self, name: str, threads: int, dtype: str = "float32"):
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}, expected one of {BACKENDS}")
        if name == "cuda" and not torch.cuda.is_available():
            raise ValueError("backend cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
        if name != "cuda" and dtype != "float32":
            raise ValueError(f"backend {name} runs float32, got dtype {dtype} (float16/bfloat16 are for cuda)")
        if name == "cuda" and dtype not in ("float16", "bfloat16"):
            raise ValueError(f"backend cuda runs float16 or bfloat16, got {dtype}")
        if name in ONNX_BACKENDS:
            from ...convert.onnx_export import import_onnx

            import_onnx()  # one line naming the extra, before anything is measured
        self.name, self.threads, self.dtype = name, threads, dtype

    def versions(self) -> dict:
        v = {"torch": torch.__version__}
        if self.name in ONNX_BACKENDS:
            import onnxruntime

            v["onnxruntime"] = onnxruntime.__version__
        if self.name == "cuda":
            v["cuda"] = torch.version.cuda
            v["gpu"] = torch.cuda.get_device_name()
        return v

    def call(self, graph: Graph, files: Files) -> Call:
        """A call running ``graph`` once (for median_times, under torch.inference_mode); an onnxruntime backend
        runs its file in ``files`` (:func:`exported`) in a session of its own."""
        if self.name in ONNX_BACKENDS:
            from ...convert import onnx_export

            sess = onnx_export.session(files[graph.key][self.name], self.threads, spinning=False)
            feed = graph.feed()
            return lambda i: sess.run(None, feed)
        module, inputs = graph.build()
        if self.name == "pytorch":
            return lambda i: module(*inputs)
        dtype = getattr(torch, self.dtype)
        module = module.to("cuda", dtype)
        inputs = [x.to("cuda", dtype if x.is_floating_point() else x.dtype) for x in inputs]

        def call(i: int):
            module(*inputs)
            torch.cuda.synchronize()
        return call

    def calls(self, graphs: Sequence[Graph], files: Files) -> Dict[str, Call]:
        return {g.key: self.call(g, files) for g in graphs}
