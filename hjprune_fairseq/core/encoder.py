"""A wav2vec2/HuBERT/WavLM encoder whose every prunable unit can be masked, built from an EncoderSpec.

The same modules serve the gated model (masks passed to ``forward``) and the slim model (per-layer
sizes in the spec, no masks). With no masks the computation equals fairseq's ``Wav2Vec2Model`` /
``HubertModel`` feature path (``extract_features``) in eval mode; ``fairseq_import`` maps weights.
A spec with a relative position bias (``rel_pos_buckets`` > 0) is WavLM (Chen et al. 2022): every
layer adds a gated relative position bias to its attention scores, and then equals transformers'
``WavLMModel`` (``hf_import`` maps its weights).

Tensors are batch-first: waveform (B, S), frames (B, T, C). Where the hidden mask ``hidden`` (d,) is
given, it is applied as in CoFiPruning: to the feature projection, to every sub-layer output and to
every LayerNorm output, and each LayerNorm over the hidden size normalises over the kept dims only
(those with a non-zero gate), so a 0/1 mask gives exactly the slim model's output.

Two operations of the training path are fairseq's own and are passed in, not imported
(:class:`TrainingFns`): the time/channel masking of the features (``compute_mask_indices``) and
the gradient scaling of the CNN (``GradMultiply``). The registered models pass fairseq's
(``compat.fairseq_training_fns``); an encoder used without them (inference, a distillation teacher)
needs none.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .gate_state import GateMasks, if_gated
from .spec import EncoderSpec, conv_output_lengths


@dataclass
class MaskingOptions:
    """Time/channel masking of the projected features during fine-tuning (wav2vec2 Sec. 3.2).

    Field meanings are those of fairseq's ``Wav2Vec2AsrConfig`` fields of the same names.
    """

    mask_prob: float = 0.0
    mask_length: int = 10
    mask_selection: str = "static"
    mask_other: float = 0.0
    mask_min_space: int = 1
    require_same_masks: bool = True
    mask_dropout: float = 0.0
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    mask_channel_selection: str = "static"
    mask_channel_other: float = 0.0
    mask_channel_min_space: int = 1
    mask_channel_before: bool = False


@dataclass(frozen=True)
class TrainingFns:
    """The operations of the training path that the encoder takes from outside (fairseq's).

    compute_mask_indices: fairseq's ``data_utils.compute_mask_indices``: ``(shape, padding_mask,
        mask_prob, mask_length, mask_type, mask_other, min_masks=0, no_overlap=False, min_space=0,
        require_same_masks=True, mask_dropout=0.0, seed=None, epoch=None, indices=None)`` -> a (B, N)
        boolean array of masked positions.
    mask_seed: called once per masked batch; the context manager it returns yields the seed given to
        ``compute_mask_indices`` and keeps that function's other random draws reproducible while open.
    grad_multiply: ``(x, scale)`` -> x, whose gradient is multiplied by ``scale`` (fairseq's
        ``GradMultiply.apply``).
    """

    compute_mask_indices: Callable[..., np.ndarray]
    mask_seed: Callable[[], ContextManager[int]]
    grad_multiply: Callable[[torch.Tensor, float], torch.Tensor]


def masked_layer_norm(
    x: torch.Tensor, keep: Optional[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """LayerNorm over the last dim, restricted to the dims where ``keep`` is non-zero.

    Statistics are computed in fp32 (as fairseq's Fp32LayerNorm). The output is multiplied by
    ``keep`` so pruned dims stay exactly zero. Shapes: x (..., C), keep/weight/bias (C,).
    """
    dtype = x.dtype
    x = x.float()
    if keep is None:
        # weight's size, not x's: a traced graph (onnx_export) needs the normalised shape constant
        return F.layer_norm(x, (weight.shape[0],), weight.float(), bias.float(), eps).to(dtype)
    m = (keep != 0).float()
    n = m.sum().clamp(min=1.0)
    mean = (x * m).sum(-1, keepdim=True) / n
    centred = (x - mean) * m
    var = (centred * centred).sum(-1, keepdim=True) / n
    y = centred * torch.rsqrt(var + eps) * weight.float() + bias.float()
    return (y * keep.float()).to(dtype)


class MaskedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm that accepts an optional keep mask over its normalised dim."""

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:  # type: ignore[override]
        return masked_layer_norm(x, keep, self.weight, self.bias, self.eps)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """nn.Linear that may be empty (a slim layer with no head / FFN unit left)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.Linear(n_in, n_out)


def _block(group, i: int) -> Optional[torch.Tensor]:
    """The gate of block ``i`` (a CNN or Transformer layer) of a GateMasks group; None: not gated."""
    return if_gated(group, lambda g: g[i], None)


def _mul(x: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    return x if gate is None else x * gate.to(x.dtype)


class ConvFeatureExtractor(nn.Module):
    """fairseq's ``ConvFeatureExtractionModel`` with a gate per output channel of every layer.

    Layer i: conv -> dropout -> norm -> GELU, its output channels scaled by gate_i. Pruning output
    channel c of layer i also removes input channel c of layer i+1, and of the feature projection.
    Each gate is applied once: to the NEXT conv's weights (W[:, c, :] * gate_i[c], the same product),
    not to the activations, which are largest in the first layers; the last layer's gate is left to
    the encoder's feature LayerNorm (its keep mask), which follows. A layer's own LayerNorm
    (``layer_norm`` mode) takes only the 0/1 keep pattern of its gate: statistics over kept channels.
    """

    def __init__(self, conv_layers: Sequence[Tuple[int, int, int]], conv_bias: bool, mode: str, dropout: float = 0.0):
        super().__init__()
        self.mode = mode
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_ch = 1
        for i, (ch, k, stride) in enumerate(conv_layers):
            self.convs.append(nn.Conv1d(in_ch, ch, k, stride=stride, bias=conv_bias))
            if mode == "layer_norm":
                self.norms.append(MaskedLayerNorm(ch, eps=1e-5))
            elif i == 0:
                self.norms.append(nn.GroupNorm(ch, ch, eps=1e-5, affine=True))
            else:
                self.norms.append(nn.Identity())
            in_ch = ch
        self.dropout = nn.Dropout(dropout)

    def forward(self, wav: torch.Tensor, channel_gates: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """wav (B, S) -> features (B, C_last, T)."""
        x = wav.unsqueeze(1)
        previous: Optional[torch.Tensor] = None  # gate of the previous layer's output channels
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            gate = _block(channel_gates, i)
            weight = conv.weight if previous is None else conv.weight * previous.to(conv.weight.dtype).view(1, -1, 1)
            x = self.dropout(F.conv1d(x, weight, conv.bias, conv.stride))
            if isinstance(norm, MaskedLayerNorm):
                keep = None if gate is None else (gate != 0).to(x.dtype)
                x = norm(x.transpose(1, 2), keep).transpose(1, 2)
            elif isinstance(norm, nn.GroupNorm):
                # One group per channel: channels are normalised independently (fp32 as fairseq).
                x = F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).type_as(x)
            x = F.gelu(x)
            previous = gate
        return x


class PositionalConv(nn.Module):
    """The grouped, weight-normalised convolutional positional embedding of wav2vec2.

    ``group_sizes[g]`` hidden dims form group g (each output dim reads only its own group). A dense
    model has equal groups (one grouped conv); a slim model may have uneven groups (one conv per
    non-empty group). Weight norm (``dim=2``: one norm per kernel tap over all groups) is kept as
    the explicit pair ``weight_g`` (K,) / ``weight_v`` so slimming can rescale ``weight_g``.
    """

    def __init__(self, group_sizes: Sequence[int], kernel: int):
        super().__init__()
        self.group_sizes = [int(g) for g in group_sizes]
        self.kernel = kernel
        self.weight_v = nn.ParameterList([nn.Parameter(torch.empty(n, n, kernel)) for n in self.group_sizes])
        self.weight_g = nn.Parameter(torch.ones(kernel))
        self.bias = nn.Parameter(torch.zeros(sum(self.group_sizes)))
        d = sum(self.group_sizes)
        std = math.sqrt(4.0 / (kernel * d))
        for v in self.weight_v:
            nn.init.normal_(v, mean=0.0, std=std)

    def weights(self) -> List[torch.Tensor]:
        """Per-group effective weights g * v / ||v|| (norm over everything but the kernel tap)."""
        sq = sum((v.float() ** 2).sum(dim=(0, 1)) for v, n in zip(self.weight_v, self.group_sizes) if n)
        scale = (self.weight_g.float() / torch.sqrt(sq)).to(self.weight_g.dtype)
        return [v * scale for v in self.weight_v]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> GELU(conv(x)) (B, T, d), same length ("SamePad")."""
        x = x.transpose(1, 2)
        pad = self.kernel // 2
        ws = self.weights()
        if len(set(self.group_sizes)) == 1:
            y = F.conv1d(x, torch.cat(ws, 0), self.bias, padding=pad, groups=len(ws))
        else:
            outs, start = [], 0
            for w, n in zip(ws, self.group_sizes):
                if n:
                    outs.append(F.conv1d(x[:, start:start + n], w, padding=pad))
                start += n
            y = torch.cat(outs, 1) + self.bias.unsqueeze(-1)
        if self.kernel % 2 == 0:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """WavLM's bucket of every (query, key) offset -> (T, T) long, T = ``length``.

    Half the buckets are for keys after the query, half for the others; in each half, offsets below
    ``num_buckets // 4`` have a bucket each and larger ones share log-spaced buckets up to
    ``max_distance`` (the last bucket takes everything beyond). The same maths as transformers'
    ``WavLMAttention._relative_positions_bucket`` (T5's bidirectional buckets), written for this module.
    """
    pos = torch.arange(length, device=device)
    offset = pos.view(1, -1) - pos.view(-1, 1)  # key - query
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    far = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return (offset > 0).long() * half + torch.where(distance < exact, distance, far)


class SelfAttention(nn.Module):
    """Multi-head self-attention with per-head gates; ``num_heads`` may be 0 (bias only).

    ``qk_dims`` / ``vo_dims`` give each head its own query/key and value/output sizes (a model after
    fine-grained pruning); the scale stays 1/sqrt(head_dim), as in the model it was pruned from.
    Heads of one size run in one attention call. A head with no query/key dim scores every key 0:
    it attends uniformly to the unpadded keys, as the masked model does.

    ``rel_pos`` (WavLM): the scores of every head get the relative position bias of the head it was in
    the unpruned model (``head_ids`` (H,): its row of the encoder's shared bias), scaled per query
    by a gate computed from the layer input (:meth:`position_gate`), whatever the head's query/key
    dims (a head without any scores the gated bias only). ``rel_gate`` (head_dim -> 8) is kept whole,
    ``rel_gate_const`` (H,) is one value per kept head, and ``rel_gate_index`` (H, head_dim) says where
    each dim of a head's ORIGINAL slice of the hidden vector is in this (possibly slim) hidden vector,
    or ``embed_dim`` where that dim was pruned (it reads a zero, as the masked model's pruned dims are).
    A layer without heads has none of these. Keeping the original head index per kept head follows
    DPHuBERT's ``WavLMSelfAttention.remaining_heads`` (github.com/pyf98/DPHuBERT, wav2vec2/components.py),
    which slices the gated bias of all heads; here only the kept heads' gates are computed.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0,
                 qk_dims: Optional[List[int]] = None, vo_dims: Optional[List[int]] = None, rel_pos: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        self.qk_dims = list(qk_dims) if qk_dims is not None else [head_dim] * num_heads
        self.vo_dims = list(vo_dims) if vo_dims is not None else [head_dim] * num_heads
        self.uniform = set(self.qk_dims) <= {head_dim} and set(self.vo_dims) <= {head_dim}
        self.by_size: Dict[Tuple[int, int], List[int]] = {}
        for h, size in enumerate(zip(self.qk_dims, self.vo_dims)):
            self.by_size.setdefault(size, []).append(h)
        self.q_proj = _linear(embed_dim, sum(self.qk_dims))
        self.k_proj = _linear(embed_dim, sum(self.qk_dims))
        self.v_proj = _linear(embed_dim, sum(self.vo_dims))
        self.out_proj = _linear(sum(self.vo_dims), embed_dim)
        self.rel_pos = rel_pos and num_heads > 0
        if self.rel_pos:
            self.rel_gate = nn.Linear(head_dim, 8)
            self.rel_gate_const = nn.Parameter(torch.ones(num_heads))
            # The dense layout; a slim model loads its own values. Dims beyond embed_dim read the pad.
            self.register_buffer("head_ids", torch.arange(num_heads))
            self.register_buffer("rel_gate_index", torch.arange(num_heads * head_dim).clamp(max=embed_dim).view(num_heads, head_dim))

    def position_gate(self, x: torch.Tensor) -> torch.Tensor:
        """WavLM's gate of the relative position bias, per head and query: x (B, T, d) -> (B, H, T, 1), fp32.

        Each head reads its original head_dim slice of the hidden vector (``rel_gate_index``; pruned
        dims read 0): rel_gate -> 8 values -> two sums of 4 -> sigmoid -> a, b;
        gate = a * (b * rel_gate_const - 1) + 2 (transformers' ``WavLMAttention.forward``).
        """
        B, T, d = x.shape
        padded = torch.cat([x.float(), x.new_zeros(B, T, 1, dtype=torch.float32)], -1)
        chunks = padded[..., self.rel_gate_index]  # (B, T, H, head_dim)
        proj = F.linear(chunks, self.rel_gate.weight.float(), self.rel_gate.bias.float())
        a, b = torch.sigmoid(proj.view(B, T, self.num_heads, 2, 4).sum(-1)).unbind(-1)
        gate = a * (b * self.rel_gate_const.float() - 1.0) + 2.0  # (B, T, H)
        return gate.transpose(1, 2).unsqueeze(-1)

    def forward(
        self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None, head_gate: Optional[torch.Tensor] = None,
        qk_gate: Optional[torch.Tensor] = None, vo_gate: Optional[torch.Tensor] = None,
        position_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (B, T, d); key_padding_mask (B, T) True at padding; head_gate (H,), qk_gate / vo_gate
        (H, head_dim); position_bias (rel_pos_heads, T, T) fp32, the encoder's ungated relative position
        bias (needed with ``rel_pos``) -> (B, T, d)."""
        B, T, _ = x.shape
        if self.num_heads == 0:
            # Every head pruned: the block reduces to its output bias (the layer keeps its residual).
            return self.out_proj.bias.to(x.dtype).expand(B, T, -1)
        attn_mask = None
        if self.rel_pos:
            if position_bias is None:
                raise ValueError("a WavLM attention layer needs the encoder's position_bias, got None")
            # Float mask (B, H, T, T): gated bias in fp32, cast to the activations' dtype, -inf at padded keys.
            bias = (self.position_gate(x) * position_bias[self.head_ids]).to(x.dtype)
            attn_mask = bias if key_padding_mask is None else bias.masked_fill_(key_padding_mask.view(B, 1, 1, T), float("-inf"))
        elif key_padding_mask is not None:
            attn_mask = (~key_padding_mask).view(B, 1, 1, T)
        dropout = self.dropout if self.training else 0.0
        scale = self.head_dim ** -0.5
        if not self.uniform:
            return self.out_proj(self._per_size(x, attn_mask, dropout, scale, head_gate))

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if qk_gate is not None:  # a pruned query dim removes that term of every score (and the key dim)
            q = q * qk_gate.to(q.dtype).view(1, self.num_heads, 1, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=scale)
        if vo_gate is not None:
            y = y * vo_gate.to(y.dtype).view(1, self.num_heads, 1, self.head_dim)
        if head_gate is not None:
            y = y * head_gate.to(y.dtype).view(1, -1, 1, 1)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _per_size(self, x, attn_mask, dropout: float, scale: float, head_gate) -> torch.Tensor:
        """Heads of uneven sizes: one attention call per (qk, vo) size -> (B, T, sum of vo dims).

        ``attn_mask`` is (B, 1, 1, T) boolean, or (B, H, T, T) float (WavLM: sliced per call)."""
        B, T, _ = x.shape
        qs = torch.split(self.q_proj(x), self.qk_dims, dim=-1)
        ks = torch.split(self.k_proj(x), self.qk_dims, dim=-1)
        vs = torch.split(self.v_proj(x), self.vo_dims, dim=-1)
        ys: List[Optional[torch.Tensor]] = [None] * self.num_heads
        for (dq, _), idx in self.by_size.items():
            v = torch.stack([vs[h] for h in idx], 1)
            if dq == 0:
                q = k = x.new_zeros(B, len(idx), T, 1)
            else:
                q, k = torch.stack([qs[h] for h in idx], 1), torch.stack([ks[h] for h in idx], 1)
            mask = attn_mask[:, idx] if attn_mask is not None and attn_mask.dtype != torch.bool else attn_mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
            for j, h in enumerate(idx):
                ys[h] = y[:, j] if head_gate is None else y[:, j] * head_gate[h].to(y.dtype)
        return torch.cat(ys, dim=-1)


class FeedForward(nn.Module):
    """fc1 -> GELU -> x * gate -> dropout -> fc2; ``ffn_dim`` may be 0 (bias only)."""

    def __init__(self, embed_dim: int, ffn_dim: int, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = _linear(embed_dim, ffn_dim)
        self.fc2 = _linear(ffn_dim, embed_dim)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor, unit_gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fc1.out_features == 0:
            return self.fc2.bias.to(x.dtype).expand(*x.shape[:-1], -1)
        h = _mul(F.gelu(self.fc1(x)), unit_gate)
        return self.fc2(self.dropout(h))


class EncoderLayer(nn.Module):
    """fairseq's ``TransformerSentenceEncoderLayer`` (post-LN or pre-LN) with gates."""

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, ffn_dim: int, layer_norm_first: bool,
        dropout: float = 0.0, attention_dropout: float = 0.0, activation_dropout: float = 0.0,
        qk_dims: Optional[List[int]] = None, vo_dims: Optional[List[int]] = None, rel_pos: bool = False,
    ):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = SelfAttention(embed_dim, num_heads, head_dim, attention_dropout, qk_dims, vo_dims, rel_pos)
        self.self_attn_layer_norm = MaskedLayerNorm(embed_dim, eps=1e-5)
        self.ffn = FeedForward(embed_dim, ffn_dim, activation_dropout)
        self.final_layer_norm = MaskedLayerNorm(embed_dim, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], head_gate: Optional[torch.Tensor] = None,
        ffn_gate: Optional[torch.Tensor] = None, hidden: Optional[torch.Tensor] = None,
        qk_gate: Optional[torch.Tensor] = None, vo_gate: Optional[torch.Tensor] = None,
        position_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self.layer_norm_first:
            a = self.self_attn(self.self_attn_layer_norm(x, hidden), padding_mask, head_gate, qk_gate, vo_gate,
                               position_bias)
            x = x + self.dropout(_mul(a, hidden))
            f = self.ffn(self.final_layer_norm(x, hidden), ffn_gate)
            return x + self.dropout(_mul(f, hidden))
        a = self.self_attn(x, padding_mask, head_gate, qk_gate, vo_gate, position_bias)
        x = self.self_attn_layer_norm(x + self.dropout(_mul(a, hidden)), hidden)
        f = self.ffn(x, ffn_gate)
        return self.final_layer_norm(x + self.dropout(_mul(f, hidden)), hidden)


class Wav2Vec2Encoder(nn.Module):
    """CNN feature extractor + feature projection + Transformer, from an :class:`EncoderSpec`.

    Parameter names mirror fairseq where a module has a fairseq twin (``layer_norm``,
    ``post_extract_proj``, ``mask_emb``, ``layers.N.self_attn.q_proj`` ...). WavLM's relative position
    table ``rel_pos_embed`` (buckets, rel_pos_heads) is one for all layers (transformers keeps it in
    layer 0): the encoder looks it up once per forward and every layer gates it.
    """

    # onnx_export sets it: compute the frame padding mask for every input, even one without padding,
    # so that a traced graph keeps padding as an input (the "no padding" shortcut would freeze into it).
    trace_padding = False

    def __init__(
        self, spec: EncoderSpec, dropout: float = 0.0, attention_dropout: float = 0.0,
        activation_dropout: float = 0.0, dropout_input: float = 0.0, layerdrop: float = 0.0,
        feature_grad_mult: float = 1.0, masking: Optional[MaskingOptions] = None,
        training_fns: Optional[TrainingFns] = None,
    ):
        super().__init__()
        masking = masking or MaskingOptions()
        if training_fns is None and (masking.mask_prob > 0 or masking.mask_channel_prob > 0):
            raise ValueError("feature masking (mask_prob / mask_channel_prob > 0) needs training_fns "
                             "(compute_mask_indices), got none")
        if training_fns is None and feature_grad_mult > 0 and feature_grad_mult != 1.0:
            raise ValueError(f"feature_grad_mult={feature_grad_mult} needs training_fns (grad_multiply), got none")
        self.spec = spec
        d = spec.embed_dim
        self.feature_extractor = ConvFeatureExtractor(spec.conv_layers, spec.conv_bias, spec.extractor_mode)
        self.layer_norm = MaskedLayerNorm(spec.conv_dim, eps=1e-5)
        self.post_extract_proj = nn.Linear(spec.conv_dim, d)
        self.mask_emb = nn.Parameter(torch.empty(d).uniform_())
        self.pos_conv = PositionalConv(spec.pos_conv_groups, spec.pos_conv_kernel)
        self.encoder_layer_norm = MaskedLayerNorm(d, eps=1e-5)
        self.layers = nn.ModuleList(
            EncoderLayer(d, h, spec.head_dim, f, spec.layer_norm_first, dropout, attention_dropout, activation_dropout,
                         spec.head_qk(i), spec.head_vo(i), spec.has_rel_pos)
            for i, (h, f) in enumerate(zip(spec.num_heads, spec.ffn_dims))
        )
        if spec.has_rel_pos:
            self.rel_pos_embed = nn.Embedding(spec.rel_pos_buckets, spec.rel_pos_heads)
        self.dropout_input = nn.Dropout(dropout_input)
        self.dropout = nn.Dropout(dropout)
        self.layerdrop = layerdrop
        self.feature_grad_mult = feature_grad_mult
        self.masking = masking
        self.training_fns = training_fns

    def frame_padding_mask(self, padding_mask: Optional[torch.Tensor], num_frames: int) -> Optional[torch.Tensor]:
        """Sample-level padding (B, S) -> frame-level padding (B, T), by the spec's rule."""
        if padding_mask is None or (not self.trace_padding and not padding_mask.any()):
            return None
        if self.spec.frame_padding == "hubert":  # samples past the last whole frame are dropped, as fairseq
            usable = num_frames * (padding_mask.size(1) // num_frames)  # no branch on the length: it traces
            return padding_mask[:, :usable].view(padding_mask.size(0), num_frames, -1).all(-1)
        lengths = conv_output_lengths((~padding_mask).long().sum(-1), self.spec.conv_layers)
        return torch.arange(num_frames, device=padding_mask.device).unsqueeze(0) >= lengths.unsqueeze(1)

    def position_bias(self, num_frames: int) -> Optional[torch.Tensor]:
        """WavLM's ungated relative position bias (rel_pos_heads, T, T) in fp32; None without one."""
        if not self.spec.has_rel_pos:
            return None
        buckets = relative_position_buckets(num_frames, self.spec.rel_pos_buckets, self.spec.rel_pos_max_distance,
                                            self.rel_pos_embed.weight.device)
        # Contiguous (H, T, T): a head-major layout keeps every layer's gating and its attention mask
        # in the layout SDPA reads fastest (a permuted view made the gating about twice as slow on CPU).
        return F.embedding(buckets, self.rel_pos_embed.weight).float().permute(2, 0, 1).contiguous()

    def apply_mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Time masking with ``mask_emb`` and channel masking with zeros (fairseq's apply_mask)."""
        if self.training_fns is None:
            raise ValueError("apply_mask needs training_fns (compute_mask_indices), got none")
        compute_mask_indices = self.training_fns.compute_mask_indices
        m = self.masking
        B, T, C = x.shape
        rows = torch.arange(B)

        def channel_mask(seed: int) -> torch.Tensor:
            idx = compute_mask_indices(
                (B, C), None, m.mask_channel_prob, m.mask_channel_length, m.mask_channel_selection,
                m.mask_channel_other, no_overlap=False, min_space=m.mask_channel_min_space,
                seed=seed, epoch=1, indices=rows,
            )
            return torch.from_numpy(idx).to(x.device).unsqueeze(1).expand(-1, T, -1)

        with self.training_fns.mask_seed() as seed:
            if m.mask_channel_prob > 0 and m.mask_channel_before:
                x = x.masked_fill(channel_mask(seed + 1), 0.0)
            if m.mask_prob > 0:
                idx = compute_mask_indices(
                    (B, T), padding_mask, m.mask_prob, m.mask_length, m.mask_selection, m.mask_other,
                    min_masks=2, no_overlap=False, min_space=m.mask_min_space,
                    require_same_masks=m.require_same_masks, mask_dropout=m.mask_dropout,
                    seed=seed, epoch=1, indices=rows,
                )
                time = torch.from_numpy(np.asarray(idx)).to(x.device).unsqueeze(-1)
                x = torch.where(time, self.mask_emb.to(x.dtype), x)
            if m.mask_channel_prob > 0 and not m.mask_channel_before:
                x = x.masked_fill(channel_mask(seed + 1), 0.0)
        return x

    def extract_cnn(self, source: torch.Tensor, gates: GateMasks) -> torch.Tensor:
        if self.feature_grad_mult > 0:
            feats = self.feature_extractor(source, gates.conv)
            if self.feature_grad_mult != 1.0:
                feats = self.training_fns.grad_multiply(feats, self.feature_grad_mult)
            return feats
        with torch.no_grad():
            return self.feature_extractor(source, gates.conv)

    def forward(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
        gates: Optional[GateMasks] = None, mask: bool = False, return_layers: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        """source (B, S) waveform, padding_mask (B, S) True at padding.

        Returns (x (B, T, d), frame padding mask (B, T) or None, hidden states if asked). With
        ``return_layers`` the hidden states are [Transformer input, layer 1, ..., layer L outputs],
        each (B, T, d); a layer skipped by layerdrop has no entry. Entry 0 is the projected
        features that enter the Transformer, before the positional conv: DPHuBERT's "layer 0"
        (github.com/pyf98/DPHuBERT, wav2vec2/components.py, ``Encoder.extract_features``).
        """
        gates = gates or GateMasks()
        hidden = gates.hidden
        feats = self.extract_cnn(source, gates).transpose(1, 2)
        last_conv_gate = _block(gates.conv, -1)
        feats = self.layer_norm(feats, last_conv_gate)  # the last conv layer's gate, applied once
        frame_pad = self.frame_padding_mask(padding_mask, feats.size(1))
        x = self.dropout_input(self.post_extract_proj(feats))
        if mask:
            x = self.apply_mask(x, frame_pad)
        x = _mul(x, hidden)

        if frame_pad is not None:
            x = x.masked_fill(frame_pad.unsqueeze(-1), 0.0)
        outputs: List[torch.Tensor] = [x] if return_layers else []
        x = x + _mul(self.pos_conv(x), hidden)
        if not self.spec.layer_norm_first:
            x = self.encoder_layer_norm(x, hidden)
        x = self.dropout(x)
        position_bias = self.position_bias(x.size(1))

        for i, layer in enumerate(self.layers):
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x = layer(
                x, frame_pad,
                head_gate=_block(gates.heads, i), ffn_gate=_block(gates.ffn, i), hidden=hidden,
                qk_gate=_block(gates.qk, i), vo_gate=_block(gates.vo, i), position_bias=position_bias,
            )
            if return_layers:
                outputs.append(x)
        if self.spec.layer_norm_first:
            x = self.encoder_layer_norm(x, hidden)
        return x, frame_pad, outputs
