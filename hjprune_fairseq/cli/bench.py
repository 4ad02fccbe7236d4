"""hjprune-bench: CPU latency of a dense encoder vs a slim one with ``--macs-sparsity`` fewer MACs (within 0.5 points;
``--align N``: also an aligned one at the same MACs).

The comparison is ``hjprune_fairseq.tools.bench.latency`` (the slim structure follows paper Fig. 5; the
models are timed alternately in one process).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from hjprune_manifests.cli import run_cli

from ..core import latency_table
from ..core.presets import PRESETS
from ..tools.bench.latency import GOAL, ONNX_GOAL, compare_latency
from ..tools.timing import apply_threads
from .options import add_timing_args


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-bench",
        description="Time a dense encoder against a slim one with about --macs-sparsity fewer MACs (HJ-Pruning "
                    "Fig. 5 pattern), on CPU, side by side in one run. Prints latencies, the speed-up and the "
                    "MAC ratio; the goal is speed-up >= 0.85 x MAC ratio.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="wav2vec2_base", help="architecture (default: wav2vec2_base)")
    p.add_argument("--seconds", type=float, default=10.0, help="input length in seconds (default: 10)")
    p.add_argument("--macs-sparsity", type=float, default=0.5, help="fraction of MACs the slim model drops (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, input and which units are pruned")
    p.add_argument("--fine-grained", action="store_true",
                   help="also time a third model at the same MACs sparsity whose attention loses query/key and "
                        "value/output dims inside every head instead of whole heads (task-agnostic pruning)")
    p.add_argument("--align", type=int, default=1, metavar="N",
                   help="also time a model of the same pattern at the same MACs sparsity whose kept CNN channels, FFN "
                        "units and hidden dims per layer are multiples of N (hjprune-export --align N), beside the "
                        "unaligned one")
    p.add_argument("--onnx", action="store_true",
                   help=f"also time the models in onnxruntime (exported to ONNX; the slim one also int8) in the "
                        f"same run; goal there: speed-up >= {ONNX_GOAL} x MAC ratio (needs the onnx extra)")
    p.add_argument("--latency-table", action="append", default=[], metavar="TABLE",
                   help="a latency table (hjprune-latency-table): print its predicted latency beside the measured one of "
                        "every model timed; repeat it for one table per backend (pytorch, onnxruntime, onnxruntime_int8)")
    add_timing_args(p, "runs")
    a = p.parse_args(argv)
    if not 0.0 < a.macs_sparsity < 1.0:
        p.error(f"--macs-sparsity must be in (0, 1), got {a.macs_sparsity}")
    if a.align < 1:
        p.error(f"--align must be a positive number of units, got {a.align}")
    apply_threads(a.threads)
    if a.onnx:
        from ..convert.onnx_export import import_onnx

        import_onnx()  # a one-line error without the extra, before the models are built
    try:
        tables = [latency_table.load(t) for t in a.latency_table]
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    found: Dict[str, Any] = {}

    def measure() -> int:
        found["r"] = compare_latency(a.preset, a.macs_sparsity, a.seconds, a.seed, a.fine_grained, a.repeats,
                                     a.warmup, a.onnx, a.align, tables)
        return 0

    if run_cli("hjprune-bench", measure, (ValueError,)):  # a budget the pattern cannot reach: refused in one line
        return 2
    r = found["r"]
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{a.preset}, {a.seconds:g} s input, {r['threads']} threads, median of {a.repeats}")
        print(f"{'model':<6} {'GMACs':>8} {'params':>12} {'latency s':>10}")
        print(f"{'dense':<6} {r['dense_gmacs']:>8.2f} {r['dense_params']:>12,} {r['dense_latency_s']:>10.3f}")
        print(f"{'slim':<6} {r['slim_gmacs']:>8.2f} {r['slim_params']:>12,} {r['slim_latency_s']:>10.3f}")
        print(f"speed-up {r['speedup']:.2f}x, MAC ratio {r['mac_ratio']:.2f}x, speed-up / MAC ratio "
              f"{r['speedup_over_mac_ratio']:.2f} (goal >= {GOAL}: {'met' if r['goal_met'] else 'NOT met'})")
        if a.fine_grained:
            f = r["fine_grained"]
            print(f"fine-grained attention (thin heads): {f['gmacs']:.2f} GMACs, {f['params']:,} params, {f['latency_s']:.3f} s")
            print(f"  speed-up {f['speedup']:.2f}x, MAC ratio {f['mac_ratio']:.2f}x, speed-up / MAC ratio "
                  f"{f['speedup_over_mac_ratio']:.2f} (goal >= {GOAL}: {'met' if f['goal_met'] else 'NOT met'})")
            print(f"  {f['speedup_vs_whole_heads']:.2f}x the whole-head slim model's speed; attention calls per layer "
                  f"{f['attention_calls']}")
        if a.align > 1:
            al = r["aligned"]
            print(f"aligned to {a.align}: {al['gmacs']:.2f} GMACs, {al['params']:,} params, {al['latency_s']:.3f} s; "
                  f"speed-up {al['speedup']:.2f}x, MAC ratio {al['mac_ratio']:.2f}x, "
                  f"{al['speedup_vs_unaligned']:.2f}x the unaligned slim model's speed")
        if a.onnx:
            o = r["onnx"]
            print(f"\n{'runtime':<24} {'dense s':>8} {'slim s':>8} {'speed-up':>9} {'/ MAC ratio':>12}")
            rows = [("PyTorch", r["dense_latency_s"], r["slim_latency_s"], r["speedup"], r["speedup_over_mac_ratio"]),
                    (f"onnxruntime {o['onnxruntime']}", o["dense_latency_s"], o["slim_latency_s"], o["speedup"],
                     o["speedup_over_mac_ratio"]),
                    ("onnxruntime, slim int8", o["dense_latency_s"], o["slim_int8_latency_s"], o["int8_speedup"],
                     o["int8_speedup_over_mac_ratio"])]
            if a.align > 1:
                al = r["aligned"]
                rows[1:1] = [(f"PyTorch, aligned to {a.align}", r["dense_latency_s"], al["latency_s"], al["speedup"],
                              al["speedup_over_mac_ratio"])]
                rows.append((f"onnxruntime, aligned {a.align}", o["dense_latency_s"], o["aligned_latency_s"],
                             o["aligned_speedup"], o["aligned_speedup_over_mac_ratio"]))
            if a.fine_grained:
                f = r["fine_grained"]
                rows[1:1] = [("PyTorch, thin heads", r["dense_latency_s"], f["latency_s"], f["speedup"],
                              f["speedup_over_mac_ratio"])]
                rows.append(("onnxruntime, thin heads", o["dense_latency_s"], o["fine_grained_latency_s"],
                             o["fine_grained_speedup"], o["fine_grained_speedup_over_mac_ratio"]))
            for name, d, s, up, per_mac in rows:
                print(f"{name:<24} {d:>8.3f} {s:>8.3f} {up:>8.2f}x {per_mac:>12.2f}")
            print(f"onnxruntime goal speed-up / MAC ratio >= {ONNX_GOAL}: {'met' if o['goal_met'] else 'NOT met'}; "
                  f"int8 slim {o['int8_vs_fp32_slim']:.2f}x the fp32 slim graph's speed, relative error "
                  f"{o['int8_rel_error']:.3f}; fp32 slim graph within {o['slim_max_abs_diff']:.1e} of PyTorch")
        if tables:
            print(f"\n{'timed model':<22} {'measured s':>10} {'predicted s':>11} {'error':>7}  table")
            for k, v in r["predicted"].items():
                err = 100 * (v["predicted_s"] - v["measured_s"]) / v["measured_s"]
                print(f"{k:<22} {v['measured_s']:>10.3f} {v['predicted_s']:>11.3f} {err:>6.1f}%  {v['table']}"
                      + (f" (WARNING: {v['foreign']})" if v["foreign"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
