"""Cost of one pruning update vs one stock fairseq wav2vec_ctc update, same batch.

Both models start from the same fairseq wav2vec2 checkpoint (random weights) and see the same batch.
A stock update is fairseq's ``Wav2VecCtc`` + ``ctc`` criterion + fairseq ``adam``; a pruning update
is ``hjprune_wav2vec_ctc`` (all four gate groups) + ``hjprune_ctc`` (sparsity constraint, ``mode``) +
``hjprune_adamw``. Each update is forward, backward and optimizer step; the two alternate, and the
median of ``repeats`` is kept.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Dict

import torch
from hjprune_manifests.audio import SAMPLE_RATE

from ..core.presets import PRESETS
from ..timing import median_times

VOCAB_SYMBOLS = list("ETAOINSHRDLUCMWFGYPBVKJXQZ'|")
GOAL = 1.3  # a pruning update should cost at most GOAL x a stock one


def _dictionary():
    from fairseq.data import Dictionary

    d = Dictionary()
    for c in VOCAB_SYMBOLS:
        d.add_symbol(c)
    return d


class _Task:
    def __init__(self):
        self.target_dictionary = _dictionary()
        self.source_dictionary = None


def make_batch(batch_size: int, seconds: float, target_len: int, vocab: int, seed: int) -> Dict:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    return {
        "id": torch.arange(batch_size),
        "net_input": {"source": torch.randn(batch_size, n, generator=g), "padding_mask": torch.zeros(batch_size, n, dtype=torch.bool)},
        "target": torch.randint(4, vocab, (batch_size, target_len), generator=g),
        "target_lengths": torch.full((batch_size,), target_len),
        "ntokens": batch_size * target_len,
    }


def build(kind: str, w2v_path: str, mode: str):
    """(model, criterion, optimizer) of a stock or a pruning update."""
    from fairseq import optim
    from fairseq.criterions import build_criterion
    from omegaconf import OmegaConf

    import hjprune_fairseq  # noqa: F401  (registers the hjprune classes)
    from ..models.ctc import HJPruneGatedCtc, HJPruneGatedCtcConfig

    task = _Task()
    crit = {"zero_infinity": True, "sentence_avg": True, "post_process": "letter"}
    if kind == "stock":
        from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

        cfg = OmegaConf.structured(Wav2Vec2CtcConfig(
            w2v_path=w2v_path, normalize=False, data=os.path.dirname(w2v_path), ddp_backend="legacy_ddp",
            apply_mask=False, feature_grad_mult=1.0, layerdrop=0.0))
        model = Wav2VecCtc.build_model(cfg, task)
        criterion = build_criterion(OmegaConf.create(dict(crit, _name="ctc")), task)
        opt_cfg = OmegaConf.create({"_name": "adam", "lr": [1e-4], "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-8,
                                    "weight_decay": 0.0, "use_old_adam": False, "fp16_adam_stats": False, "tpu": False})
    else:
        cfg = OmegaConf.structured(HJPruneGatedCtcConfig(w2v_path=w2v_path, normalize=False, apply_mask=False,
                                                         feature_grad_mult=1.0))
        model = HJPruneGatedCtc.from_config(cfg, len(task.target_dictionary))
        targets = {"target_sparsity": 0.4} if mode != "sep_size" else {"target_cnn_sparsity": 0.4, "target_transformer_sparsity": 0.3}
        criterion = build_criterion(OmegaConf.create(dict(crit, _name="hjprune_ctc", sparsity_mode=mode, **targets)), task)
        opt_cfg = OmegaConf.create({"_name": "hjprune_adamw", "lr": [1e-4]})
    params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
    return model.train(), criterion, optim.build_optimizer(opt_cfg, params)


def update(model, criterion, optimizer, sample) -> None:
    optimizer.zero_grad()
    loss, sample_size, _ = criterion(model, sample)
    optimizer.backward(loss)
    optimizer.multiply_grads(1.0 / sample_size)  # as fairseq's trainer
    optimizer.step()


def compare_updates(preset: str, mode: str, batch_size: int, seconds: float, repeats: int = 7, warmup: int = 2) -> Dict:
    """Median seconds of a stock and of a pruning update (sparsity ``mode``) from a random ``preset``
    checkpoint on one random batch, with torch's current threads; their ratio and whether the goal is met."""
    from ..fairseq_import import write_random_wav2vec2

    # fairseq's Wav2VecEncoder print()s the model while loading: keep stdout for the caller's output.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        w2v = write_random_wav2vec2(PRESETS[preset], os.path.join(tmp, "w2v.pt"))
        setups = {k: build(k, w2v, mode if k == "prune" else "") for k in ("stock", "prune")}
    sample = make_batch(batch_size, seconds, int(seconds * 12), len(VOCAB_SYMBOLS) + 4, 0)

    def step(i: int, setup) -> None:
        torch.manual_seed(i)
        update(*setup, sample)

    med = median_times({k: (lambda i, s=s: step(i, s)) for k, s in setups.items()}, repeats, warmup)
    return {"preset": preset, "mode": mode, "batch_size": batch_size, "seconds": seconds,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "stock_update_s": med["stock"], "prune_update_s": med["prune"], "ratio": med["prune"] / med["stock"],
            "goal_met": med["prune"] / med["stock"] <= GOAL}
