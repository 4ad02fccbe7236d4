"""hjprune-demo: the whole HJ-Pruning story on a synthetic corpus, on CPU, with a report.

The stages (hjprune-synth -> pre-train -> fine-tune -> prune with ``macs`` -> hjprune-export ->
fine-tune the slim model -> fairseq-generate -> CPU latency; ``--sweep``: every sparsity mode at three
budgets, one budget-ladder run per mode; ``--baselines``: PARP and task-agnostic pruning) are
``hjprune_fairseq.tools.demo.pipeline``, each stage's output in OUT/logs/STAGE.log; report.md, report.json and the PNG plots are
``hjprune_fairseq.tools.demo.report``.
"""

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from hjprune_manifests import output_dir
from hjprune_manifests.cli import run_cli

from ..tools.demo.pipeline import FULL, QUICK, TOOL, Demo, faster_precision
from ..tools.demo.report import write_report
from .progress import progress_lines

PROG = "hjprune-demo"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["asr", "slu"], default="asr", help="speech recognition or intent classification")
    p.add_argument("--out", help="output folder (default: demo_out/TASK)")
    p.add_argument("--quick", action="store_true", help="tiny budgets (a test run, minutes)")
    p.add_argument("--sweep", action="store_true",
                   help="also prune with every mode at three budgets (paper Fig. 1): one budget-ladder run per mode, "
                        "each rung then exported, fine-tuned and decoded")
    p.add_argument("--baselines", action="store_true",
                   help="also PARP (unstructured, at macs_40's parameter count) and task-agnostic pruning by distillation")
    p.add_argument("--jobs", type=int, default=2,
                   help="--sweep / --baselines: runs (ladders, rungs' fine-tunes, baselines) trained at once, "
                        "each with cores/jobs threads")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in the folder")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="precision of the fine-tuning and pruning stages (pre-training stays fp32); auto: bf16 "
                        "where a quick measurement on this CPU finds it at least 10%% faster (default: auto)")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be at least 1, got {a.jobs}")
    from hjprune_manifests.synth import TOOL as SYNTH

    out = os.path.abspath(a.out or os.path.join("demo_out", a.task))

    def claim() -> int:  # before anything is written: OUT new, empty, or only an earlier demo's output (its marker)
        output_dir.check(out, TOOL, a.overwrite, "results")
        output_dir.check(os.path.join(out, "data"), SYNTH, True)  # the corpus, replaced by Demo.synthesise
        output_dir.claim(out, TOOL, a.overwrite, "results")
        return 0

    budget = QUICK if a.quick else FULL

    def run() -> int:  # each entry of OUT is recorded in its marker before it is written (Demo.own)
        t0 = time.time()
        with progress_lines("hjprune_fairseq.tools.demo", sys.stdout):
            precision = faster_precision() if a.precision == "auto" else {"precision": a.precision}
            print(f"training precision: {precision['precision']}" + (
                f" (a bf16 step measured {precision['bf16_speedup']}x as fast as fp32 here)" if "bf16_speedup" in precision else ""),
                flush=True)  # before the stages' progress lines
            demo = Demo(out, a.task, budget, precision=precision["precision"])
            result = demo.pipeline()
            result["precision"] = precision
            if a.sweep:
                demo.sweep(result, a.jobs)
            if a.baselines:
                demo.baselines(result, a.jobs)
            demo.time_models(result["models"])
            write_report(out, a.task, result, demo.timings, budget)
        print(f"report: {os.path.join(out, 'report.md')} ({time.time() - t0:.0f} s in all)")
        return 0

    refused = run_cli(PROG, claim, (ValueError, FileExistsError))
    if refused:
        return refused
    return run_cli(PROG, run, (RuntimeError, ValueError, FileExistsError, FileNotFoundError), status=1)


if __name__ == "__main__":
    sys.exit(main())
