"""PARP (core/parp.py, models/parp.py): exact magnitude pruning, adjust then re-prune, and a fairseq-hydra-train run."""

import json
import os

import pytest
import torch
from fairseq_fixtures import EXAMPLES, make_letter_corpus, train_ok
from omegaconf import OmegaConf

from hjprune_fairseq.cli import cost as cost_cli
from hjprune_fairseq.core.parp import magnitude_prune_, prunable_weights, zero_fraction
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.models.ctc import HJPruneParpCtc
from hjprune_fairseq.plugin.models.parp import HJPruneParpCtcConfig


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_prune_zeroes_exactly_the_smallest(scope):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(7, 5, generator=g) * s for s in (1.0, 3.0, 0.2)]
    before = [w.clone() for w in weights]
    weights[0][0, :4] = 0.0  # ties at zero must not change the count
    before[0][0, :4] = 0.0
    zeroed = magnitude_prune_(weights, 0.4, scope)
    groups = [[0], [1], [2]] if scope == "layer" else [[0, 1, 2]]
    assert zeroed == sum(round(0.4 * sum(weights[i].numel() for i in grp)) for grp in groups)
    assert sum(int((w == 0).sum()) for w in weights) == zeroed
    for grp in groups:
        dropped = torch.cat([before[i][weights[i] == 0].abs() for i in grp])
        kept = torch.cat([before[i][weights[i] != 0].abs() for i in grp])
        assert dropped.max() <= kept.min()
    if scope == "global":  # one threshold: the small-magnitude matrix loses more than the large one
        assert (weights[2] == 0).float().mean() > (weights[1] == 0).float().mean()


def test_adjust_then_re_prune(w2v_pretrained):
    cfg = OmegaConf.structured(HJPruneParpCtcConfig(
        w2v_path=w2v_pretrained, normalize=False, parp_sparsity=0.6, parp_interval_updates=3, parp_max_update=7))
    model = HJPruneParpCtc.from_config(cfg, 10)
    names = [n for n, _ in prunable_weights(model.encoder)]
    assert len(names) == 6 * len(model.encoder.layers)
    assert zero_fraction(model.encoder) == pytest.approx(0.6, abs=1e-3)  # the initial prune
    assert all(v.ne(0).all() for v in model.encoder.pos_conv.weight_v)  # only the Transformer's matrices are pruned

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(source=torch.randn(2, 8000))["encoder_out"].pow(2).mean().backward()
    opt.step()
    assert zero_fraction(model.encoder) < 0.05  # adjust: pruned weights received updates too
    model.after_update(2)
    assert zero_fraction(model.encoder) < 0.05  # not a re-prune update
    model.after_update(3)
    assert zero_fraction(model.encoder) == pytest.approx(0.6, abs=1e-3)
    model.after_update(7)  # the final prune (also at an update that is no multiple of the interval)
    assert zero_fraction(model.encoder) == pytest.approx(0.6, abs=1e-3)


def test_bad_parp_config(w2v_pretrained):
    for bad in (dict(parp_sparsity=1.0), dict(parp_interval_updates=0)):
        cfg = OmegaConf.structured(HJPruneParpCtcConfig(w2v_path=w2v_pretrained, normalize=False, parp_max_update=5, **bad))
        with pytest.raises(ValueError, match="parp_"):
            HJPruneParpCtc.from_config(cfg, 10)


def test_parp_under_fairseq_hydra_train(tmp_path, w2v_pretrained, capsys):
    data = make_letter_corpus(str(tmp_path / "data"), {"train": 8, "valid": 4})
    log = train_ok(os.path.join(EXAMPLES, "tiny"), "parp", data, w2v_pretrained, tmp_path / "ck", [
        "optimization.max_update=5", "model.parp_interval_updates=2", "model.parp_sparsity=0.3", "model.parp_scope=global"])
    assert "PARP initial prune" in log and "PARP re-prune at update 2" in log and "PARP re-prune at update 4" in log
    assert "PARP final prune at update 5" in log
    model, _ = load_model(str(tmp_path / "ck" / "checkpoint_last.pt"))
    n = sum(w.numel() for _, w in prunable_weights(model.encoder))
    assert zero_fraction(model.encoder) * n == round(0.3 * n)  # exactly the target after the final prune
    assert cost_cli.main([str(tmp_path / "ck" / "checkpoint_last.pt"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"].startswith("dense with unstructured zeros")
    assert rep["zero_weights"] == round(0.3 * n) and rep["macs_sparsity"] == 0.0
    assert rep["nonzero_encoder_params"] == rep["encoder_params"] - rep["zero_weights"]
