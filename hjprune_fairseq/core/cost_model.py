"""Parameters and multiply-accumulates of a wav2vec2-style encoder: the project's one cost model.

Pure functions of an :class:`EncoderSpec` and optional per-unit keep values (probabilities for the
expected, differentiable cost used in training; 0/1 masks for a deterministic structure; nothing for
the spec's own sizes). Used by the criterion, ``hjprune-cost``, the export checks and the tests.

What is counted, with T frames of hidden size d (DeepSpeed flops-profiler convention, HJ-Pruning
Eq. 10-12; biases, norms, activations and softmax cost no MACs):
- cnn: every conv layer, MAC = T_out * C_out * C_in * K (Eq. 12); params = weights, biases, norms.
- pos_conv: the grouped positional conv, MAC = T * K * sum_g n_g^2 (Eq. 12 per group); params =
  weight_v, weight_g (K) and bias.
- attention: q/k/v/out projections and scores, MAC = 4*T*h*d*d_head + 2*T^2*h*d_head (Eq. 10);
  params include the self-attention LayerNorm. With per-head sizes (fine-grained pruning), h*d_head
  splits into QK = sum of query/key dims and VO = sum of value/output dims over the kept heads:
  MAC = 2*T*d*QK + 2*T*d*VO + T^2*QK + T^2*VO.
- WavLM's gated relative position bias (in attention): the bias table (buckets x original heads,
  kept whole, no MACs: a lookup); per layer with a head left, rel_gate (head_dim -> 8, kept whole) and
  one rel_gate_const per kept head; rel_gate's MAC = 8*T*h*d_head per layer (h: heads with a
  value/output dim, which export keeps). Scaling and adding the bias are element-wise: no MACs.
- ffn: MAC = 2*T*d*d_int (Eq. 11); params include the final LayerNorm.
- other: feature LayerNorm, feature projection (MAC = T * C_last * d), mask embedding, encoder
  LayerNorm.
- head: the task's output layer, reported apart from the encoder: MAC = T * d * V for a per-frame
  (CTC) head, d * V for an utterance classifier (``head_per_frame=False``).
Kept counts are sums of keep values (expected L0, Eq. 3), so every quantity is differentiable in
log_alpha. Input channels of conv i are the kept output channels of conv i-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from hjprune_manifests.audio import SAMPLE_RATE

from . import measures
from .gate_state import GateMasks, if_gated
from .spec import EncoderSpec, conv_output_lengths

Number = Union[int, float, torch.Tensor]
COMPONENTS = ("cnn", "pos_conv", "attention", "ffn", "other")


@dataclass
class Counts:
    """Kept units of every group (ints, or float tensors for expected counts)."""

    conv: List[Number]
    heads: List[Number]
    ffn: List[Number]
    pos_groups: List[Number]  # kept hidden dims in each positional-conv group
    qk: List[Number]  # per layer: query/key dims summed over the kept heads
    vo: List[Number]  # per layer: value/output dims summed over the kept heads
    attn_heads: List[Number] = field(default_factory=list)  # per layer: kept heads with a value/output dim

    @property
    def hidden(self) -> Number:
        return sum(self.pos_groups)


@dataclass
class Cost:
    """Params and MACs per component (and per layer), encoder totals and the output head."""

    params: Dict[str, Number]
    macs: Dict[str, Number]
    head_params: Number
    head_macs: Number
    frames: int
    counts: Counts  # the kept units the cost was computed from
    layer_macs: Dict[str, List[Number]] = field(default_factory=dict)

    @property
    def encoder_params(self) -> Number:
        return sum(self.params[c] for c in COMPONENTS)

    @property
    def encoder_macs(self) -> Number:
        return sum(self.macs[c] for c in COMPONENTS)

    @property
    def total_params(self) -> Number:
        return self.encoder_params + self.head_params

    @property
    def total_macs(self) -> Number:
        return self.encoder_macs + self.head_macs

    @property
    def transformer_params(self) -> Number:
        """Everything but the CNN (the 'Transformer' of HJ-Pruning-SepSize, Eq. 9)."""
        return self.encoder_params - self.params["cnn"]


def counts(spec: EncoderSpec, keep: Optional[GateMasks] = None) -> Counts:
    """Kept units: the spec's sizes, replaced by sums of ``keep`` values for each gated group."""
    keep = keep or GateMasks()

    f64 = torch.float64

    def totals(blocks) -> List[torch.Tensor]:
        # float64: counts of a wav2vec2-base exceed 2**24, where float32 stops being exact.
        return [k.sum(dtype=f64) for k in blocks]

    conv = if_gated(keep.conv, totals, [c for c, _, _ in spec.conv_layers])
    heads = if_gated(keep.heads, totals, list(spec.num_heads))
    ffn = if_gated(keep.ffn, totals, list(spec.ffn_dims))
    pos_groups = if_gated(keep.hidden, lambda h: totals(torch.split(h, spec.pos_conv_groups)), list(spec.pos_conv_groups))

    qk, vo, attn_heads = [], [], []
    for i in range(spec.num_layers):
        full_qk, full_vo = spec.head_qk(i), spec.head_vo(i)
        if keep.heads is None and keep.qk is None and keep.vo is None:  # no attention gate: exact ints
            qk.append(sum(full_qk))
            vo.append(sum(full_vo))
            attn_heads.append(spec.num_heads[i])
            continue
        # Per head: its kept dims, times its keep value; a head without value/output dims is gone,
        # query/key dims included (min(1, VO_h): exact for 0/1 masks, 1 for any real expected head).
        q_h = if_gated(keep.qk, lambda g: g[i].sum(-1, dtype=f64), torch.tensor(full_qk, dtype=f64))
        v_h = if_gated(keep.vo, lambda g: g[i].sum(-1, dtype=f64), torch.tensor(full_vo, dtype=f64))
        z = if_gated(keep.heads, lambda g: g[i].to(f64), 1.0)
        qk.append((z * q_h * v_h.clamp(max=1.0)).sum())
        vo.append((z * v_h).sum())
        attn_heads.append((z * v_h.clamp(max=1.0)).sum())
    return Counts(conv, heads, ffn, pos_groups, qk, vo, attn_heads)


def at_most_one(n: Number) -> Number:
    """min(1, n): 1 when a group of units keeps any (exact for 0/1 masks, differentiable below 1)."""
    return n.clamp(max=1.0) if isinstance(n, torch.Tensor) else min(1, n)


def position_bias_cost(spec: EncoderSpec, attn_heads: List[Number], T: int):
    """WavLM's gated relative position bias: (params, per-layer MACs); zero without one.

    attn_heads: kept heads per layer. Params: the table (whole) + per layer with a head, rel_gate
    (8 * head_dim + 8) + one rel_gate_const per head. MACs: rel_gate on every head's slice, every frame.
    """
    if not spec.has_rel_pos:
        return 0, [0] * len(attn_heads)
    gate = 8 * spec.head_dim + 8
    params = spec.rel_pos_buckets * spec.rel_pos_heads + sum(gate * at_most_one(h) + h for h in attn_heads)
    return params, [8 * T * h * spec.head_dim for h in attn_heads]


def frames_for(spec: EncoderSpec, seconds: float, sample_rate: int = SAMPLE_RATE) -> List[int]:
    """Output length of every CNN layer for ``seconds`` of audio; the last one is T."""
    if seconds <= 0:
        raise ValueError(f"virtual input length must be positive, got {seconds} s")
    n = torch.tensor(int(round(seconds * sample_rate)))
    lengths = []
    for layer in spec.conv_layers:
        n = conv_output_lengths(n, [layer])
        lengths.append(int(n))
    if lengths[-1] <= 0:
        raise ValueError(f"{seconds} s of audio is too short for the CNN (no output frame)")
    return lengths


def cost(
    spec: EncoderSpec, keep: Optional[GateMasks] = None, seconds: float = 10.0, vocab_size: int = 0,
    sample_rate: int = SAMPLE_RATE, head_per_frame: bool = True,
) -> Cost:
    """Params and MACs of the encoder (plus a ``vocab_size`` output head) at ``seconds`` of audio."""
    c = counts(spec, keep)
    lengths = frames_for(spec, seconds, sample_rate)
    T = lengths[-1]
    d = c.hidden
    K = spec.pos_conv_kernel

    cnn_p: Number = 0
    cnn_m: List[Number] = []
    c_in: Number = 1
    for i, ((_, k, _), c_out, t_out) in enumerate(zip(spec.conv_layers, c.conv, lengths)):
        cnn_p = cnn_p + c_out * c_in * k + (c_out if spec.conv_bias else 0)
        if spec.extractor_mode == "layer_norm" or i == 0:
            cnn_p = cnn_p + 2 * c_out
        cnn_m.append(t_out * c_out * c_in * k)
        c_in = c_out
    c_last = c_in

    sq = sum(n * n for n in c.pos_groups)
    bias_p, bias_m = position_bias_cost(spec, c.attn_heads, T)
    att_m = [2 * T * d * (qk + vo) + T * T * (qk + vo) + b for qk, vo, b in zip(c.qk, c.vo, bias_m)]
    ffn_m = [2 * T * d * f for f in c.ffn]
    params = {
        "cnn": cnn_p,
        "pos_conv": K * sq + K + d,
        "attention": sum(2 * d * (qk + vo) + 2 * qk + vo + d + 2 * d for qk, vo in zip(c.qk, c.vo)) + bias_p,
        "ffn": sum(2 * d * f + f + d + 2 * d for f in c.ffn),
        "other": 2 * c_last + c_last * d + d + d + 2 * d,
    }
    macs = {
        "cnn": sum(cnn_m),
        "pos_conv": T * K * sq,
        "attention": sum(att_m),
        "ffn": sum(ffn_m),
        "other": T * c_last * d,
    }
    return Cost(
        params=params, macs=macs, head_params=(d * vocab_size + vocab_size) if vocab_size else 0,
        head_macs=(T if head_per_frame else 1) * d * vocab_size, frames=T, counts=c,
        layer_macs={"cnn": cnn_m, "attention": att_m, "ffn": ffn_m},
    )


def to_float(x: Number) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def report(
    spec: EncoderSpec, keep: Optional[GateMasks] = None, seconds: float = 10.0, vocab_size: int = 0,
    reference: Optional[EncoderSpec] = None, head_per_frame: bool = True,
) -> Dict:
    """A JSON-ready summary: totals, per component, per layer (kept units and GMACs).

    Sparsities compare the encoder with ``reference`` (the unpruned encoder; default: ``spec``).
    """
    c = cost(spec, keep, seconds, vocab_size, head_per_frame=head_per_frame)
    k = c.counts
    dense = cost(reference or spec, None, seconds, vocab_size, head_per_frame=head_per_frame)
    g = 1e9
    return {
        "seconds": seconds,
        "frames": c.frames,
        "params": int(round(to_float(c.total_params))),
        "encoder_params": int(round(to_float(c.encoder_params))),
        "gmacs": to_float(c.total_macs) / g,
        "encoder_gmacs": to_float(c.encoder_macs) / g,
        "params_by_component": {n: int(round(to_float(v))) for n, v in c.params.items()} | {"head": int(to_float(c.head_params))},
        "gmacs_by_component": {n: to_float(v) / g for n, v in c.macs.items()} | {"head": to_float(c.head_macs) / g},
        "cnn_macs_share": to_float(c.macs["cnn"]) / to_float(c.total_macs),
        "size_sparsity": to_float(measures.size(c, dense)["size"]),
        "macs_sparsity": to_float(measures.macs(c, dense)["macs"]),
        "cnn_size_sparsity": to_float(measures.sep_size(c, dense)["cnn"]),
        "transformer_size_sparsity": to_float(measures.sep_size(c, dense)["transformer"]),
        "hidden": to_float(k.hidden),
        "layers": {
            "conv_channels": [to_float(v) for v in k.conv],
            "heads": [to_float(v) for v in k.heads],
            "qk_dims": [to_float(v) for v in k.qk],
            "vo_dims": [to_float(v) for v in k.vo],
            "ffn_units": [to_float(v) for v in k.ffn],
            "cnn_gmacs": [to_float(v) / g for v in c.layer_macs["cnn"]],
            "attention_gmacs": [to_float(v) / g for v in c.layer_macs["attention"]],
            "ffn_gmacs": [to_float(v) / g for v in c.layer_macs["ffn"]],
        },
    }
