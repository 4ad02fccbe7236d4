"""Physically remove pruned units: a gated encoder's state dict + 0/1 masks -> a slim spec and state.

Every kept unit keeps its weights; every matrix that reads or writes a pruned unit loses the
matching rows/columns: a conv output channel (and the next conv's / feature projection's input), a
head (its q/k/v rows and out_proj columns), an FFN unit (fc1 row, fc2 column) and a hidden dim
(every matrix, LayerNorm, bias, mask embedding and positional-conv group over the residual stream).
The positional conv's weight norm is preserved: ``weight_g`` is rescaled by ||v_kept|| / ||v|| so
g * v / ||v|| is unchanged on the kept entries.

Whole layers: a CNN layer or the hidden size with no unit left cannot be exported (the network
would output a constant) -> ValueError. A Transformer layer with no head (or no FFN unit) keeps its
residual path: the block reduces to its output bias, as in the masked model.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from .encoder import GateMasks
from .spec import EncoderSpec

State = Dict[str, torch.Tensor]


def kept_indices(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask.detach() != 0, as_tuple=False).flatten()


def _all(n: int) -> torch.Tensor:
    return torch.arange(n)


def slim_encoder(spec: EncoderSpec, state: State, masks: GateMasks, source: str = "model") -> Tuple[EncoderSpec, State]:
    """Return (slim spec, slim state dict). ``source`` names the checkpoint in error messages."""
    conv_idx = [kept_indices(m) for m in masks.conv] if masks.conv is not None else [_all(c) for c, _, _ in spec.conv_layers]
    head_idx = [kept_indices(m) for m in masks.heads] if masks.heads is not None else [_all(h) for h in spec.num_heads]
    ffn_idx = [kept_indices(m) for m in masks.ffn] if masks.ffn is not None else [_all(f) for f in spec.ffn_dims]
    hid = kept_indices(masks.hidden) if masks.hidden is not None else _all(spec.embed_dim)
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

    dh = spec.head_dim
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        rows = (head_idx[i].unsqueeze(1) * dh + torch.arange(dh)).flatten()
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"{p}self_attn.{proj}.weight"] = state[f"{p}self_attn.{proj}.weight"][rows][:, hid]
            out[f"{p}self_attn.{proj}.bias"] = state[f"{p}self_attn.{proj}.bias"][rows]
        out[f"{p}self_attn.out_proj.weight"] = state[f"{p}self_attn.out_proj.weight"][hid][:, rows]
        out[f"{p}self_attn.out_proj.bias"] = state[f"{p}self_attn.out_proj.bias"][hid]
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
        num_heads=[int(h.numel()) for h in head_idx], head_dim=dh,
        ffn_dims=[int(f.numel()) for f in ffn_idx], layer_norm_first=spec.layer_norm_first,
        frame_padding=spec.frame_padding,
    )
    return slim, {k: v.clone().contiguous() for k, v in out.items()}


def slim_head(state: State, masks: GateMasks) -> State:
    """The output layer reads only the kept hidden dims."""
    if masks.hidden is None:
        return dict(state)
    hid = kept_indices(masks.hidden)
    return {"weight": state["weight"][:, hid].contiguous(), "bias": state["bias"].clone()}
