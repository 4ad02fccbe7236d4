"""The gate values of one forward pass, and the one definition of "not gated".

A :class:`GateMasks` carries one value per prunable unit, in three uses:

1. training: HardConcrete samples z in [0, 1] (``EncoderGates.forward()`` in training mode), by
   which the encoder scales every unit;
2. the expected cost: keep probabilities P(z != 0) (``EncoderGates.keep_probs()``), from which the
   cost model counts expected kept units, differentiably;
3. evaluation and export: deterministic 0/1 masks (``EncoderGates.deterministic()``), which the
   encoder applies at evaluation, the cost model counts exactly and ``slim`` turns into kept indices.

A group that is ``None`` is not gated: every unit of it is kept, so the model has the spec's full
size there. :func:`if_gated` is the one place that decodes this; every consumer goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, TypeVar, Union

import torch

G = TypeVar("G")
R = TypeVar("R")
F = TypeVar("F")


@dataclass
class GateMasks:
    """Gate values for one forward pass; ``None`` means that group is not gated (full size).

    conv: one (C_i,) vector per CNN layer; heads: (L, H); ffn: (L, F); hidden: (d,); qk / vo: one
    (H, head_dim) matrix per layer, gating the query/key and value/output dims inside every head
    (fine-grained attention pruning).
    """

    conv: Optional[List[torch.Tensor]] = None
    heads: Optional[torch.Tensor] = None
    ffn: Optional[torch.Tensor] = None
    hidden: Optional[torch.Tensor] = None
    qk: Optional[List[torch.Tensor]] = None
    vo: Optional[List[torch.Tensor]] = None


def if_gated(gate: Optional[G], use: Callable[[G], R], full: F) -> Union[R, F]:
    """``use(gate)`` for a gated group, ``full`` for a group that is not gated (``None``).

    ``full`` is what the caller means by "every unit kept": the spec's sizes (cost model), every
    index (slim), or ``None``, no gate to apply (encoder).
    """
    return full if gate is None else use(gate)
