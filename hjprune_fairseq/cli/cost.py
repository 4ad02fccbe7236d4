"""hjprune-cost: parameters and MACs of a preset or a checkpoint (``cost_report.describe``), as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from hjprune_manifests.cli import run_cli

from ..core.presets import PRESETS
from ..tools.cost_report import describe


def format_table(r: Dict) -> str:
    lines = [
        f"{r['source']} ({r['kind']}), {r['seconds']:g} s -> {r['frames']} frames",
        f"params {r['params']:,}  (encoder {r['encoder_params']:,})   GMACs {r['gmacs']:.3f}  (encoder {r['encoder_gmacs']:.3f})",
        f"sparsity: size {r['size_sparsity']:.4f}  MACs {r['macs_sparsity']:.4f}  CNN size {r['cnn_size_sparsity']:.4f}  "
        f"Transformer size {r['transformer_size_sparsity']:.4f}   CNN MACs share {r['cnn_macs_share']:.3f}",
        "",
        f"{'component':<10} {'params':>14} {'GMACs':>10}",
    ]
    if "zero_weights" in r:
        lines[3:3] = [f"PARP zeros: {r['zero_weights']:,} weights; nonzero encoder params {r['nonzero_encoder_params']:,} "
                      f"(sparsity {r['nonzero_size_sparsity']:.4f}); dense kernels run at the dense cost"]
    for name, p in r["params_by_component"].items():
        lines.append(f"{name:<10} {p:>14,} {r['gmacs_by_component'][name]:>10.3f}")
    L = r["layers"]
    lines += ["", "CNN layer  channels   GMACs"]
    lines += [f"{i:>9} {c:>9.0f} {m:>7.3f}" for i, (c, m) in enumerate(zip(L["conv_channels"], L["cnn_gmacs"]))]
    lines += ["", f"layer  heads  QK dims  VO dims  FFN units  GMACs (hidden dims kept: {r['hidden']:.0f})"]
    lines += [
        f"{i:>5} {h:>6.0f} {q:>8.0f} {v:>8.0f} {f:>10.0f} {a + b:>6.3f}"
        for i, (h, q, v, f, a, b) in enumerate(zip(L["heads"], L["qk_dims"], L["vo_dims"], L["ffn_units"],
                                                   L["attention_gmacs"], L["ffn_gmacs"]))
    ]
    if "latency" in r:
        lines += [""] + format_latency(r["latency"])
    return "\n".join(lines)


def format_latency(t: Dict) -> List[str]:
    """The predicted latency per component (``cost_report.latency_report``)."""
    lines = [f"predicted latency, {t['seconds']:g} s input, {t['backend']} {t['dtype']}, {t['threads']} threads "
             f"(table {t['table']}, {t['machine'].get('cpu')}, {t['machine'].get('cores')} cores)"]
    if t["foreign"]:
        lines.append(f"WARNING: {t['foreign']}")
    lines.append(f"{'component':<12} {'ms':>9}")
    lines += [f"{k:<12} {v:>9.2f}" for k, v in t["ms"].items()]
    lines.append(f"{'dense':<12} {t['dense_ms']:>9.2f}   (speed-up {t['dense_ms'] / t['ms']['total']:.2f}x)")
    if "expected_ms" in t:
        lines.append(f"{'expected':<12} {t['expected_ms']:>9.2f}   (under the gates' keep probabilities)")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-cost",
        description="Parameters and multiply-accumulates (MACs) of a wav2vec2-style encoder, per component "
                    "and per layer. Gated checkpoints are measured with their deterministic evaluation masks "
                    "(what hjprune-export keeps); slim and fairseq checkpoints exactly.",
    )
    p.add_argument("checkpoint", nargs="?", help="a checkpoint (hjprune gated/slim, fairseq wav2vec2/hubert/wav2vec_ctc)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a built-in architecture instead of a checkpoint")
    p.add_argument("--seconds", type=float, default=10.0, help="virtual input length for MACs (default: 10)")
    p.add_argument("--latency-table", metavar="TABLE",
                   help="a latency table (hjprune-latency-table): also print the predicted latency per component")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if (a.checkpoint is None) == (a.preset is None):
        p.error("give either a CHECKPOINT or --preset NAME")

    def go() -> int:
        r = describe(a.preset or a.checkpoint, a.seconds, latency_table=a.latency_table)
        print(json.dumps(r, indent=2) if a.json else format_table(r))
        return 0

    return run_cli("hjprune-cost", go, (ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
