"""hjprune-latency-table: measure, on this machine, the latency table of an encoder family on one backend
(``hjprune_fairseq.tools.latency.measure``), for ``criterion.latency_table``, ``hjprune-cost --latency-table`` and
``hjprune-bench --latency-table``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import List, Optional

from hjprune_manifests.cli import run_cli

from ..core.latency_table import BACKENDS
from ..core.presets import PRESETS
from ..tools.latency.measure import TableConfig, check_new, measure_table, parse_fractions, write_table

PROG = "hjprune-latency-table"
GRIDS = ("conv_grid", "hidden_grid", "heads_grid", "dims_grid", "ffn_grid")


def main(argv: Optional[List[str]] = None) -> int:
    defaults = TableConfig()
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(TableConfig)}
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the table to write (JSON)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset, help=f"{helps['preset']} (default: %(default)s)")
    p.add_argument("--checkpoint", help="measure the family of this checkpoint's (dense) encoder instead of --preset")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="pytorch: eager CPU fp32; onnxruntime: the fp32 graph of hjprune-export --onnx; onnxruntime_int8: "
                        "the graph of hjprune-export --onnx --int8; cuda: a GPU in --dtype (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: float32, float16 on cuda")
    for name in ("seconds", "threads", "repeats", "warmup", "calibration", "seed"):
        p.add_argument(f"--{name}", type=type(getattr(defaults, name)), default=getattr(defaults, name),
                       help=f"{helps[name]} (default: %(default)s)")
    for name in GRIDS:
        p.add_argument(f"--{name.replace('_', '-')}", default=",".join(f"{v:g}" for v in getattr(defaults, name)),
                       help=f"{helps[name]}: comma-separated fractions of the dense size (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    a = p.parse_args(argv)
    progress = logging.getLogger("hjprune_fairseq.tools.latency")  # its progress, not the exporter's
    progress.setLevel(logging.INFO)
    progress.addHandler(logging.StreamHandler())
    progress.propagate = False  # once: the ONNX exporter configures the root logger too

    def go() -> int:
        dtype = a.dtype or ("float16" if a.backend == "cuda" else "float32")
        cfg = TableConfig(preset=a.preset, seconds=a.seconds, backend=a.backend, threads=a.threads, dtype=dtype,
                          repeats=a.repeats, warmup=a.warmup, calibration=a.calibration, seed=a.seed,
                          **{n: parse_fractions(getattr(a, n), "--" + n.replace("_", "-")) for n in GRIDS})
        cfg.check()
        check_new(a.out, a.overwrite)  # before minutes of measuring
        spec = None
        if a.checkpoint:
            from ..plugin.fairseq_import import read_checkpoint

            spec = read_checkpoint(a.checkpoint).spec
        table = measure_table(cfg, spec, a.checkpoint)
        write_table(table, a.out, overwrite=True)
        cal = table["calibration"]["models"]["dense"]
        print(f"{a.out}: {table['family']} on {a.backend} ({dtype}, {a.threads} threads, {a.seconds:g} s): dense measured "
              f"{1000 * cal['measured_s']:.1f} ms, predicted {1000 * cal['predicted_s']:.1f} ms; measured in "
              f"{table['measure_seconds']:.0f} s")
        return 0

    return run_cli(PROG, go, (ValueError, FileNotFoundError, FileExistsError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
