"""Small builders shared by the tests."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from hjprune_fairseq.plugin.models.base import HJPruneGatedCtcConfig
from hjprune_fairseq.plugin.models.ctc import HJPruneGatedCtc

from fairseq_fixtures import batch, letter_dictionary

SYMBOLS = list(letter_dictionary().symbols)
VOCAB = len(SYMBOLS)
NO_GATES = dict(prune_conv=False, prune_heads=False, prune_ffn=False, prune_hidden=False)


def gated_model(w2v_path: str, **cfg) -> HJPruneGatedCtc:
    cfg.setdefault("feature_grad_mult", 1.0)
    c = OmegaConf.structured(HJPruneGatedCtcConfig(w2v_path=w2v_path, normalize=False, **cfg))
    return HJPruneGatedCtc.from_config(c, VOCAB).eval()


def ctc_model(w2v_path: str, data: str, **cfg) -> HJPruneGatedCtc:
    """A gated CTC model with random gates that records the letter dictionary of ``data`` (as a stage run with the
    hjprune_audio_finetuning task does), so its exports carry the tokens."""
    model = gated_model(w2v_path, target_dictionary={"path": os.path.join(data, "dict.ltr.txt"), "symbols": SYMBOLS},
                        **cfg)
    randomize_gates(model)
    return model


def letters_head(model, seed: int) -> None:
    """A CTC output layer that prints many letters and spaces from random audio and never the specials other than
    the blank (fairseq-generate strips them, the tokenizer prints them): random rows whose mean logit over random
    audio is 0 (a random layer mostly repeats the token of the encoder output's mean direction)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.proj.weight.copy_(3.0 * torch.randn(model.proj.weight.shape, generator=g))
        x, _ = model.encode(*batch([16000, 16000], seed=seed))
        model.proj.bias.copy_(-F.linear(x, model.proj.weight).mean((0, 1)))
        model.proj.bias[1:4] = -100.0
        model.proj.bias[SYMBOLS.index("|")] += 1.0


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
