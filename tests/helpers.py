"""Small builders shared by the tests."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from hjprune_fairseq.models.base import HJPruneGatedCtcConfig
from hjprune_fairseq.models.ctc import HJPruneGatedCtc

from fairseq_fixtures import letter_dictionary

VOCAB = len(letter_dictionary())
NO_GATES = dict(prune_conv=False, prune_heads=False, prune_ffn=False, prune_hidden=False)


def gated_model(w2v_path: str, **cfg) -> HJPruneGatedCtc:
    cfg.setdefault("feature_grad_mult", 1.0)
    c = OmegaConf.structured(HJPruneGatedCtcConfig(w2v_path=w2v_path, normalize=False, **cfg))
    return HJPruneGatedCtc.from_config(c, VOCAB).eval()


def randomize_gates(model, mean: float = 1.0, std: float = 2.0, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.gates.parameters():
            p.copy_(mean + std * torch.randn(p.shape, generator=g))


def open_gates(model) -> None:
    with torch.no_grad():
        for p in model.gates.parameters():
            p.fill_(20.0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over finite entries (padded frames hold -inf in both)."""
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    finite = torch.isfinite(a)
    return (a[finite] - b[finite]).abs().max().item()
