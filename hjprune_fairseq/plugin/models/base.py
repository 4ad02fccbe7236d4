"""The base of every hjprune model: the maskable encoder, an output layer, and optional gates.

:class:`HJPruneModel` wraps :class:`Wav2Vec2Encoder` and adds an output layer (``add_output``); it has
no gates (the slim and PARP models). :class:`HJPruneGatedModel` adds the HardConcrete gates
(:class:`EncoderGates`) its config asks for. What the output is (CTC logits, a classifier, distillation
heads) is a mixin of the registered classes (``ctc.py``, ``classifier.py``, ``distill.py``). Every model
initialises from ``w2v_path``: a fairseq wav2vec2/HuBERT pre-training checkpoint, a fairseq
``wav2vec_ctc``/``hubert_ctc`` fine-tuned checkpoint, or an hjprune checkpoint. The encoder's shape is
stored in ``encoder_spec`` so saved checkpoints load without ``w2v_path``. Only the model classes read cfg.
"""


import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel
from hjprune_manifests import data_checks
from omegaconf import II, open_dict
from torch import nn

from ...core.encoder import MaskingOptions, Wav2Vec2Encoder, _linear
from ...core.gate_state import GateMasks
from ...core.gates import EncoderGates
from ...core.spec import EncoderSpec
from .. import compat
from ..fairseq_import import ImportedCheckpoint, read_checkpoint

logger = logging.getLogger(__name__)

MASK_SELECTION = ChoiceEnum(["static", "uniform", "normal", "poisson"])
BLANK_MODE = ChoiceEnum(["add", "set"])


@dataclass
class HJPruneCtcConfig(FairseqDataclass):
    """The config of every hjprune model (named after the CTC model it began as). Field names follow
    fairseq's ``Wav2Vec2AsrConfig`` so existing yaml model sections carry over."""

    w2v_path: Optional[str] = field(
        default=None,
        metadata={"help": "checkpoint to initialise from: fairseq wav2vec2/HuBERT pre-training, fairseq "
                          "wav2vec_ctc/hubert_ctc fine-tuned, or an hjprune checkpoint (gated or slim)"},
    )
    no_pretrained_weights: bool = field(default=False, metadata={"help": "take only the shape from w2v_path, not its weights"})
    encoder_spec: Optional[Any] = field(
        default=None, metadata={"help": "encoder dimensions; filled from w2v_path on first build and saved in checkpoints"}
    )
    reference_spec: Optional[Any] = field(
        default=None, metadata={"help": "dimensions of the unpruned encoder this one descends from (set "
                                        "automatically; sparsity figures are measured against it)"}
    )
    target_dictionary: Optional[Any] = field(
        default=None, metadata={"help": "the task's target dictionary ({path, symbols in order}); recorded by the "
                                        "task at first build and saved in checkpoints, so a data dictionary that "
                                        "differs is refused when the model is built again (decoding, later stages)"}
    )
    normalize: bool = field(default=II("task.normalize"), metadata={"help": "audio is normalised to zero mean, unit variance"})
    dropout_input: float = field(default=0.0, metadata={"help": "dropout on the projected CNN features"})
    final_dropout: float = field(default=0.0, metadata={"help": "dropout before the output layer"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the Transformer"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention probabilities"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    layerdrop: float = field(default=0.0, metadata={"help": "probability of skipping a Transformer layer in training"})
    feature_grad_mult: float = field(
        default=0.0, metadata={"help": "gradient scale for the CNN; 0 freezes it (then CNN gates cannot learn)"}
    )
    freeze_finetune_updates: int = field(default=0, metadata={"help": "updates during which only the output layer trains"})
    apply_mask: bool = field(default=False, metadata={"help": "mask time steps / channels of the features in training"})
    mask_length: int = field(default=10, metadata={"help": "length of a time mask span"})
    mask_prob: float = field(default=0.5, metadata={"help": "fraction of time steps starting a mask span"})
    mask_selection: MASK_SELECTION = field(default="static", metadata={"help": "how to choose time mask lengths"})
    mask_other: float = field(default=0.0, metadata={"help": "secondary mask length parameter (see fairseq)"})
    no_mask_overlap: bool = field(default=False, metadata={"help": "must be false (fairseq bug on numpy 2)"})
    mask_min_space: int = field(default=1, metadata={"help": "min space between spans (only with no_mask_overlap)"})
    require_same_masks: bool = field(default=True, metadata={"help": "same number of masked steps in every row"})
    mask_dropout: float = field(default=0.0, metadata={"help": "fraction of masked steps to unmask at random"})
    mask_channel_length: int = field(default=10, metadata={"help": "length of a channel mask span"})
    mask_channel_prob: float = field(default=0.0, metadata={"help": "fraction of channels starting a mask span"})
    mask_channel_selection: MASK_SELECTION = field(default="static", metadata={"help": "how to choose channel mask lengths"})
    mask_channel_other: float = field(default=0.0, metadata={"help": "secondary channel mask parameter"})
    no_mask_channel_overlap: bool = field(default=False, metadata={"help": "must be false (fairseq bug on numpy 2)"})
    mask_channel_min_space: int = field(default=1, metadata={"help": "min space between channel spans"})
    mask_channel_before: bool = field(default=False, metadata={"help": "mask channels before time steps"})
    blank_weight: float = field(default=0.0, metadata={"help": "added to (or set as) the blank logit at decoding"})
    blank_mode: BLANK_MODE = field(default="add", metadata={"help": "how blank_weight applies"})


@dataclass
class HJPruneGatedCtcConfig(HJPruneCtcConfig):
    """The config of every gated hjprune model: which groups are gated, and how."""

    prune_conv: bool = field(default=True, metadata={"help": "gate the output channels of every CNN layer"})
    prune_heads: bool = field(default=True, metadata={"help": "gate the attention heads of every layer"})
    prune_ffn: bool = field(default=True, metadata={"help": "gate the FFN intermediate units of every layer"})
    prune_hidden: bool = field(default=True, metadata={"help": "gate the hidden dimension (one vector shared by all layers)"})
    prune_head_dims: bool = field(
        default=False, metadata={"help": "fine-grained attention (Wang et al. 2023): also gate the query/key and the "
                                         "value/output dims inside every head, so a layer may keep many thin heads"}
    )
    gate_init_keep_prob: float = field(
        default=0.99, metadata={"help": "initial P(gate != 0) of every unit (log_alpha is set from it)"}
    )
    gate_ste: bool = field(
        default=False, metadata={"help": "straight-through estimator: training forwards the deterministic 0/1 masks "
                                         "that export keeps; gradients reach log_alpha through the HardConcrete sample"}
    )


def _masking(cfg: HJPruneCtcConfig) -> MaskingOptions:
    compat.check_no_overlap(cfg.no_mask_overlap, cfg.no_mask_channel_overlap)
    return MaskingOptions(
        mask_prob=cfg.mask_prob if cfg.apply_mask else 0.0, mask_length=cfg.mask_length,
        mask_selection=str(cfg.mask_selection), mask_other=cfg.mask_other, mask_min_space=cfg.mask_min_space,
        require_same_masks=cfg.require_same_masks, mask_dropout=cfg.mask_dropout,
        mask_channel_prob=cfg.mask_channel_prob if cfg.apply_mask else 0.0,
        mask_channel_length=cfg.mask_channel_length, mask_channel_selection=str(cfg.mask_channel_selection),
        mask_channel_other=cfg.mask_channel_other, mask_channel_min_space=cfg.mask_channel_min_space,
        mask_channel_before=cfg.mask_channel_before,
    )


class HJPruneModel(BaseFairseqModel):
    """Encoder + output layer, without gates (``gates`` is None); see :class:`HJPruneGatedModel`."""

    ARCH = ""  # the registered name, set on each registered subclass by registry.register

    def __init__(self, cfg: HJPruneCtcConfig, spec: EncoderSpec, vocab_size: int, gates: Optional[EncoderGates] = None):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.encoder = Wav2Vec2Encoder(
            spec, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout, dropout_input=cfg.dropout_input, layerdrop=cfg.layerdrop,
            feature_grad_mult=cfg.feature_grad_mult, masking=_masking(cfg),
            training_fns=compat.fairseq_training_fns(),
        )
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.add_output(spec, vocab_size)
        self.gates = gates
        self.apply_mask = cfg.apply_mask
        self.freeze_finetune_updates = cfg.freeze_finetune_updates
        self.num_updates = 0

    # ---- construction -------------------------------------------------------------------------
    def add_output(self, spec: EncoderSpec, vocab_size: int) -> None:
        """Add the output layer ``proj``: one linear map from the encoder's width to the ``vocab_size``
        symbols (per frame for CTC, per utterance for a classifier). The distillation models add their
        prediction ``heads`` instead (distill.py)."""
        self.proj = _linear(spec.embed_dim, vocab_size)  # no symbols: an encoder imported without a CTC head
        if vocab_size:
            nn.init.xavier_uniform_(self.proj.weight)
        nn.init.constant_(self.proj.bias, 0.0)

    @classmethod
    def make_gates(cls, cfg: HJPruneCtcConfig, spec: EncoderSpec) -> Optional[EncoderGates]:
        """No gates (:class:`HJPruneGatedModel` has them)."""
        return None

    @classmethod
    def build_model(cls, cfg: HJPruneCtcConfig, task) -> "HJPruneModel":
        return cls.from_config(cfg, len(task.target_dictionary))

    @classmethod
    def from_config(cls, cfg: HJPruneCtcConfig, vocab_size: int) -> "HJPruneModel":
        """Build from cfg; reads ``w2v_path`` only when ``encoder_spec`` is not set yet."""
        compat.name_the_architecture(cfg, cls.ARCH)
        if cfg.encoder_spec is not None:
            spec = EncoderSpec.from_dict(dict(cfg.encoder_spec))
            return cls(cfg, spec, vocab_size, cls.make_gates(cfg, spec))
        if not cfg.w2v_path:
            raise ValueError("model.w2v_path is required: the checkpoint to initialise the encoder from")
        ckpt = read_checkpoint(cfg.w2v_path)
        if ckpt.normalize is not None and bool(ckpt.normalize) != bool(cfg.normalize):
            raise ValueError(
                f"{cfg.w2v_path}: the encoder was trained with normalize={ckpt.normalize} but "
                f"task.normalize={cfg.normalize}; set task.normalize to match"
            )
        reference = ckpt.model_cfg.get("reference_spec") if ckpt.kind == "hjprune" else None
        with open_dict(cfg):
            cfg.encoder_spec = ckpt.spec.to_dict()
            cfg.reference_spec = reference if reference is not None else ckpt.spec.to_dict()
        model = cls(cfg, ckpt.spec, vocab_size, cls.make_gates(cfg, ckpt.spec))
        if not cfg.no_pretrained_weights:
            model.load_imported(ckpt)
        return model

    def load_imported(self, ckpt: ImportedCheckpoint) -> None:
        self.encoder.load_state_dict(ckpt.encoder_state, strict=True)
        if ckpt.head_state is not None:
            self.check_imported_dictionary(ckpt)
            if ckpt.head_state["weight"].shape != self.proj.weight.shape:
                raise ValueError(
                    f"{ckpt.path}: output layer has {ckpt.head_state['weight'].shape[0]} symbols but the task "
                    f"dictionary has {self.proj.weight.shape[0]} (expected the same dictionary)"
                )
            self.proj.load_state_dict(ckpt.head_state)
        if ckpt.gate_state is not None and self.gates is not None:
            # Gate groups the checkpoint lacks keep their initial values; unknown ones are an error.
            _, unexpected = self.gates.load_state_dict(ckpt.gate_state, strict=False)
            if unexpected:
                raise ValueError(f"{ckpt.path}: gates {unexpected} do not exist in this model (gate groups differ)")
        logger.info("initialised %s from %s (%s checkpoint, %s)", type(self).__name__, ckpt.path, ckpt.kind, ckpt.arch)

    def check_imported_dictionary(self, ckpt: ImportedCheckpoint) -> None:
        """The output layer taken from ``ckpt`` indexes the dictionary ``ckpt`` was trained with: it must
        be the task's (recorded in cfg.target_dictionary by the task)."""
        ours, theirs = self.cfg.target_dictionary, ckpt.model_cfg.get("target_dictionary")
        if ours is None:
            return
        if theirs is None:
            logger.warning("%s records no target dictionary: make sure %s is the one its output layer was "
                           "trained with", ckpt.path, ours["path"])
            return
        problem = data_checks.dictionary_difference(theirs["symbols"], f"{theirs['path']}, recorded in {ckpt.path}",
                                                    ours["symbols"], ours["path"])
        if problem:
            raise ValueError(problem)

    # ---- forward ------------------------------------------------------------------------------
    @property
    def reference_spec(self) -> EncoderSpec:
        """The unpruned encoder's dimensions (this model's own when it was never pruned)."""
        ref = self.cfg.reference_spec
        return self.spec if ref is None else EncoderSpec.from_dict(dict(ref))

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def gate_masks(self) -> GateMasks:
        return self.gates() if self.gates is not None else GateMasks()

    def encode(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor], return_layers: bool = False):
        """(B, T, d) encoder output and (B, T) frame padding, with this forward's gate values (and
        every layer's output with ``return_layers``)."""
        frozen = self.training and self.num_updates < self.freeze_finetune_updates
        with torch.no_grad() if frozen else contextlib.nullcontext():
            x, frame_pad, layers = self.encoder(source, padding_mask, self.gate_masks(),
                                                mask=self.apply_mask and self.training, return_layers=return_layers)
        return (x, frame_pad, layers) if return_layers else (x, frame_pad)

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None) -> torch.Tensor:
        logits = self.get_logits(net_output)  # defined by the output's mixin (CtcOutput, ClassificationHead)
        return utils.log_softmax(logits.float(), dim=-1) if log_probs else utils.softmax(logits.float(), dim=-1)

    def max_positions(self):
        return None


class HJPruneGatedModel(HJPruneModel):
    """Encoder + output layer + the HardConcrete gates on conv channels, heads (and their dims), FFN
    units and hidden dims that ``cfg`` (:class:`HJPruneGatedCtcConfig`) asks for."""

    @classmethod
    def make_gates(cls, cfg: HJPruneGatedCtcConfig, spec: EncoderSpec) -> Optional[EncoderGates]:
        if not (cfg.prune_conv or cfg.prune_heads or cfg.prune_ffn or cfg.prune_hidden or cfg.prune_head_dims):
            return None
        if cfg.prune_conv and cfg.feature_grad_mult <= 0:
            raise ValueError(
                "model.prune_conv=true needs model.feature_grad_mult > 0: with 0 the CNN runs without "
                "gradients and its channel gates cannot learn (set prune_conv=false to keep the CNN)"
            )
        if not 0.0 < cfg.gate_init_keep_prob < 1.0:
            raise ValueError(f"model.gate_init_keep_prob must be in (0, 1), got {cfg.gate_init_keep_prob}")
        return EncoderGates(
            spec, conv=cfg.prune_conv, heads=cfg.prune_heads, ffn=cfg.prune_ffn, hidden=cfg.prune_hidden,
            init_keep_prob=cfg.gate_init_keep_prob, ste=cfg.gate_ste, head_dims=cfg.prune_head_dims,
        )
