"""hjprune-latency-bench: what a latency table predicts (``predict``), what pruning to it gives (``target``), and
checkpoints timed against its prediction (``compare``);
``hjprune_fairseq.tools.latency.bench``. Every encoder is timed on the table's backend, threads and input length.

``predict`` takes several tables of one family and input length (e.g. one per backend and thread count): the
same random shapes, each exported to ONNX once (and quantised once) for all of them, then timed one table at a
time; it prints each table's statistics and one JSON list of the per-table results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from hjprune_manifests.cli import run_cli

from ..core import latency_table as lt
from ..tools.latency import bench
from ..tools.latency.bench import PREDICTORS
from ..tools.latency.graphs import EXPORT_DIR_HELP, default_jobs

PROG = "hjprune-latency-bench"


def format_predict(r: Dict) -> str:
    d = r["dense"]
    a = r["anchor"]
    lines = [f"{r['table']}: {r['all']['shapes']} random slim shapes, median of {r['repeats']}; the dense encoder "
             f"measured {d['measured_ms']:.2f} ms in the same turns, {d['table_ms']:.2f} ms in the table; its "
             f"anchors ({', '.join(a['encoders'])}) ran {a['factor']:.3f}x its prediction here",
             f"{'shape':<10} {'GMACs':>7} {'measured ms':>12} {'table ms':>9} {'anchored ms':>12} {'MACs fit ms':>12}"]
    lines += [f"{s['shape']:<10} {s['gmacs']:>7.2f} {s['measured_ms']:>12.2f} {s['table_ms']:>9.2f} "
              f"{s['anchored_ms']:>12.2f} {s['macs_fit_ms']:>12.2f}" for s in r["shapes"]]
    lines += ["", f"{'shapes':<12} {'predictor':<10} {'median |err| %':>15} {'worst |err| %':>14}"]
    for name, st in [("all", r["all"])] + list(r["by_kind"].items()):
        for pred in PREDICTORS:
            e = st[pred]
            lines.append(f"{name:<12} {pred:<10} {e['median_abs_pct']:>15.1f} {e['worst_abs_pct']:>14.1f}")
    lines += ["", "table: the table's milliseconds; anchored: times how much slower its anchors (its own calibration "
                  "encoders) ran here than it predicts them (the machine's drift since the table); macs_fit: a * GMACs "
                  "+ b fitted on these timings"]
    return "\n".join(lines)


def format_target(r: Dict) -> str:
    lines = [f"{r['table']}: goal {100 * r['goal']:.0f} % less predicted latency, constraint alone, {r['steps']} updates",
             f"{'model':<8} {'GMACs':>7} {'pred ms':>8} {'meas ms':>8} {'pred red.':>10} {'meas red.':>10} {'MACs red.':>10}"]
    for k in ("dense", "latency", "macs"):
        m = r[k]
        lines.append(f"{k:<8} {m['gmacs']:>7.2f} {m['predicted_ms']:>8.1f} {m['measured_ms']:>8.1f} "
                     f"{100 * m['predicted_reduction']:>9.1f}% {100 * m['measured_reduction']:>9.1f}% "
                     f"{100 * m['macs_reduction']:>9.1f}%")
    for k in ("latency", "macs"):
        m = r[k]
        lines.append(f"{k} shape: conv {m['conv_channels']} heads {m['heads']} ffn {m['ffn_units']} hidden {m['hidden']}")
    lines.append(f"latency model within 3 points of the goal: {'yes' if r['latency_within_3_points'] else 'NO'}")
    return "\n".join(lines)


def format_compare(r: Dict) -> str:
    lines = [f"{r['table']}: {r['repeats']} timed runs each, in turns",
             f"{'checkpoint':<40} {'GMACs':>6} {'median ms':>10} {'q1-q3 ms':>16} {'min-max ms':>16} {'pred ms':>8} "
             f"{'speed-up':>9} {'predicted':>9}"]
    for m in r["models"]:
        lines.append(f"{m['checkpoint'][-40:]:<40} {m['gmacs']:>6.2f} {m['median_ms']:>10.2f} "
                     f"{m['q1_ms']:>7.2f}-{m['q3_ms']:<8.2f} {m['min_ms']:>7.2f}-{m['max_ms']:<8.2f} "
                     f"{m['predicted_ms']:>8.2f} {m['measured_speedup']:>8.2f}x {m['predicted_speedup']:>8.2f}x")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="predicted against measured latency on random slim shapes, beside the best "
                                        "fitted latency = a * MACs + b; several tables of one family and input "
                                        "length: the same shapes, each exported once")
    pr.add_argument("tables", nargs="+", metavar="table", help="latency tables (hjprune-latency-table)")
    pr.add_argument("--shapes", type=int, default=30, help="random slim shapes, half of them fine-grained (default: 30)")
    tg = sub.add_parser("target", help="prune to --target less predicted latency with the constraint alone, and with "
                                       "mode=macs at the same predicted latency; time both against the dense encoder")
    tg.add_argument("table", help="a latency table (hjprune-latency-table)")
    tg.add_argument("--target", type=float, default=0.4, help="fraction of predicted latency removed (default: 0.4)")
    tg.add_argument("--steps", type=int, default=300,
                    help="updates of the gates per run (default: 300; the macs model takes up to 3 runs)")
    cp = sub.add_parser("compare", help="checkpoints (the first is the reference) timed in turns on the table's "
                                         "backend, with the spread of the timings, beside their predicted latency")
    cp.add_argument("table", help="a latency table (hjprune-latency-table)")
    cp.add_argument("checkpoints", nargs="+", help="hjprune checkpoints (gated ones with their masks: export them first)")
    for q in (pr, tg, cp):
        q.add_argument("--repeats", type=int, default=5, help="timed runs per encoder; the median is kept (default: 5)")
        q.add_argument("--warmup", type=int, default=1, help="untimed runs per encoder first (default: 1)")
        q.add_argument("--seed", type=int, default=0, help="seed of shapes, weights and input (default: 0)")
        q.add_argument("--export-jobs", type=int, default=default_jobs(),
                       help="processes exporting the ONNX graphs, before anything is timed (default: the cores, "
                            "%(default)s)")
        q.add_argument("--export-dir", help=EXPORT_DIR_HELP)
        q.add_argument("--json", action="store_true", help="print JSON only")
    a = p.parse_args(argv)

    def go() -> int:
        if a.export_jobs < 1:
            raise ValueError(f"--export-jobs must be at least 1, got {a.export_jobs}")
        if a.command == "predict":
            if a.shapes < 2:
                raise ValueError(f"--shapes must be at least 2 (a line is fitted), got {a.shapes}")
            tables = [lt.load(path) for path in a.tables]
            results = bench.predict(tables, a.shapes, a.repeats, a.warmup, a.seed, a.export_jobs, a.export_dir)
            if a.json:
                print(json.dumps(results, indent=1))
            else:
                print("\n\n".join(format_predict(r) for r in results) + "\n\n"
                      + json.dumps([{k: v for k, v in r.items() if k != "shapes"} for r in results]))
            return 0
        table = lt.load(a.table)
        if a.command == "compare":
            r = bench.compare(table, a.checkpoints, a.repeats, a.warmup, a.seed, a.export_jobs, a.export_dir)
            text = format_compare(r)
        else:
            if not 0 < a.target < 1:
                raise ValueError(f"--target must be in (0, 1), got {a.target}")
            r = bench.target(table, a.target, a.steps, a.repeats, a.warmup, seed=a.seed, export_jobs=a.export_jobs,
                             export_dir=a.export_dir)
            text = format_target(r)
        print(json.dumps(r, indent=1) if a.json else text + "\n\n" + json.dumps({k: v for k, v in r.items() if k != "shapes"}))
        return 0

    return run_cli(PROG, go, (ValueError, FileNotFoundError, NotADirectoryError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
