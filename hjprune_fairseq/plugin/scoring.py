"""Scoring as fairseq-generate scores: ``--scoring hjprune_accuracy`` (the share of utterances whose predicted
label, e.g. intent, equals the reference, printed as ``Accuracy: NN.NN``), and the scores of a
``generate-SUBSET.txt`` per subset of utterances (the demo's seen and unseen sentences, an export's hypotheses
in hjprune-score-export).

Each utterance's reference (``T-``) and hypothesis (``D-``) line is fed to the scorer that fairseq-generate
itself used (``--scoring wer``: fairseq's ``WerScorer``; ``--scoring hjprune_accuracy``: :class:`AccuracyScorer`),
one scorer per subset, so that no WER or accuracy formula is written here.
"""

import re
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, build_scorer, register_scorer


@dataclass
class AccuracyScorerConfig(FairseqDataclass):
    pass


@register_scorer("hjprune_accuracy", dataclass=AccuracyScorerConfig)
class AccuracyScorer(BaseScorer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.correct = 0
        self.total = 0

    def add_string(self, ref: str, pred: str) -> None:
        self.correct += int(ref.strip() == pred.strip())
        self.total += 1

    def score(self) -> float:
        return 100.0 * self.correct / self.total if self.total else 0.0

    def result_string(self) -> str:
        return f"Accuracy: {self.score():.2f} ({self.correct}/{self.total})"


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
