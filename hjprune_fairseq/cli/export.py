"""hjprune-export: physically remove the pruned units of a gated checkpoint; write a model as ONNX or as a Hugging
Face folder."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from hjprune_manifests.cli import USER_ERRORS, run_cli


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-export",
        description="Turn a gated checkpoint (hjprune_wav2vec_ctc, _cls or _distill) into its slim model "
                    "(hjprune_slim_ctc, _cls or _distill): every unit dropped by the deterministic gate masks "
                    "(conv channels, heads, query/key and value/output dims of heads, FFN units, hidden dims) is "
                    "removed from the weights. The result loads with fairseq's checkpoint_utils, "
                    "fairseq-generate, and as model.w2v_path of a fine-tuning stage. With --onnx, also (or only) "
                    "the ONNX graph for onnxruntime (hjprune_fairseq.convert.onnx_export); with --hf, a folder that transformers loads "
                    "with trust_remote_code (hjprune_fairseq.convert.hf_export).",
    )
    p.add_argument("gated", help="gated checkpoint: the prune stage's checkpoint_last.pt (checkpoint_best.pt is from before the target was reached)")
    p.add_argument("slim", nargs="?", help="output path of the slim checkpoint (may be left out with --onnx or --hf)")
    p.add_argument("--onnx", metavar="OUT.onnx",
                   help="write an ONNX graph: of SLIM when given, else of GATED, which may then be any hjprune "
                        "checkpoint (dense or fine-tuned, slim, PARP; a gated one has its deterministic masks "
                        "folded in). Inputs source (B, S) float, padding_mask (B, S) bool; outputs logits and "
                        "frame_padding_mask (a classifier: logits; a distillation model: features and "
                        "frame_padding_mask)")
    p.add_argument("--int8", action="store_true",
                   help="with --onnx: onnxruntime dynamic quantisation (MatMul/Gemm weights int8)")
    p.add_argument("--hf", metavar="DIR",
                   help="write a Hugging Face folder (config.json, model.safetensors, the modelling code; for a CTC model "
                        "the tokenizer files): of SLIM when given, else of GATED, which may then be any hjprune checkpoint "
                        "with a CTC or distillation head (a gated one as its slim model). AutoModel / AutoModelForCTC "
                        ".from_pretrained(DIR, trust_remote_code=True) loads it without fairseq. DIR must be new, empty, "
                        "or this option's earlier output")
    p.add_argument("--overwrite", action="store_true", help="replace SLIM, OUT.onnx and the earlier --hf DIR if they exist")
    p.add_argument("--allow-no-gates", action="store_true",
                   help="export a checkpoint without gates too (a dense copy in the slim format; refused otherwise)")
    p.add_argument("--budget", metavar="Q=F[,Q=F]",
                   help="export at this budget instead of the run's: a fraction removed per quantity of one sparsity "
                        "measure, e.g. macs=0.5, size=0.3, cnn=0.3,transformer=0.5 (sep_size); the deterministic "
                        "masks are moved in log_alpha order until it is met within 0.5 points")
    p.add_argument("--align", type=int, default=1, metavar="N",
                   help="keep a multiple of N of every CNN layer's channels, every layer's FFN units, the hidden dims "
                        "and (fine-grained heads) every head's query/key and value/output dims, within the budget")
    p.add_argument("--as-trained", action="store_true",
                   help="export the deterministic masks as they are (round of each row's expected L0), not the budget")
    p.add_argument("--latency-table", metavar="TABLE.json",
                   help="the latency table of a latency budget (default: the run's criterion.latency_table)")
    p.add_argument("--seconds", type=float, default=10.0, help="virtual input length of the printed cost")
    a = p.parse_args(argv)
    if a.int8 and not a.onnx:
        p.error("--int8 needs --onnx OUT.onnx")
    if a.as_trained and (a.budget or a.align != 1):
        p.error("--as-trained keeps the trained masks: it takes no --budget or --align")
    if a.align < 1:
        p.error(f"--align must be a positive number of units, got {a.align}")
    budget = _budget(p, a.budget) if a.budget else None
    from ..convert.slim_export import check_output_path, export_slim
    from ..tools.cost_report import describe

    def go() -> int:
        if a.slim is None and a.onnx is None and a.hf is None:
            raise ValueError(f"{a.gated}: nothing to write; give SLIM, --onnx OUT.onnx, --hf DIR, or several")
        if a.onnx is not None:
            from ..convert.onnx_export import import_onnx

            import_onnx()  # the extra is there, and OUT.onnx may be written, before anything is written
            check_output_path(a.gated, a.onnx, a.overwrite)
            if a.slim is not None:
                check_output_path(a.slim, a.onnx, True)
        if a.hf is not None:
            from ..convert.hf_export import check_output

            check_output(a.hf, a.overwrite)  # the extra is there, and DIR may be written, before anything is written
        r = {"gated": a.gated}
        if a.slim is not None:
            info = export_slim(a.gated, a.slim, overwrite=a.overwrite, allow_no_gates=a.allow_no_gates, budget=budget,
                               align=a.align, as_trained=a.as_trained, latency_table=a.latency_table)
            fitted = info["budget"]
            r["budget"] = fitted.summary() if fitted is not None else info["note"]
            before, after = describe(a.gated, a.seconds, as_trained=True), describe(a.slim, a.seconds)
            r.update({
                "slim": a.slim,
                "params": after["params"], "gmacs": after["gmacs"],
                "size_sparsity": after["size_sparsity"], "macs_sparsity": after["macs_sparsity"],
                # the gated model under its deterministic masks, before any budget fit
                "gated_size_sparsity": before["size_sparsity"], "gated_macs_sparsity": before["macs_sparsity"],
                "layers": after["layers"],
            })
        if a.onnx is not None:
            from ..convert.onnx_export import export_onnx

            r["onnx"] = export_onnx(a.slim or a.gated, a.onnx, overwrite=a.overwrite, int8=a.int8)
        if a.hf is not None:
            from ..convert.hf_export import export_hf

            r["hf"] = export_hf(a.slim or a.gated, a.hf, overwrite=a.overwrite)
        print(json.dumps(r, indent=2))
        return 0

    return run_cli("hjprune-export", go, USER_ERRORS + (ImportError,))


def _budget(p: argparse.ArgumentParser, text: str) -> Dict[str, float]:
    """``macs=0.5`` or ``cnn=0.3,transformer=0.5`` -> {quantity: fraction}; a bad one is a usage error."""
    out: Dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            p.error(f"--budget: expected QUANTITY=FRACTION[,QUANTITY=FRACTION], got {part!r}")
        if not eq or not name.strip() or not 0.0 <= out[name.strip()] < 1.0:
            p.error(f"--budget: expected QUANTITY=FRACTION with FRACTION in [0, 1), got {part!r}")
    return out


if __name__ == "__main__":
    sys.exit(main())
