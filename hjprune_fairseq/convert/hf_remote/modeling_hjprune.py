"""transformers classes of a model exported by hjprune-fairseq (``hjprune-export --hf``), for
``AutoModel`` / ``AutoModelForCTC.from_pretrained(folder, trust_remote_code=True)``.

The network is hjprune-fairseq's own encoder: ``encoder.py``, ``spec.py`` and ``gate_state.py`` in this
folder are copies of the package's ``hjprune_fairseq/core`` files, made at export time, so the model
computes what the fairseq model computes, with its per-layer pruned shapes (transformers' wav2vec2
classes need one hidden size and equal layers). Only torch and transformers are needed; not fairseq,
not hjprune-fairseq.

Inputs as transformers' ``Wav2Vec2Model`` / ``Wav2Vec2ForCTC``: ``input_values`` (B, S) 16 kHz audio
(normalised by the feature extractor when ``config.normalize``), ``attention_mask`` (B, S), 1 at real
samples and 0 at padding. Outputs: ``last_hidden_state`` (B, T, d) or CTC ``logits`` (B, T, V), and
``frame_mask`` (B, T), 1 at the frames of real audio (by the spec's frame rule: wav2vec2's conv-length formula, or
HuBERT's, where a frame is padding when all its samples are). ``hidden_states`` (with ``output_hidden_states``):
the Transformer's input (the projected CNN features, before the positional convolution) and every
layer's output, each (B, T, d). At padded frames the CTC logits are the blank only (0 for the blank, -inf for every
other output), as fairseq's ``get_logits`` makes them: greedy decoding of a padded batch prints nothing there.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_hjprune import HJPruneConfig
from .encoder import PositionalConv, Wav2Vec2Encoder
from .gate_state import GateMasks  # imported here too: transformers 4.x copies only this file's relative imports
from .spec import EncoderSpec, conv_output_lengths


@dataclass
class HJPruneModelOutput(ModelOutput):
    """last_hidden_state (B, T, d); frame_mask (B, T) long, 1 at real frames; hidden_states: (L + 1) x (B, T, d)."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    frame_mask: Optional[torch.LongTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


@dataclass
class HJPruneCTCOutput(ModelOutput):
    """logits (B, T, V), at padded frames (``frame_mask`` 0) the blank only: 0 for the blank, -inf for the rest;
    frame_mask (B, T) long; hidden_states as :class:`HJPruneModelOutput`."""

    logits: Optional[torch.FloatTensor] = None
    frame_mask: Optional[torch.LongTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


class WeightNormPositionalConv(PositionalConv):
    """The encoder's positional convolution with its weight-norm pair registered as ``g`` and ``v.N``.

    transformers renames a checkpoint key holding ``weight_g`` / ``weight_v`` (torch's old weight norm) to
    ``parametrizations.weight.original0`` / ``original1`` when it loads it (4.x by substring, 5.x by suffix), which
    would leave these weights unloaded (hjprune-export --hf renames them so: ``hf_export.POS_CONV_NAMES``).
    """

    # PositionalConv reads self.weight_g / self.weight_v; while its __init__ registers them under those names,
    # these properties fail (no g / v yet) and nn.Module's __getattr__ finds the registered ones.
    weight_g = property(lambda self: self.g)
    weight_v = property(lambda self: self.v)

    def __init__(self, group_sizes, kernel: int):
        super().__init__(group_sizes, kernel)
        self.g = self._parameters.pop("weight_g")
        self.v = self._modules.pop("weight_v")


class HJPrunePreTrainedModel(PreTrainedModel):
    config_class = HJPruneConfig
    base_model_prefix = "hjprune"  # no module of that name: HJPruneForCTC's encoder keys equal HJPruneModel's
    main_input_name = "input_values"

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: every weight is in model.safetensors, and the modules initialise themselves when built."""

    def _get_feat_extract_output_lengths(self, input_lengths, padded_length: Optional[int] = None) -> torch.Tensor:
        """Real frames of utterances of ``input_lengths`` samples (as transformers' wav2vec2 method of the same name):
        what ``frame_mask`` counts for them, by the spec's frame rule. wav2vec2's (the conv output-length formula)
        needs the lengths alone; HuBERT's (a frame is padding when all its samples are) also the padded length of
        their batch, ``padded_length`` (default: the longest of ``input_lengths``, as a batch padded to its longest)."""
        lengths = torch.as_tensor(input_lengths)
        spec = EncoderSpec.from_dict(self.config.encoder_spec)
        if spec.frame_padding != "hubert":
            return conv_output_lengths(lengths, spec.conv_layers)
        samples = int(lengths.max()) if padded_length is None else int(padded_length)
        flat = lengths.reshape(-1)
        padding = torch.arange(samples, device=flat.device).unsqueeze(0) >= flat.unsqueeze(1)
        frames = int(conv_output_lengths(torch.tensor(samples), spec.conv_layers))
        frame_pad = self.encoder.frame_padding_mask(padding, frames)  # the encoder's own rule, not a copy of it
        real = torch.full_like(flat, frames) if frame_pad is None else (~frame_pad).sum(-1)
        return real.reshape(lengths.shape)


class HJPruneModel(HJPrunePreTrainedModel):
    """The pruned wav2vec2 / HuBERT / WavLM encoder."""

    def __init__(self, config: HJPruneConfig):
        super().__init__(config)
        spec = EncoderSpec.from_dict(config.encoder_spec)
        self.encoder = Wav2Vec2Encoder(spec)
        self.encoder.pos_conv = WeightNormPositionalConv(spec.pos_conv_groups, spec.pos_conv_kernel)
        self.post_init()

    def forward(self, input_values: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        """input_values (B, S); attention_mask (B, S), 1 at real samples -> :class:`HJPruneModelOutput`."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        padding_mask = None if attention_mask is None else attention_mask == 0  # the encoder's: True at padding
        x, frame_pad, layers = self.encoder(input_values, padding_mask, GateMasks(),  # no gates: a slim model
                                            return_layers=bool(output_hidden_states))
        frame_mask = (torch.ones(x.shape[:2], dtype=torch.long, device=x.device) if frame_pad is None
                      else (~frame_pad).long())
        out = HJPruneModelOutput(x, frame_mask, tuple(layers) if output_hidden_states else None)
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()


class HJPruneForCTC(HJPruneModel):
    """The encoder and its linear CTC output layer ``lm_head``; the blank is output ``config.pad_token_id``.

    The encoder is not nested under ``base_model_prefix``: its keys are ``encoder.*`` here as in
    :class:`HJPruneModel`, so ``AutoModel`` takes the encoder of a CTC folder by the same names (and leaves
    ``lm_head`` unused)."""

    def __init__(self, config: HJPruneConfig):
        super().__init__(config)
        self.lm_head = nn.Linear(self.encoder.spec.embed_dim, config.vocab_size)
        self.post_init()

    def forward(self, input_values: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        """input_values (B, S); attention_mask (B, S), 1 at real samples -> :class:`HJPruneCTCOutput`."""
        base = super().forward(input_values, attention_mask, output_hidden_states=output_hidden_states,
                               return_dict=True)
        logits = self.lm_head(base.last_hidden_state)
        # Padded frames decode to the blank, as in fairseq's get_logits (their features come from padding).
        blank_only = torch.full((logits.size(-1),), float("-inf"), dtype=logits.dtype, device=logits.device)
        blank_only[self.config.pad_token_id] = 0
        logits = torch.where(base.frame_mask.bool().unsqueeze(-1), logits, blank_only)
        out = HJPruneCTCOutput(logits, base.frame_mask, base.hidden_states)
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()
