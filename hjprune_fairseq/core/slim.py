"""Physically remove pruned units: a gated encoder's state dict + 0/1 masks -> a slim spec and state.

Every kept unit keeps its weights; every matrix that reads or writes a pruned unit loses the
matching rows/columns: a conv output channel (and the next conv's / feature projection's input), a
head (its q/k/v rows and out_proj columns), a query/key dim of a head (q and k rows) or a
value/output dim (v row, out_proj column), an FFN unit (fc1 row, fc2 column) and a hidden dim
(every matrix, LayerNorm, bias, mask embedding and positional-conv group over the residual stream).
The positional conv's weight norm is preserved: ``weight_g`` is rescaled by ||v_kept|| / ||v|| so
g * v / ||v|| is unchanged on the kept entries.

Whole layers: a CNN layer or the hidden size with no unit left cannot be exported (the network
would output a constant) -> ValueError. A Transformer layer with no head (or no FFN unit) keeps its
residual path: the block reduces to its output bias, as in the masked model. A head with no
value/output dim left is dropped; one with no query/key dim is kept (it attends uniformly).

WavLM's relative position bias: the table ``rel_pos_embed`` (columns = the original heads) and every
layer's ``rel_gate`` are kept whole; ``rel_gate_const`` keeps the kept heads' values, ``head_ids`` their
original head index, and ``rel_gate_index`` (where each dim of a head's original hidden slice is) is
renumbered to the kept hidden dims, pruned ones pointing one past the end (a zero pad). A layer with no
head left keeps none of them.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from .gate_state import GateMasks, if_gated
from .spec import EncoderSpec

State = Dict[str, torch.Tensor]


def kept_indices(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask.detach() != 0, as_tuple=False).flatten()


def _all(n: int) -> torch.Tensor:
    return torch.arange(n)


def slim_encoder(spec: EncoderSpec, state: State, masks: GateMasks, source: str = "model") -> Tuple[EncoderSpec, State]:
    """Return (slim spec, slim state dict). ``source`` names the checkpoint in error messages."""
    def each_kept(blocks) -> List[torch.Tensor]:
        return [kept_indices(m) for m in blocks]

    conv_idx = if_gated(masks.conv, each_kept, [_all(c) for c, _, _ in spec.conv_layers])
    head_idx = if_gated(masks.heads, each_kept, [_all(h) for h in spec.num_heads])
    ffn_idx = if_gated(masks.ffn, each_kept, [_all(f) for f in spec.ffn_dims])
    hid = if_gated(masks.hidden, kept_indices, _all(spec.embed_dim))
    for i, idx in enumerate(conv_idx):
        if idx.numel() == 0:
            raise ValueError(f"{source}: every output channel of CNN layer {i} is pruned; cannot export "
                             "(expected at least one kept channel per CNN layer)")
    if hid.numel() == 0:
        raise ValueError(f"{source}: every hidden dimension is pruned; cannot export (expected at least one)")

    out: State = {}
    # CNN: output channels of layer i, input channels = kept outputs of layer i-1.
    prev = torch.tensor([0])
    for i, idx in enumerate(conv_idx):
        p = f"feature_extractor.convs.{i}."
        out[p + "weight"] = state[p + "weight"][idx][:, prev]
        if p + "bias" in state:
            out[p + "bias"] = state[p + "bias"][idx]
        for n in ("weight", "bias"):
            key = f"feature_extractor.norms.{i}.{n}"
            if key in state:
                out[key] = state[key][idx]
        prev = idx
    for n in ("weight", "bias"):
        out[f"layer_norm.{n}"] = state[f"layer_norm.{n}"][prev]
        out[f"encoder_layer_norm.{n}"] = state[f"encoder_layer_norm.{n}"][hid]
    out["post_extract_proj.weight"] = state["post_extract_proj.weight"][hid][:, prev]
    out["post_extract_proj.bias"] = state["post_extract_proj.bias"][hid]
    out["mask_emb"] = state["mask_emb"][hid]

    # Positional conv: keep, inside every group, the kept hidden dims of that group.
    groups: List[int] = []
    vs = []
    start = 0
    for g, n in enumerate(spec.pos_conv_groups):
        local = hid[(hid >= start) & (hid < start + n)] - start
        v = state[f"pos_conv.weight_v.{g}"]
        vs.append((v, v[local][:, local]))
        groups.append(int(local.numel()))
        start += n
    full_norm = torch.sqrt(sum((v.float() ** 2).sum(dim=(0, 1)) for v, _ in vs))
    kept_norm = torch.sqrt(sum((s.float() ** 2).sum(dim=(0, 1)) for _, s in vs))
    g_old = state["pos_conv.weight_g"]
    out["pos_conv.weight_g"] = (g_old.float() * kept_norm / full_norm).to(g_old.dtype)
    for g, (_, s) in enumerate(vs):
        out[f"pos_conv.weight_v.{g}"] = s
    out["pos_conv.bias"] = state["pos_conv.bias"][hid]
    if spec.has_rel_pos:
        out["rel_pos_embed.weight"] = state["rel_pos_embed.weight"]

    fine = masks.qk is not None or masks.vo is not None or spec.qk_dims is not None or spec.vo_dims is not None
    qk_dims: List[List[int]] = []
    vo_dims: List[List[int]] = []
    num_heads: List[int] = []
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        qk_rows, vo_rows, qk_dims_i, vo_dims_i, kept_heads = _head_rows(spec, i, head_idx[i], masks)
        for proj, rows in (("q_proj", qk_rows), ("k_proj", qk_rows), ("v_proj", vo_rows)):
            out[f"{p}self_attn.{proj}.weight"] = state[f"{p}self_attn.{proj}.weight"][rows][:, hid]
            out[f"{p}self_attn.{proj}.bias"] = state[f"{p}self_attn.{proj}.bias"][rows]
        out[f"{p}self_attn.out_proj.weight"] = state[f"{p}self_attn.out_proj.weight"][hid][:, vo_rows]
        qk_dims.append(qk_dims_i)
        vo_dims.append(vo_dims_i)
        num_heads.append(len(vo_dims_i))
        out[f"{p}self_attn.out_proj.bias"] = state[f"{p}self_attn.out_proj.bias"][hid]
        if spec.has_rel_pos and kept_heads:
            out.update(_position_gate(state, f"{p}self_attn.", kept_heads, hid, spec.embed_dim))
        out[f"{p}ffn.fc1.weight"] = state[f"{p}ffn.fc1.weight"][ffn_idx[i]][:, hid]
        out[f"{p}ffn.fc1.bias"] = state[f"{p}ffn.fc1.bias"][ffn_idx[i]]
        out[f"{p}ffn.fc2.weight"] = state[f"{p}ffn.fc2.weight"][hid][:, ffn_idx[i]]
        out[f"{p}ffn.fc2.bias"] = state[f"{p}ffn.fc2.bias"][hid]
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            for n in ("weight", "bias"):
                out[f"{p}{ln}.{n}"] = state[f"{p}{ln}.{n}"][hid]

    slim = EncoderSpec(
        conv_layers=[(int(idx.numel()), k, s) for idx, (_, k, s) in zip(conv_idx, spec.conv_layers)],
        conv_bias=spec.conv_bias, extractor_mode=spec.extractor_mode, embed_dim=int(hid.numel()),
        pos_conv_kernel=spec.pos_conv_kernel, pos_conv_groups=groups,
        num_heads=num_heads, head_dim=spec.head_dim,
        ffn_dims=[int(f.numel()) for f in ffn_idx], layer_norm_first=spec.layer_norm_first,
        frame_padding=spec.frame_padding, qk_dims=qk_dims if fine else None, vo_dims=vo_dims if fine else None,
        rel_pos_buckets=spec.rel_pos_buckets, rel_pos_max_distance=spec.rel_pos_max_distance,
        rel_pos_heads=spec.rel_pos_heads,
    )
    return slim, {k: v.clone().contiguous() for k, v in out.items()}


def _head_rows(spec: EncoderSpec, layer: int, heads: torch.Tensor, masks: GateMasks):
    """Rows of q/k (and of v, = columns of out_proj) kept in ``layer``, each kept head's sizes, and the
    kept heads (indices among the layer's heads).

    ``heads`` are the heads the head gates keep; a head whose value/output dims are all pruned goes too.
    """
    qk_sizes, vo_sizes = spec.head_qk(layer), spec.head_vo(layer)
    qk_start = [sum(qk_sizes[:h]) for h in range(len(qk_sizes))]
    vo_start = [sum(vo_sizes[:h]) for h in range(len(vo_sizes))]
    qk_rows, vo_rows, qk_dims, vo_dims, kept = [], [], [], [], []
    for h in heads.tolist():
        q = if_gated(masks.qk, lambda g: kept_indices(g[layer][h]), _all(qk_sizes[h]))
        v = if_gated(masks.vo, lambda g: kept_indices(g[layer][h]), _all(vo_sizes[h]))
        if v.numel() == 0:
            continue
        qk_rows.append(q + qk_start[h])
        vo_rows.append(v + vo_start[h])
        qk_dims.append(int(q.numel()))
        vo_dims.append(int(v.numel()))
        kept.append(h)
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(qk_rows) if qk_rows else empty, torch.cat(vo_rows) if vo_rows else empty, qk_dims, vo_dims, kept)


def _position_gate(state: State, prefix: str, heads: List[int], hid: torch.Tensor, embed_dim: int) -> State:
    """A layer's WavLM position-gate entries for its kept ``heads``; ``hid`` (d',) are the kept hidden dims
    of the ``embed_dim`` it had. An index that pointed at a pruned dim (or at the old pad, ``embed_dim``)
    points at the new pad, d'."""
    renumber = torch.full((embed_dim + 1,), int(hid.numel()), dtype=torch.long)
    renumber[hid] = torch.arange(hid.numel())
    rows = torch.tensor(heads, dtype=torch.long)
    return {
        prefix + "rel_gate.weight": state[prefix + "rel_gate.weight"],
        prefix + "rel_gate.bias": state[prefix + "rel_gate.bias"],
        prefix + "rel_gate_const": state[prefix + "rel_gate_const"][rows],
        prefix + "head_ids": state[prefix + "head_ids"][rows],
        prefix + "rel_gate_index": renumber[state[prefix + "rel_gate_index"][rows]],
    }


def slim_head(state: State, masks: GateMasks) -> State:
    """The output layer reads only the kept hidden dims."""

    def sliced(hidden: torch.Tensor) -> State:
        hid = kept_indices(hidden)
        return {"weight": state["weight"][:, hid].contiguous(), "bias": state["bias"].clone()}

    return if_gated(masks.hidden, sliced, dict(state))
