"""hjprune-export: physically remove the pruned units of a gated checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from hjprune_manifests.cli import USER_ERRORS, run_cli


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-export",
        description="Turn a gated checkpoint (hjprune_wav2vec_ctc, _cls or _distill) into its slim model "
                    "(hjprune_slim_ctc, _cls or _distill): every unit dropped by the deterministic gate masks "
                    "(conv channels, heads, query/key and value/output dims of heads, FFN units, hidden dims) is "
                    "removed from the weights. The result loads with fairseq's checkpoint_utils, "
                    "fairseq-generate, and as model.w2v_path of a fine-tuning stage.",
    )
    p.add_argument("gated", help="gated checkpoint: the prune stage's checkpoint_last.pt (checkpoint_best.pt is from before the target was reached)")
    p.add_argument("slim", help="output path of the slim checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace SLIM if it exists")
    p.add_argument("--allow-no-gates", action="store_true",
                   help="export a checkpoint without gates too (a dense copy in the slim format; refused otherwise)")
    p.add_argument("--seconds", type=float, default=10.0, help="virtual input length of the printed cost")
    a = p.parse_args(argv)
    from ..checkpoints import export_slim
    from ..cost_report import describe

    def go() -> int:
        export_slim(a.gated, a.slim, overwrite=a.overwrite, allow_no_gates=a.allow_no_gates)
        before, after = describe(a.gated, a.seconds), describe(a.slim, a.seconds)
        print(json.dumps({
            "gated": a.gated, "slim": a.slim,
            "params": after["params"], "gmacs": after["gmacs"],
            "size_sparsity": after["size_sparsity"], "macs_sparsity": after["macs_sparsity"],
            "gated_size_sparsity": before["size_sparsity"], "gated_macs_sparsity": before["macs_sparsity"],
            "layers": after["layers"],
        }, indent=2))
        return 0

    return run_cli("hjprune-export", go, USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
