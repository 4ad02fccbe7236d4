"""hjprune-bench-train: cost of one pruning update vs one stock fairseq wav2vec_ctc update (WavLM, which
fairseq lacks: the same encoder without gates), same batch.

The comparison is ``hjprune_fairseq.tools.bench.train_update`` (forward, backward and optimizer step of
each, alternately, from the same random checkpoint of ``--preset``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ..core.presets import PRESETS
from ..tools.bench.train_update import GOAL, compare_updates
from ..tools.timing import apply_threads
from .options import add_timing_args


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-bench-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="architecture (default: tiny)")
    p.add_argument("--mode", choices=["size", "sep_size", "macs"], default="macs",
                   help="sparsity mode of the pruning update, all four gate groups on (default: macs)")
    p.add_argument("--batch-size", type=int, default=4, help="utterances per batch (default: 4)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each utterance (default: 4)")
    add_timing_args(p, "updates")
    a = p.parse_args(argv)
    apply_threads(a.threads)
    r = compare_updates(a.preset, a.mode, a.batch_size, a.seconds, a.repeats, a.warmup)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{a.preset}, {a.batch_size} x {a.seconds:g} s, {r['threads']} threads, median of {a.repeats}")
        print(f"stock wav2vec_ctc update {r['stock_update_s']:.3f} s   pruning update ({a.mode}) {r['prune_update_s']:.3f} s")
        print(f"ratio {r['ratio']:.3f} (goal <= {GOAL}: {'met' if r['goal_met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
