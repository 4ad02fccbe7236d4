"""What a latency measurement times, built once and exported once, and how each backend runs it.

A :class:`Graph` is a recipe for one module to time and its input (a probe of ``probes`` at one grid point, a
whole :class:`~.core.encoder.Wav2Vec2Encoder` of a spec with seeded weights, its CNN alone, or a checkpoint's
encoder): small and picklable, so that a worker process rebuilds the same module. For the onnxruntime backends
:func:`exported` writes every graph once as ONNX (fp32, by the exporter of ``hjprune-export --onnx``) and
quantises it once (int8, as ``--int8``) when an int8 backend is asked, in ``jobs`` worker processes (torch's
exporter is single-threaded Python), all before anything is timed, into a temporary folder removed afterwards, or
into a folder the user names (``--export-dir``), kept, where a graph exported before by the same recipe is reused
(a whole wav2vec2-base encoder with fine-grained heads takes minutes to export).
Then a :class:`Backend` turns each graph into a call for ``tools.timing.median_times``: PyTorch eager (fp32,
CPU), an onnxruntime session with the backend's threads on the fp32 or int8 file, CUDA (fp16/bf16). Several
backends and thread counts thus time the same files, each with sessions of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
EXPORT_DIR_HELP = ("a folder to keep the ONNX graphs in (made if missing) and to reuse them from in later runs "
                   "(a graph whose file is there is not exported again); default: a temporary folder, removed afterwards")
EXPORT_FORMAT = 1  # of the files in a kept export folder (Graph.digest): raise it when a recipe's module changes


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

    def digest(self) -> str:
        """What names its exported file in a kept export folder: a hash of the recipe (and of the checkpoint file's
        size and time), the package's and torch's versions (their exporters and modules)."""
        from ... import __version__

        what = {"format": EXPORT_FORMAT, "hjprune": __version__, "torch": torch.__version__, "kind": self.kind,
                "spec": self.spec.to_dict(), "seconds": self.seconds, "seed": self.seed, "component": self.component,
                "point": [float(v) for v in self.point]}
        if self.kind == "checkpoint":
            st = os.stat(self.checkpoint)
            what["checkpoint"] = [os.path.abspath(self.checkpoint), st.st_size, st.st_mtime_ns]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]

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


def _export(graph: Graph, fp32: str, export: bool, int8: Optional[str], atomic: bool = False) -> float:
    """Export ``graph`` to ``fp32`` when ``export`` (else it is there) and quantise that to ``int8`` when given;
    ``atomic``: each through a temporary name renamed into place, so that an interrupted export leaves no file that
    a later run would reuse (for a kept folder)."""
    t0 = time.perf_counter()
    tmp32, tmp8 = (f"{fp32}.{os.getpid()}.tmp.onnx", f"{fp32}.{os.getpid()}.tmp_int8.onnx") if atomic else (fp32, int8)
    try:
        if export:
            graph.export(tmp32)
        if int8:
            from ...convert import onnx_export

            onnx_export.quantize_int8(tmp32 if export else fp32, tmp8)
            os.replace(tmp8, int8)
        if export:
            os.replace(tmp32, fp32)
    finally:
        for t in {tmp32, tmp8} - {fp32, int8}:
            if os.path.exists(t):
                os.remove(t)
    return time.perf_counter() - t0


def default_jobs() -> int:
    return os.cpu_count() or 1


@contextlib.contextmanager
def exported(graphs: Sequence[Graph], backends: Collection[str], jobs: int = 1,
             folder: Optional[str] = None) -> Iterator[Files]:
    """{graph key: {backend: file}}: each graph exported once when any of ``backends`` is an onnxruntime one, and
    quantised once when one is ``onnxruntime_int8``; ``jobs`` worker processes (1: in this process), every export
    done before the block runs. The files go to a temporary folder this removes afterwards, or with ``folder`` to
    that folder (made if missing), named by :meth:`Graph.digest`, kept, and reused by later runs: a graph whose
    file is there is not exported again (nothing there is replaced or removed). No ONNX backend: {}."""
    wanted = [b for b in ONNX_BACKENDS if b in backends]
    if not wanted:
        yield {}
        return
    if jobs < 1:
        raise ValueError(f"--export-jobs must be at least 1, got {jobs}")
    keys = [g.key for g in graphs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"graph keys must be unique, got {keys}")
    with contextlib.ExitStack() as stack:
        keep = folder is not None
        if not keep:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="hjprune-latency-"))
            names = [f"g{n}" for n in range(len(graphs))]
        else:
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise NotADirectoryError(f"--export-dir {folder}: not a folder (expected a folder for ONNX graphs)")
            os.makedirs(folder, exist_ok=True)
            names = [g.digest() for g in graphs]
        files: Files = {}
        tasks, reused = [], 0
        # whole encoders first: the longest exports, so that the workers end together
        for n, g in sorted(enumerate(graphs), key=lambda ng: ng[1].kind not in WHOLE):
            base = os.path.join(folder, names[n])
            paths = {"onnxruntime": base + ".onnx", "onnxruntime_int8": base + "_int8.onnx"}
            files[g.key] = {b: paths[b] for b in wanted}
            export = not os.path.exists(paths["onnxruntime"])
            int8 = paths["onnxruntime_int8"] if "onnxruntime_int8" in wanted else None
            if int8 and os.path.exists(int8):
                int8 = None
            if export or int8:
                tasks.append((g, paths["onnxruntime"], export, int8, keep))
            else:
                reused += 1
        if reused:
            logger.info("reused %d exported graphs of %s", reused, folder)
        start = time.perf_counter()
        what = "exported and quantised" if "onnxruntime_int8" in wanted else "exported"

        def progress(done: int) -> None:
            if done == len(tasks) or done % max(1, len(tasks) // 10) == 0:
                logger.info("%s %d/%d graphs in %.0f s", what, done, len(tasks), time.perf_counter() - start)

        if jobs == 1 or len(tasks) <= 1:
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
