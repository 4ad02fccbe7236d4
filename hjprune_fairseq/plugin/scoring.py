"""``--scoring hjprune_accuracy`` for fairseq-generate: the share of utterances whose predicted label
(e.g. intent) equals the reference, printed as ``Accuracy: NN.NN``."""

from dataclasses import dataclass

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, register_scorer


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
