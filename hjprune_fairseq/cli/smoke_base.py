"""hjprune-smoke-base: every shipped base-scale config runs, on CPU, for a few updates.

The chain of each config set (finetune -> prune in every mode -> hjprune-export -> final, distill,
parp) from random wav2vec2-base / HuBERT-base checkpoints on a small eSpeak NG corpus is
``hjprune_fairseq.tools.smoke_base``. The configs' fp16 is replaced by ``--precision`` (bf16 by default);
PARP runs in fp32. Prints a table: config, seconds per update (between the last two updates), peak
RSS of the training process, and whether every logged loss was finite.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from hjprune_manifests.cli import run_cli

from ..tools.smoke_base import CONFIG_SETS, run_smoke
from .progress import progress_lines

PROG = "hjprune-smoke-base"


def format_table(rows: List[Dict]) -> str:
    lines = [f"{'config':<32} {'precision':>9} {'s/update':>9} {'peak RSS MiB':>13} {'finite loss':>12} {'exit':>5}"]
    lines += [f"{r['config']:<32} {r['precision']:>9} {r['s_per_update']:>9.2f} {r['peak_rss_mib']:>13.0f} "
              f"{'yes' if r['finite_loss'] else 'NO':>12} {r['rc']:>5}" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=3, help="updates per config (at least 2; default: 3)")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="replaces the configs' fp16 on CPU (default: bf16)")
    p.add_argument("--sets", nargs="+", choices=list(CONFIG_SETS), default=list(CONFIG_SETS),
                   help="config sets to run (default: both)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.updates < 2:
        p.error(f"--updates must be at least 2, got {a.updates}")

    def go() -> int:
        with progress_lines("hjprune_fairseq.tools.smoke_base", sys.stderr):
            rows = run_smoke(a.updates, a.precision, a.sets)
        print(json.dumps(rows, indent=2) if a.json else format_table(rows))
        return 0 if all(r["rc"] == 0 and r["finite_loss"] for r in rows) else 1

    return run_cli(PROG, go, (RuntimeError,), status=1)


if __name__ == "__main__":
    sys.exit(main())
