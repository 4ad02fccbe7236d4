"""PARP: Prune, Adjust and Re-Prune (Lai et al., NeurIPS 2021), the unstructured baseline.

Unstructured magnitude pruning of the Transformer's weight matrices (per layer: the query, key,
value and output projections and the two FFN matrices; biases, LayerNorms, the CNN and the
positional convolution are kept), inside one fine-tuning run:

1. prune: when the model is built from ``w2v_path``, the ``parp_sparsity`` fraction of those weights
   with the smallest magnitude is set to zero (per matrix, or with one threshold over all of them);
2. adjust: fine-tuning updates every weight, the zeroed ones included, so they may come back;
3. re-prune: every ``parp_interval_updates`` updates, and after the last update, the weights are
   pruned again to the same target from their current magnitudes.

The model stays dense: the zeros save parameters on disk after compression, but dense kernels run
at the same speed. Written from the paper's description (Sec. 3 of arXiv:2106.05933). This module
is the pruning maths; the schedule (``models/parp.py``) runs from the task's ``optimizer_step``
(``hjprune_audio_finetuning``), so the final prune happens before the last checkpoint is written.
"""

from typing import List, Tuple

import torch
from torch import nn

SCOPES = ("layer", "global")  # layer: one threshold per matrix; global: one over all of them
PRUNED_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "ffn.fc1", "ffn.fc2")


def prunable_weights(encoder: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """(name, weight) of every pruned matrix, in layer order."""
    out = []
    for i, layer in enumerate(encoder.layers):
        for name in PRUNED_LINEARS:
            w = layer.get_submodule(name).weight
            if w.numel():
                out.append((f"layers.{i}.{name}.weight", w))
    return out


@torch.no_grad()
def magnitude_prune_(weights: List[torch.Tensor], sparsity: float, scope: str) -> int:
    """Zero the round(sparsity * n) smallest-magnitude entries (per tensor, or over all); returns how many.

    Ties are broken by position (``topk``), so the count is exact even when many entries are already 0.
    """
    if scope == "layer":
        groups = [[w] for w in weights]
    elif scope == "global":
        groups = [weights]
    else:
        raise ValueError(f"PARP scope must be 'layer' or 'global', got {scope!r}")
    zeroed = 0
    for group in groups:
        flat = torch.cat([w.detach().abs().reshape(-1).float() for w in group])
        k = int(round(sparsity * flat.numel()))
        if k == 0:
            continue
        drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        drop[torch.topk(flat, k, largest=False, sorted=False).indices] = True
        offset = 0
        for w in group:
            n = w.numel()
            w.masked_fill_(drop[offset:offset + n].view_as(w), 0.0)
            offset += n
        zeroed += k
    return zeroed


def zero_count(encoder: nn.Module) -> Tuple[int, int]:
    """(entries that are exactly zero, all entries) of the pruned matrices."""
    weights = [w for _, w in prunable_weights(encoder)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


def zero_fraction(encoder: nn.Module) -> float:
    zeros, total = zero_count(encoder)
    return zeros / total if total else 0.0

