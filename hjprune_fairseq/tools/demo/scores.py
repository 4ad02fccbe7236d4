"""The demo's figures from fairseq-generate's output, per subset of the test split.

Each utterance's reference (``T-``) and hypothesis (``D-``) line is fed to the scorer that
fairseq-generate itself used (``--scoring wer``: fairseq's ``WerScorer``; ``--scoring
hjprune_accuracy``: ``hjprune_fairseq.plugin.scoring.AccuracyScorer``), one scorer per subset (all, seen and
unseen sentences), so that no WER or accuracy formula is written here.
"""

import re
from typing import Dict, Sequence, Tuple

from fairseq.scoring import build_scorer

from ...plugin import scoring as _scoring  # noqa: F401  (registers hjprune_accuracy)


def parse_generate(path: str) -> Tuple[Dict[int, str], Dict[int, str]]:
    """({id: hypothesis}, {id: reference}) of a ``generate-SUBSET.txt`` written by fairseq-generate."""
    text = open(path).read()
    refs = {int(i): t for i, t in re.findall(r"^T-(\d+)\t(.*)$", text, re.M)}
    hyps = {int(i): h for i, _, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", text, re.M)}
    if refs.keys() != hyps.keys() or not refs:
        raise RuntimeError(f"{path}: fairseq-generate output lacks T-/D- lines for some utterances")
    return hyps, refs


def score(scoring: str, refs: Dict[int, str], hyps: Dict[int, str], ids: Sequence[int]) -> float:
    """The score of fairseq scorer ``scoring`` (``wer``, ``hjprune_accuracy``) over utterances ``ids``;
    NaN when there are none (a subset the test split lacks), where the scorers would say 0."""
    if not ids:
        return float("nan")
    scorer = build_scorer(scoring, None)  # the target dictionary is only needed by bleu
    for i in ids:
        scorer.add_string(refs[i], hyps[i])
    return scorer.score()


def subset_scores(scoring: str, refs: Dict[int, str], hyps: Dict[int, str],
                  subsets: Dict[str, Sequence[int]]) -> Dict[str, float]:
    """{name: score over the utterances of that subset}."""
    return {name: score(scoring, refs, hyps, ids) for name, ids in subsets.items()}
