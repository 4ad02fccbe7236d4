"""hjprune-latency-table: measure, on this machine, the latency tables of an encoder family on one or more backends
and thread counts (``hjprune_fairseq.tools.latency.measure``), for ``criterion.latency_table``, ``hjprune-cost
--latency-table`` and ``hjprune-bench --latency-table``.

One table per (backend, threads): with several backends or thread counts OUT is a pattern holding ``{backend}``
and ``{threads}`` (``tables/w2v_{backend}_t{threads}.json``). For onnxruntime every graph is exported (and
quantised) once for all the tables, in ``--export-jobs`` processes, before anything is timed."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
from typing import List, Optional

from hjprune_manifests.cli import run_cli

from ..core.latency_table import BACKENDS
from ..core.presets import PRESETS
from ..tools.latency.graphs import EXPORT_DIR_HELP, default_jobs
from ..tools.latency.measure import TableConfig, check_new, measure_tables, parse_fractions, table_paths, write_table

PROG = "hjprune-latency-table"
GRIDS = ("conv_grid", "hidden_grid", "heads_grid", "dims_grid", "ffn_grid")


def main(argv: Optional[List[str]] = None) -> int:
    defaults = TableConfig()
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(TableConfig)}
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the table to write (JSON); with several backends or thread counts a pattern holding "
                               "{backend} and {threads}, e.g. tables/w2v_{backend}_t{threads}.json")
    p.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset, help=f"{helps['preset']} (default: %(default)s)")
    p.add_argument("--checkpoint", help="measure the family of this checkpoint's (dense) encoder instead of --preset")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, default=[defaults.backend],
                   help="one or more of: pytorch: eager CPU fp32; onnxruntime: the fp32 graph of hjprune-export --onnx; "
                        "onnxruntime_int8: the graph of hjprune-export --onnx --int8; cuda: a GPU in --dtype "
                        "(default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: float32, float16 on cuda")
    p.add_argument("--threads", nargs="+", type=int, default=[defaults.threads],
                   help=f"one or more: {helps['threads']} (default: %(default)s)")
    for name in ("seconds", "repeats", "warmup", "calibration", "seed"):
        p.add_argument(f"--{name}", type=type(getattr(defaults, name)), default=getattr(defaults, name),
                       help=f"{helps[name]} (default: %(default)s)")
    for name in GRIDS:
        p.add_argument(f"--{name.replace('_', '-')}", default=",".join(f"{v:g}" for v in getattr(defaults, name)),
                       help=f"{helps[name]}: comma-separated fractions of the dense size (default: %(default)s)")
    p.add_argument("--export-jobs", type=int, default=default_jobs(),
                   help="processes exporting the ONNX graphs, before anything is timed (default: the cores, %(default)s)")
    p.add_argument("--export-dir", help=EXPORT_DIR_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace existing tables")
    a = p.parse_args(argv)
    progress = logging.getLogger("hjprune_fairseq.tools.latency")  # its progress, not the exporter's
    progress.setLevel(logging.INFO)
    progress.addHandler(logging.StreamHandler())
    progress.propagate = False  # once: the ONNX exporter configures the root logger too

    def go() -> int:
        paths = table_paths(a.out, a.backend, a.threads)
        if a.export_jobs < 1:
            raise ValueError(f"--export-jobs must be at least 1, got {a.export_jobs}")
        grids = {n: parse_fractions(getattr(a, n), "--" + n.replace("_", "-")) for n in GRIDS}
        cfgs = [TableConfig(preset=a.preset, seconds=a.seconds, backend=b, threads=t,
                            dtype=a.dtype or ("float16" if b == "cuda" else "float32"), repeats=a.repeats,
                            warmup=a.warmup, calibration=a.calibration, seed=a.seed, **grids) for b, t in paths]
        for cfg in cfgs:
            cfg.check()
        for path in paths.values():
            check_new(path, a.overwrite)  # before minutes of measuring
        spec = None
        if a.checkpoint:
            from ..plugin.fairseq_import import read_checkpoint

            spec = read_checkpoint(a.checkpoint).spec
        for table in measure_tables(cfgs, spec, a.checkpoint, a.export_jobs, a.export_dir):
            out = paths[(table["backend"], table["threads"])]
            write_table(table, out, overwrite=True)
            models = table["calibration"]["models"]
            slim = [100 * abs(m["predicted_s"] / m["measured_s"] - 1) for k, m in models.items() if k != "dense"]
            fit = (f"; {len(slim)} random slim encoders predicted within {statistics.median(slim):.1f} % (median), "
                   f"{max(slim):.1f} % (worst)") if slim else ""
            print(f"{out}: {table['family']} on {table['backend']} ({table['dtype']}, {table['threads']} threads, "
                  f"{a.seconds:g} s): dense measured {1000 * models['dense']['measured_s']:.1f} ms{fit}; measured in "
                  f"{table['measure_seconds']:.0f} s", flush=True)
        return 0

    return run_cli(PROG, go, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
