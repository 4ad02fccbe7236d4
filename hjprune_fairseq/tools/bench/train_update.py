"""Cost of one pruning update vs one stock fairseq wav2vec_ctc update, same batch.

Both models start from the same fairseq wav2vec2 checkpoint (random weights) and see the same batch.
A stock update is fairseq's ``Wav2VecCtc`` + ``ctc`` criterion + fairseq ``adam``; a pruning update
is ``hjprune_wav2vec_ctc`` (all four gate groups) + ``hjprune_ctc`` (sparsity constraint, ``mode``) +
``hjprune_adamw``. Each update is forward, backward and optimizer step; the two alternate, and the
median of ``repeats`` is kept. fairseq has no WavLM: for a WavLM preset both start from a random dense
hjprune checkpoint, and the update compared with is the same encoder without gates (``hjprune_slim_ctc``,
the final fine-tuning stage's model) with fairseq's ``ctc`` criterion and ``adam``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from typing import Dict, Tuple

import torch
from hjprune_manifests.audio import SAMPLE_RATE

from ...core.presets import PRESETS
from ...core.spec import EncoderSpec
from ..timing import median_times

logger = logging.getLogger(__name__)

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


BASELINES = {"stock": "fairseq wav2vec_ctc", "dense": "hjprune_slim_ctc (the same encoder without gates)"}


def build(kind: str, w2v_path: str, mode: str):
    """(model, criterion, optimizer) of a ``stock`` (fairseq's model), ``dense`` (this plugin's model without
    gates) or ``prune`` update."""
    from fairseq import optim
    from fairseq.criterions import build_criterion
    from omegaconf import OmegaConf

    import hjprune_fairseq  # noqa: F401  (registers the hjprune classes)
    from ...plugin.models.ctc import HJPruneCtcConfig, HJPruneGatedCtc, HJPruneGatedCtcConfig, HJPruneSlimCtc

    task = _Task()
    crit = {"zero_infinity": True, "sentence_avg": True, "post_process": "letter"}
    adam = OmegaConf.create({"_name": "adam", "lr": [1e-4], "adam_betas": "(0.9, 0.98)", "adam_eps": 1e-8,
                             "weight_decay": 0.0, "use_old_adam": False, "fp16_adam_stats": False, "tpu": False})
    if kind == "dense":
        cfg = OmegaConf.structured(HJPruneCtcConfig(w2v_path=w2v_path, normalize=False, apply_mask=False,
                                                    feature_grad_mult=1.0))
        model = HJPruneSlimCtc.from_config(cfg, len(task.target_dictionary))
        criterion = build_criterion(OmegaConf.create(dict(crit, _name="ctc")), task)
        opt_cfg = adam
    elif kind == "stock":
        from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

        cfg = OmegaConf.structured(Wav2Vec2CtcConfig(
            w2v_path=w2v_path, normalize=False, data=os.path.dirname(w2v_path), ddp_backend="legacy_ddp",
            apply_mask=False, feature_grad_mult=1.0, layerdrop=0.0))
        model = Wav2VecCtc.build_model(cfg, task)
        criterion = build_criterion(OmegaConf.create(dict(crit, _name="ctc")), task)
        opt_cfg = adam
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


def write_random(spec: EncoderSpec, folder: str) -> Tuple[str, str]:
    """A random checkpoint of ``spec`` in ``folder`` that both updates start from, and the kind of update
    compared with (a key of :data:`BASELINES`): a fairseq pre-training checkpoint and fairseq's model,
    or for WavLM (not in fairseq) a dense hjprune checkpoint and this plugin's model without gates."""
    from ...plugin.checkpoints import save_imported
    from ...core.encoder import Wav2Vec2Encoder
    from ...plugin.fairseq_import import ImportedCheckpoint, write_random_wav2vec2

    path = os.path.join(folder, "w2v.pt")
    if not spec.has_rel_pos:
        return write_random_wav2vec2(spec, path), "stock"
    torch.manual_seed(0)
    ckpt = ImportedCheckpoint(path, "pretrained", "random_init", spec, Wav2Vec2Encoder(spec).state_dict(), None, None, False, {})
    save_imported(ckpt, path, folder, None, {})
    return path, "dense"


def compare_updates(preset: str, mode: str, batch_size: int, seconds: float, repeats: int = 7, warmup: int = 2) -> Dict:
    """Median seconds of a stock (for WavLM: dense, see :func:`write_random`) and of a pruning update
    (sparsity ``mode``) from a random ``preset`` checkpoint on one random batch, with torch's current
    threads; their ratio and whether the goal is met."""
    # fairseq's Wav2VecEncoder print()s the whole model while loading: to the debug log, not the user's terminal.
    printed = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(printed):
        w2v, baseline = write_random(PRESETS[preset], tmp)
        setups = {"stock": build(baseline, w2v, ""), "prune": build("prune", w2v, mode)}
    logger.debug("fairseq printed while building the models:\n%s", printed.getvalue())
    sample = make_batch(batch_size, seconds, int(seconds * 12), len(VOCAB_SYMBOLS) + 4, 0)

    def step(i: int, setup) -> None:
        torch.manual_seed(i)
        update(*setup, sample)

    med = median_times({k: (lambda i, s=s: step(i, s)) for k, s in setups.items()}, repeats, warmup)
    return {"preset": preset, "mode": mode, "baseline": BASELINES[baseline], "batch_size": batch_size, "seconds": seconds,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "stock_update_s": med["stock"], "prune_update_s": med["prune"], "ratio": med["prune"] / med["stock"],
            "goal_met": med["prune"] / med["stock"] <= GOAL}
