"""Task-agnostic pruning by distillation (Wang et al., Interspeech 2023; DPHuBERT's recipe).

``hjprune_wav2vec_distill`` is the gated encoder of ``hjprune_wav2vec_ctc`` whose output is not a
vocabulary but one linear prediction head per distilled layer (``heads``, where the other models have
their output layer ``proj``; checkpoints written before this name hold them as ``proj.N.*``, which
``upgrade_state_dict_named`` renames on load): head k maps the student's hidden state
``distill_layers[k]`` (0: the Transformer's input, l >= 1: the output of Transformer layer l) to the
teacher's dimension. The heads start as the identity when student and teacher are equally wide, as
DPHuBERT's (github.com/pyf98/DPHuBERT, distill.py ``_init_layer_transform``), so a student with every
gate open starts at the loss's minimum. The ``hjprune_distill`` criterion compares them with the
frozen unpruned teacher's hidden states of the same layers, on unlabeled audio (task
``hjprune_audio_distill``). ``hjprune-export`` writes ``hjprune_slim_distill``: the slim encoder
with its heads, which any hjprune model can take as ``w2v_path`` (the heads are not used then; a
fine-tuning model gets a new output layer).
"""


import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from omegaconf import open_dict
from torch import nn

from ...core.spec import EncoderSpec
from ..fairseq_import import ImportedCheckpoint
from . import registry
from .base import HJPruneCtcConfig, HJPruneGatedCtcConfig, HJPruneGatedModel, HJPruneModel

logger = logging.getLogger(__name__)


@dataclass
class DistillFields:
    distill_layers: str = field(
        default="0,4,8,12",
        metadata={"help": "comma-separated hidden states distilled, student's k to teacher's k: 0 is the Transformer's "
                          "input (projected CNN features, before the positional conv), l >= 1 the output of "
                          "Transformer layer l (DPHuBERT, base models: 0,4,8,12)"},
    )
    teacher_dim: Optional[int] = field(
        default=None, metadata={"help": "output size of the prediction heads: the teacher's embed_dim (set automatically)"}
    )


@dataclass
class HJPruneDistillConfig(HJPruneGatedCtcConfig, DistillFields):
    pass


@dataclass
class HJPruneSlimDistillConfig(HJPruneCtcConfig, DistillFields):
    pass


def parse_layers(text: str, num_layers: int) -> List[int]:
    """'0,4,8,12' -> [0, 4, 8, 12]; ValueError unless strictly increasing layers in 0..num_layers."""
    try:
        layers = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"model.distill_layers must be comma-separated layer numbers, got {text!r}") from None
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] > num_layers:
        raise ValueError(f"model.distill_layers must be increasing layer numbers in 0..{num_layers} (0: the "
                         f"Transformer's input), got {text!r}")
    return layers


class DistillHeads:
    """Mixin: prediction ``heads`` instead of the vocabulary output ``proj``, and a forward that returns them."""

    def add_output(self, spec: EncoderSpec, vocab_size: int) -> None:
        """Add ``heads``: one linear map from the student's width to the teacher's per distilled layer."""
        cfg = self.cfg
        if cfg.layerdrop > 0:
            raise ValueError("model.layerdrop must be 0 for distillation: a dropped layer has no output to distil")
        self.distill_layers = parse_layers(cfg.distill_layers, spec.num_layers)
        if cfg.teacher_dim is None:
            with open_dict(cfg):  # the unpruned model's width; saved with the checkpoint
                ref = cfg.reference_spec
                cfg.teacher_dim = (EncoderSpec.from_dict(dict(ref)) if ref is not None else spec).embed_dim
        heads = nn.ModuleList(nn.Linear(spec.embed_dim, cfg.teacher_dim) for _ in self.distill_layers)
        if spec.embed_dim == cfg.teacher_dim:
            # DPHuBERT's init (distill.py, _init_layer_transform): an unpruned student then predicts
            # the teacher exactly, and the distillation loss starts at its minimum.
            with torch.no_grad():
                for head in heads:
                    head.weight.copy_(torch.eye(spec.embed_dim))
                    head.bias.zero_()
        else:
            logger.info("prediction heads map width %d to the teacher's %d: not square, so initialised at random, "
                        "not as the identity (weights from a checkpoint, if any, replace them)",
                        spec.embed_dim, cfg.teacher_dim)
        self.heads = heads

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> None:
        """fairseq's hook on every load (trainer, checkpoint_utils, checkpoints.load_model): rename the
        heads of checkpoints written when they were called ``proj`` (``proj.N.*`` -> ``heads.N.*``)."""
        prefix = f"{name}." if name else ""
        old = re.compile(rf"{re.escape(prefix)}proj\.(\d+\..+)")
        for key in [k for k in state_dict if old.fullmatch(k)]:
            state_dict[f"{prefix}heads.{old.fullmatch(key).group(1)}"] = state_dict.pop(key)
        super().upgrade_state_dict_named(state_dict, name)

    @classmethod
    def build_model(cls, cfg, task):
        return cls.from_config(cfg, 0)  # unlabeled audio: no vocabulary

    def load_imported(self, ckpt: ImportedCheckpoint) -> None:
        ckpt.head_state = None  # an output layer is no prediction head: keep the fresh heads
        super().load_imported(ckpt)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> Dict[str, Any]:
        """{"layers": [(B, T, teacher_dim) per distilled layer], "padding_mask": (B, T) or None}."""
        _, frame_pad, hidden_states = self.encode(source, padding_mask, return_layers=True)
        preds = [head(hidden_states[i]) for i, head in zip(self.distill_layers, self.heads)]
        return {"layers": preds, "padding_mask": frame_pad}


@registry.register("hjprune_slim_distill", HJPruneSlimDistillConfig, kind="slim", head="distill")
class HJPruneSlimDistill(DistillHeads, HJPruneModel):
    """The exported distilled encoder (slim, with its prediction heads)."""


@registry.register("hjprune_wav2vec_distill", HJPruneDistillConfig, kind="gated", head="distill",
                   slim="hjprune_slim_distill")
class HJPruneGatedDistill(DistillHeads, HJPruneGatedModel):
    """The gated encoder pruned by distillation from its frozen unpruned self."""
