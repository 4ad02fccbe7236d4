"""hjprune-score-export: WER of exported CTC models (ONNX graphs, Hugging Face folders) on a labelled split, decoded
as fairseq-generate decodes their checkpoint (hjprune_fairseq.convert.score_export)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from hjprune_manifests.cli import USER_ERRORS, run_cli


class _Export(argparse.Action):
    """Collects ``--onnx`` and ``--hf`` in the order given, as (kind, path)."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.exports = (namespace.exports or []) + [(self.dest, value)]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-score-export",
        description="Decode a labelled split (DATA/SUBSET.tsv, DATA/SUBSET.LABELS, DATA/dict.LABELS.txt) with exported "
                    "CTC models and score it with fairseq's WER scorer, side by side in one run. The audio is read, "
                    "normalised (as the ONNX metadata or the folder's feature extractor settings say) and batched by the "
                    "plugin's task as fairseq-generate does with the same --batch-size/--max-tokens; greedy CTC "
                    "decoding and the texts are fairseq-generate's (blank 0, repeats merged, --post-process). With "
                    "--compare, counts the hypotheses that differ from fairseq-generate's. Prints a JSON report.",
    )
    p.add_argument("data", metavar="DATA",
                   help="the data folder: SUBSET.tsv, SUBSET.LABELS and dict.LABELS.txt (the dictionary the model was "
                        "trained with)")
    p.add_argument("--subset", default="test", metavar="SUBSET", help="the split to decode (default: test)")
    p.add_argument("--labels", default="ltr", metavar="LABELS", help="label file extension (default: ltr)")
    p.add_argument("--onnx", metavar="M.onnx", action=_Export, dest="onnx",
                   help="a CTC graph written by hjprune-export --onnx (fp32 or --int8); may be repeated")
    p.add_argument("--hf", metavar="DIR", action=_Export, dest="hf",
                   help="a CTC folder written by hjprune-export --hf (loaded with transformers' AutoModelForCTC and "
                        "trust_remote_code); may be repeated")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="utterances per batch, padded; the same batches as fairseq-generate --batch-size N (default 1: "
                        "each hypothesis independent of the others)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="M",
                   help="at most this many audio samples per batch, as fairseq-generate --max-tokens (default: no limit)")
    p.add_argument("--post-process", default="letter", metavar="NAME",
                   help="how tokens become text, as fairseq-generate --post-process (default: letter, '|' a space)")
    p.add_argument("--compare", metavar="generate-SUBSET.txt",
                   help="fairseq-generate's output of the same split (its --results-path file): report its WER and, per "
                        "model, the hypotheses that differ from it and the WER change")
    p.add_argument("--hyps", metavar="FILE",
                   help="write the hypotheses as TSV: id, reference and one column per model (headed by its path)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --hyps FILE")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime intra-op threads and torch threads (default 0: their own choice; on a machine "
                        "other jobs share, 1 avoids torch's threads waiting on each other)")
    p.set_defaults(exports=[])
    a = p.parse_args(argv)
    if not a.exports:
        p.error("give at least one model: --onnx M.onnx or --hf DIR")
    if a.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {a.batch_size}")

    def go() -> int:
        from ..convert.score_export import score_exports
        from ..tools.timing import apply_threads

        if any(kind == "onnx" for kind, _ in a.exports):
            from ..convert.onnx_export import import_onnx

            import_onnx()  # a one-line error without the extra
        if any(kind == "hf" for kind, _ in a.exports):
            from ..plugin.compat import import_transformers

            import_transformers().utils.logging.disable_progress_bar()  # the report is JSON on stdout; stderr quiet
        apply_threads(a.threads)
        r = score_exports(a.data, a.exports, subset=a.subset, labels=a.labels, batch_size=a.batch_size,
                          max_tokens=a.max_tokens, post_process=a.post_process, threads=a.threads, compare=a.compare,
                          hyps_path=a.hyps, overwrite=a.overwrite)
        print(json.dumps(r, indent=2))
        return 0

    return run_cli("hjprune-score-export", go, USER_ERRORS + (ImportError,))


if __name__ == "__main__":
    sys.exit(main())
