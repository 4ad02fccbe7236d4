"""HardConcrete L0 gates (Louizos et al., 2018, "Learning Sparse Neural Networks through L0
Regularization"), as used by HJ-Pruning (Peng et al., 2023, Eq. 2-3).

The closed-form functions follow the formulation of CoFiPruning's ``l0_module.py`` and DPHuBERT's
``hardconcrete.py`` (rewritten here; constants are named, nothing is global).

Sampling (Eq. 2):   u ~ U(0,1);  v = sigmoid((log u - log(1-u) + log_alpha) / beta)
                    z = clamp(v * (r - l) + l, 0, 1)
Keep probability (Eq. 3):  P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))
Evaluation: keep round(sum P(z != 0)) units of each row, ranked by log_alpha, as a 0/1 mask.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn

BETA = 2.0 / 3.0  # temperature
LIMIT_L = -0.1  # stretch interval (l, r), l < 0 < 1 < r
LIMIT_R = 1.1
_EPS = 1e-6
GATE_GROUP = "hjprune_gate"  # parameter-group tag of log_alpha (hjprune_adamw gives it its own lr)


class KeepsParameterDtype(nn.Module):
    """Its own parameters keep their floating-point dtype through ``.half()``, ``.to(torch.bfloat16)``
    and the like; device moves still apply. fairseq's trainer casts the whole model and criterion to
    16 bits under ``common.fp16`` / ``bf16``: for log_alpha, ``sigmoid`` then rounds to exactly 1 above
    ~8 and its gradient vanishes, and a multiplier's gradient (gap * sample_size * loss scale) overflows.
    Consumers cast what they take from these parameters to their own dtype."""

    def _apply(self, fn, recurse=True):
        def device_only(t: torch.Tensor) -> torch.Tensor:
            target = fn(torch.empty(0, dtype=t.dtype, device=t.device))  # where fn would move it
            return t.to(target.device)

        if recurse:  # children are cast as usual
            for child in self.children():
                child._apply(fn)
        return super()._apply(device_only, recurse=False)


def keep_prob(log_alpha: torch.Tensor, beta: float = BETA, l: float = LIMIT_L, r: float = LIMIT_R) -> torch.Tensor:
    """P(z != 0) per unit (Eq. 3), differentiable in log_alpha."""
    return torch.sigmoid(log_alpha - beta * math.log(-l / r))


def sample(log_alpha: torch.Tensor, beta: float = BETA, l: float = LIMIT_L, r: float = LIMIT_R) -> torch.Tensor:
    """One reparameterised sample z in [0, 1] per unit (Eq. 2)."""
    u = torch.rand_like(log_alpha).clamp(_EPS, 1.0 - _EPS)
    v = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (v * (r - l) + l).clamp(0.0, 1.0)


def deterministic_mask(log_alpha: torch.Tensor, beta: float = BETA, l: float = LIMIT_L, r: float = LIMIT_R) -> torch.Tensor:
    """0/1 mask keeping, in each row (last dim), the round(expected L0) units with largest log_alpha."""
    # Explicit row count: a block with no unit (a slim layer without heads, re-pruned) has empty rows.
    rows = log_alpha.detach().reshape(math.prod(log_alpha.shape[:-1]), log_alpha.shape[-1])
    kept = keep_prob(rows, beta, l, r).sum(-1).round().long()
    order = rows.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(rows.shape[-1], device=rows.device).expand_as(order))
    mask = (rank < kept.unsqueeze(-1)).to(log_alpha.dtype)
    return mask.reshape(log_alpha.shape)


def log_alpha_for(keep_probability: float, beta: float = BETA, l: float = LIMIT_L, r: float = LIMIT_R) -> float:
    """The log_alpha whose P(z != 0) equals ``keep_probability`` (inverse of :func:`keep_prob`)."""
    if not 0.0 < keep_probability < 1.0:
        raise ValueError(f"keep probability must be in (0, 1), got {keep_probability}")
    return math.log(keep_probability / (1.0 - keep_probability)) + beta * math.log(-l / r)


class HardConcrete(KeepsParameterDtype):
    """A block of HardConcrete gates of shape ``shape`` (e.g. (layers, heads)).

    In training mode ``forward()`` draws one sample per unit (shared by the whole batch, as in
    CoFi/DPHuBERT); in eval mode it returns the deterministic 0/1 mask. With ``ste`` (straight-through
    estimator, Wang et al., Interspeech 2023) training forwards the deterministic mask too, and the
    gradient reaches ``log_alpha`` as if through the sample: what is trained is what is exported.
    ``log_alpha`` carries the parameter-group tag ``hjprune_gate`` so the optimizer can give it its
    own learning rate, and stays float32 under fp16/bf16 training (:class:`KeepsParameterDtype`).
    """

    def __init__(self, shape: Sequence[int], init_keep_prob: float = 0.99, init_std: float = 0.01,
                 ste: bool = False) -> None:
        super().__init__()
        self.shape: Tuple[int, ...] = tuple(int(s) for s in shape)
        self.log_alpha = nn.Parameter(torch.empty(self.shape))
        self.log_alpha.param_group = GATE_GROUP
        self.init_keep_prob = init_keep_prob
        self.init_std = init_std
        self.ste = ste
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.log_alpha, mean=log_alpha_for(self.init_keep_prob), std=self.init_std)

    def keep_prob(self) -> torch.Tensor:
        return keep_prob(self.log_alpha)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of kept units per row (sum of P(z != 0) over the last dim)."""
        return self.keep_prob().sum(-1)

    def deterministic_mask(self) -> torch.Tensor:
        return deterministic_mask(self.log_alpha)

    def forward(self) -> torch.Tensor:
        if not self.training:
            return self.deterministic_mask()
        z = sample(self.log_alpha)
        if self.ste:
            return self.deterministic_mask() + (z - z.detach())  # value: the mask; gradient: the sample's
        return z

    def extra_repr(self) -> str:
        return f"shape={self.shape}, init_keep_prob={self.init_keep_prob}, ste={self.ste}"
