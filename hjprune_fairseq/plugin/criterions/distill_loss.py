"""``hjprune_distill``: layer-to-layer distillation from the frozen unpruned encoder, plus the sparsity
constraint: task-agnostic structured pruning (Wang et al., Interspeech 2023) on unlabeled audio.

For every distilled layer k, with p the student's prediction head output and y the teacher's hidden
state at the same frame, DPHuBERT's loss (github.com/pyf98/DPHuBERT, lightning.py ``DistillLoss``):

    l1 = mean_d |p - y|,     cos = -cos_sim(p, y)  (cos_type raw)  or  -log sigmoid(cos_sim(p, y))  (log_sig)

    loss = l1_weight * l1 + cos_weight * cos, averaged over the distilled layers (layer_reduction mean)

summed over non-padded frames; ``sample_size`` is the number of frames, so gradients are per frame
(DPHuBERT's mean also counts padded frames; here they are left out). The teacher is the encoder of
``teacher_path`` (default: the model's ``w2v_path``, i.e. the model before pruning). It runs without gradients, in
float32, and is not part of the checkpoint: a resumed run reloads it from ``teacher_path``.
"""


from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum
from omegaconf import II

from ...core.encoder import Wav2Vec2Encoder
from ..fairseq_import import read_checkpoint
from .penalty import SparsityPenaltyMixin
from .sparsity_config import SparsityConfig, constraint_from_config


def _neg_cos(sim: torch.Tensor) -> torch.Tensor:
    return -sim


def _neg_log_sigmoid_cos(sim: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(sim)


# cos_type -> the cosine term per frame, as a function of the cosine similarity (DPHuBERT, lightning.py)
COS_TERMS = {"raw": _neg_cos, "log_sig": _neg_log_sigmoid_cos}
COS_TYPE = ChoiceEnum(list(COS_TERMS))
LAYER_REDUCTION = ChoiceEnum(["mean", "sum"])


@dataclass
class HJPruneDistillCriterionConfig(SparsityConfig):
    teacher_path: Optional[str] = field(
        default=II("model.w2v_path"), metadata={"help": "checkpoint of the teacher encoder (default: model.w2v_path)"}
    )
    l1_weight: float = field(default=1.0, metadata={"help": "weight of the L1 distance"})
    cos_weight: float = field(default=1.0, metadata={"help": "weight of the cosine term (see cos_type)"})
    cos_type: COS_TYPE = field(
        default="raw", metadata={"help": "cosine term per frame: raw = -cos(p, y) (DPHuBERT's default, minimum -1), "
                                         "log_sig = -log sigmoid(cos(p, y)) (DistilHuBERT's, minimum 0.3133)"}
    )
    layer_reduction: LAYER_REDUCTION = field(
        default="mean", metadata={"help": "mean: average the loss over the distilled layers (DPHuBERT); sum: add them, "
                                          "as hjprune_distill did before this field existed, which weighs the loss "
                                          "against the sparsity penalty as many times more as there are layers"}
    )


def load_teacher(path: str) -> Wav2Vec2Encoder:
    ckpt = read_checkpoint(path)
    teacher = Wav2Vec2Encoder(ckpt.spec)
    teacher.load_state_dict(ckpt.encoder_state, strict=True)
    teacher.requires_grad_(False)
    return teacher.eval()


@register_criterion("hjprune_distill", dataclass=HJPruneDistillCriterionConfig)
class HJPruneDistillCriterion(SparsityPenaltyMixin, FairseqCriterion):
    def __init__(self, cfg: HJPruneDistillCriterionConfig, task):
        super().__init__(task)
        if not cfg.teacher_path:
            raise ValueError("criterion.teacher_path (or model.w2v_path) is required: the unpruned teacher")
        self.l1_weight, self.cos_weight = cfg.l1_weight, cfg.cos_weight
        self.cos_term, self.layer_reduction = COS_TERMS[str(cfg.cos_type)], str(cfg.layer_reduction)
        self.teacher_path = cfg.teacher_path
        self.sparsity = constraint_from_config(cfg)
        # Kept out of the module tree: not saved, not cast to fp16, not seen by the optimizer.
        self.__dict__["teacher"] = load_teacher(cfg.teacher_path)

    def teacher_layers(self, source, padding_mask, layers):
        teacher = self.__dict__["teacher"]
        if next(teacher.parameters()).device != source.device:
            teacher.to(source.device)
        with torch.no_grad():
            _, _, hidden_states = teacher(source.float(), padding_mask, return_layers=True)
        return [hidden_states[i] for i in layers]

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        out = model(**net_input)
        inner = getattr(model, "module", model)
        targets = self.teacher_layers(net_input["source"], net_input.get("padding_mask"), inner.distill_layers)
        pad = out["padding_mask"]
        first = out["layers"][0]
        keep = ~pad if pad is not None else torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
        l1 = cos = 0.0
        for pred, target in zip(out["layers"], targets):
            if pred.shape != target.shape:
                raise ValueError(f"distilled layers: the student predicts {tuple(pred.shape)} but the teacher "
                                 f"({self.teacher_path}) gives {tuple(target.shape)} (expected the same shape: "
                                 f"model.teacher_dim must be the teacher's embed_dim)")
            pred = pred.float()
            l1 = l1 + (pred - target).abs().mean(-1)[keep].sum()
            cos = cos + self.cos_term(F.cosine_similarity(pred, target, dim=-1))[keep].sum()
        if self.layer_reduction == "mean":
            l1, cos = l1 / len(targets), cos / len(targets)
        loss = self.l1_weight * l1 + self.cos_weight * cos
        sample_size = int(keep.sum())
        logging_output = {
            "loss": loss.data, "l1": l1.data, "cos": cos.data, "ntokens": sample_size,
            "nsentences": net_input["source"].size(0), "sample_size": sample_size,
        }
        return self.add_penalty(model, loss, sample_size, logging_output), sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        n = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in ("loss", "l1", "cos"):
            metrics.log_scalar(key, sum(float(log.get(key, 0)) for log in logging_outputs) / max(n, 1), n, round=4)
        metrics.log_scalar("ntokens", n, weight=0)
        cls.log_sparsity(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
