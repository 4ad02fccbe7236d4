"""Exact budgets (core/budget.py): masks that meet the target, moved in log_alpha order, exported as they are."""

import pytest
import torch
from fairseq_fixtures import batch, save_like_trainer
from helpers import gated_model, max_diff, randomize_gates

from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.core import cost_model
from hjprune_fairseq.core.budget import TOLERANCE, fit_budget, measure_sparsity
from hjprune_fairseq.core.gates import GROUPS
from hjprune_fairseq.core.measures import MEASURES
from hjprune_fairseq.core.sparsity import SparsityConstraint
from hjprune_fairseq.plugin.checkpoints import load_model

SECONDS = 4.0


def fit(model, mode, targets, align=1):
    measure = MEASURES[mode]
    return fit_budget(model.gates, measure, targets, measure_sparsity(measure, model.spec, SECONDS), align=align)


def gate_blocks(model, masks):
    """(group, log_alpha block, its mask) of every gated group's blocks."""
    for g in GROUPS:
        gate = getattr(model.gates, g)
        if gate is None:
            continue
        alphas = [gate.log_alpha] if g == "hidden" else [m.log_alpha for m in gate]
        ms = [masks.hidden] if g == "hidden" else getattr(masks, g)
        for a, m in zip(alphas, ms):
            yield g, a.detach(), m


def units(model, masks):
    """(group, log_alpha, kept) of every unit of every gated group."""
    return [(g, float(x), bool(k)) for g, a, m in gate_blocks(model, masks) for x, k in zip(a.flatten(), m.flatten())]


def top_k_per_row(model, masks):
    """Every row keeps its units of largest log_alpha."""
    for _, a, m in gate_blocks(model, masks):
        a, m = a.reshape(-1, a.shape[-1]), m.reshape(-1, a.shape[-1])
        for ar, mr in zip(a, m):
            if 0 < mr.sum() < mr.numel():
                assert ar[mr == 1].min() >= ar[mr == 0].max()


@pytest.fixture
def model(w2v_pretrained):
    """Random gates; the heads far from the decision: one of this model's 8 heads is 9 points of its MACs, so
    the rule could not come within 0.5 points once a head is the next unit (on wav2vec2-base: 0.2 points)."""
    m = gated_model(w2v_pretrained)
    randomize_gates(m, mean=1.5, std=2.0)
    with torch.no_grad():
        for h in m.gates.heads:
            h.log_alpha.add_(8.0)
    return m


@pytest.mark.parametrize("mode,target", [("size", 0.12), ("size", 0.35), ("size", 0.6), ("macs", 0.25)])
def test_budget_met_by_units_in_log_alpha_order(model, mode, target):
    # (with its heads kept, this model's attention scores, T^2 * 96 MACs a layer, cap its MACs sparsity)
    det = model.gates.deterministic()
    r = fit(model, mode, {mode: target})
    assert r.met and abs(r.delivered[mode] - target) <= TOLERANCE
    dense = cost_model.cost(model.spec, None, SECONDS)
    s = MEASURES[mode](cost_model.cost(model.spec, r.masks, SECONDS), dense)[mode]
    assert float(s) == pytest.approx(r.delivered[mode])
    top_k_per_row(model, r.masks)
    before, after = units(model, det), units(model, r.masks)
    moved = [(a, k0) for (_, a, k0), (_, _, k1) in zip(before, after) if k0 != k1]
    assert moved and all(k0 == moved[0][1] for _, k0 in moved)  # one direction only
    removing = moved[0][1]
    assert sum(r.removed.values()) == (len(moved) if removing else 0)
    assert sum(r.added.values()) == (0 if removing else len(moved))
    # Closest to the decision first: every unit removed ranks below every unit still kept (but a CNN layer's
    # or the hidden size's last one); every unit added back ranks above every unit still pruned.
    if removing:
        kept = [a for (g, a, _), (_, _, k) in zip(before, after) if k]
        assert max(a for a, _ in moved) <= sorted(kept)[len(model.spec.conv_layers) + 1]
    else:
        pruned = [a for (_, a, _), (_, _, k) in zip(before, after) if not k]
        assert min(a for a, _ in moved) >= max(pruned)


def test_budget_fits_sep_size_cnn_with_conv_gates_first(model):
    r = fit(model, "sep_size", {"cnn": 0.5, "transformer": 0.3})
    assert abs(r.delivered["cnn"] - 0.5) <= TOLERANCE and abs(r.delivered["transformer"] - 0.3) <= TOLERANCE


def hidden_far_from_decision(model):
    """A hidden dim is 1/48 of this model (8 of them 1/6): keep 40 away from the decision."""
    with torch.no_grad():
        model.gates.hidden.log_alpha[:40].add_(8.0)


def test_aligned_counts_are_multiples_and_within_budget(model):
    hidden_far_from_decision(model)
    r = fit(model, "size", {"size": 0.5}, align=8)
    assert abs(r.delivered["size"] - 0.5) <= 0.01  # blocks of 8 units: coarser steps
    k = cost_model.counts(model.spec, r.masks)
    for c in k.conv:
        assert int(c) % 8 == 0 and int(c) >= 8
    assert all(int(f) % 8 == 0 for f in k.ffn) and int(k.hidden) % 8 == 0 and int(k.hidden) >= 8
    top_k_per_row(model, r.masks)


def test_unreachable_budget_is_as_close_as_the_units_allow(model):
    r = fit(model, "size", {"size": 0.999})
    assert r.delivered["size"] < 0.999
    k = cost_model.counts(model.spec, r.masks)
    assert all(int(c) == 1 for c in k.conv) and int(k.hidden) == 1  # never the last one


@pytest.mark.parametrize("align", [1, 8])
def test_export_at_budget_equals_gated_model_under_fitted_masks(model, tmp_path, align):
    hidden_far_from_decision(model)
    path = save_like_trainer(model, tmp_path / "gated.pt")
    slim_path = str(tmp_path / "slim.pt")
    info = export_slim(path, slim_path, budget={"size": 0.45}, align=align)
    r = info["budget"]
    # aligned: a block is 8 of a layer's 32 channels or 64 FFN units here, a few points of the size
    assert abs(r.delivered["size"] - 0.45) <= (TOLERANCE if align == 1 else 0.04)
    slim, _ = load_model(slim_path)
    assert slim.spec.embed_dim == int(r.masks.hidden.sum())
    model.gate_masks = lambda: r.masks  # the gated model under the fitted masks
    source, pad = batch([16000, 12000], seed=5)
    with torch.no_grad():
        a = model.get_logits(model(source=source, padding_mask=pad))
        b = slim.get_logits(slim(source=source, padding_mask=pad))
    assert max_diff(a, b) <= 1e-4


def with_criterion(path, **criterion):
    """The checkpoint at ``path`` as a pruning run writes it: with its criterion's config."""
    state = torch.load(path, weights_only=False)
    state["cfg"]["criterion"] = {"_name": "hjprune_ctc", "zero_infinity": True, **criterion}
    torch.save(state, path)
    return path


def test_export_cli_meets_the_runs_target_by_default_and_as_trained_on_request(model, tmp_path, capsys, caplog):
    import json
    import logging

    from hjprune_fairseq.cli import export as export_cli

    hidden_far_from_decision(model)
    plain = save_like_trainer(model, tmp_path / "plain.pt")
    run = with_criterion(save_like_trainer(model, tmp_path / "run.pt"), sparsity_mode="size", target_sparsity=0.35,
                         macs_seconds=SECONDS)
    assert export_cli.main([run, str(tmp_path / "a.pt")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["budget"]["targets"] == {"size": 0.35}
    assert abs(r["budget"]["delivered"]["size"] - 0.35) <= TOLERANCE
    assert abs(r["size_sparsity"] - 0.35) <= TOLERANCE  # the slim model's own count agrees
    assert sum(r["budget"]["removed"].values()) + sum(r["budget"]["added"].values()) > 0
    assert export_cli.main([run, str(tmp_path / "b.pt"), "--as-trained"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["budget"].startswith("as trained") and r["size_sparsity"] == pytest.approx(r["gated_size_sparsity"])
    assert abs(r["size_sparsity"] - 0.35) > TOLERANCE  # what the option is for
    assert export_cli.main([run, str(tmp_path / "c.pt"), "--budget", "cnn=0.5,transformer=0.3"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert abs(r["budget"]["delivered"]["cnn"] - 0.5) <= TOLERANCE
    with caplog.at_level(logging.INFO):
        assert export_cli.main([plain, str(tmp_path / "d.pt")]) == 0
    assert "records no sparsity target" in caplog.text
    assert json.loads(capsys.readouterr().out)["budget"].startswith("as trained")
    assert export_cli.main([run, str(tmp_path / "e.pt"), "--budget", "speed=0.5"]) == 2
    assert "no sparsity measure constrains" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_cli.main([run, str(tmp_path / "f.pt"), "--budget", "macs=1.5"])


def test_logged_mask_sparsity_is_what_export_gives(model, tmp_path):
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.criterions.sparsity_config import SparsityConfig, constraint_from_config

    hidden_far_from_decision(model)
    c = constraint_from_config(OmegaConf.structured(SparsityConfig(
        sparsity_mode="size", target_sparsity=0.35, sparsity_warmup_updates=10, macs_seconds=SECONDS)))
    _, logs = c(model.eval(), 3)  # in the warm-up: still the final target's masks
    path = with_criterion(save_like_trainer(model, tmp_path / "run.pt"), sparsity_mode="size", target_sparsity=0.35,
                          macs_seconds=SECONDS)
    r = export_slim(path, str(tmp_path / "slim.pt"))["budget"]
    assert logs["mask_sparsity"] == pytest.approx(r.delivered["size"], abs=1e-12)
    assert abs(logs["mask_sparsity"] - 0.35) <= TOLERANCE
    assert logs["trained_mask_sparsity"] == pytest.approx(r.before["size"], abs=1e-12)
    assert abs(logs["trained_mask_sparsity"] - 0.35) > TOLERANCE


@pytest.mark.parametrize("head_dims", [False, True])
def test_repruning_a_slim_model_with_a_layer_without_heads(w2v_pretrained, tmp_path, head_dims):
    """Gates on a slim model whose layer 1 has no head: a gate block with no unit (it failed in HardConcrete((0,)))
    through the encoder, the constraint, the budget fit and the second export."""
    first = gated_model(w2v_pretrained)
    randomize_gates(first)
    with torch.no_grad():
        first.gates.heads[1].log_alpha.fill_(-20.0)
    export_slim(save_like_trainer(first, tmp_path / "gated.pt"), str(tmp_path / "slim.pt"))
    again = gated_model(str(tmp_path / "slim.pt"), prune_head_dims=head_dims)  # gates on the slim model
    assert again.spec.num_heads[1] == 0 and again.gates.heads[1].log_alpha.shape == (0,)
    randomize_gates(again, seed=4)
    source, pad = batch([16000, 12000], seed=5)
    again.train()
    again.get_logits(again(source=source, padding_mask=pad)).sum().backward()  # a training step's forward/backward
    again.eval()
    _, logs = SparsityConstraint("size", {"size": 0.3}, 0, SECONDS)(again, 0)
    assert 0.0 < logs["mask_sparsity"] < 1.0
    path = save_like_trainer(again, tmp_path / "again.pt")
    r = export_slim(path, str(tmp_path / "slim2.pt"), budget={"size": 0.3})["budget"]
    twice, _ = load_model(str(tmp_path / "slim2.pt"))
    assert twice.spec.num_heads[1] == 0
    again.gate_masks = lambda: r.masks
    with torch.no_grad():
        a = again.get_logits(again(source=source, padding_mask=pad))
        b = twice.get_logits(twice(source=source, padding_mask=pad))
    assert max_diff(a, b) <= 1e-4


def test_ladder_schedule_ramps_to_each_rung_and_holds():
    c = SparsityConstraint("macs", {"macs": 0.6}, 2, 10.0, ladder=[{"macs": 0.2}, {"macs": 0.4}, {"macs": 0.6}],
                           hold_updates=2)
    assert [round(float(c.target(n)), 6) for n in range(14)] == [
        0.0, 0.1, 0.2, 0.2, 0.2, 0.3, 0.4, 0.4, 0.4, 0.5, 0.6, 0.6, 0.6, 0.6]
    assert [c.rung_end(i) for i in range(3)] == [4, 8, 12]
    assert c.rung_targets(4) == [0.2] and c.rung_targets(5) == [0.4] and c.rung_targets(100) == [0.6]


def test_a_coarse_move_across_the_target_is_stepped_around(model):
    """Blocks of 8 of this model's 48 hidden dims are 1/6 of it: the move across the target overshoots by
    points; the later, finer moves in the same order reach it."""
    r = fit(model, "size", {"size": 0.5}, align=8)
    assert r.met
    k = cost_model.counts(model.spec, r.masks)
    assert all(int(f) % 8 == 0 for f in k.ffn) and int(k.hidden) % 8 == 0
    top_k_per_row(model, r.masks)
