"""The augmented-Lagrangian sparsity constraint: config checks, schedule, the one cost model, convergence."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from hjprune_fairseq.core import cost_model
from hjprune_fairseq.core.gates import EncoderGates
from hjprune_fairseq.core.hard_concrete import keep_prob
from hjprune_fairseq.core.presets import PRESETS
from hjprune_fairseq.core.sparsity import add_to_logging_output, reduce_logged
from hjprune_fairseq.plugin.criterions.sparsity_config import SparsityConfig, constraint_from_config
from hjprune_fairseq.plugin.optim.hjprune_adamw import HJPruneAdamW, HJPruneAdamWConfig

MODES = {
    "macs": dict(target_sparsity=0.4),
    "size": dict(target_sparsity=0.5),
    "sep_size": dict(target_cnn_sparsity=0.5, target_transformer_sparsity=0.3),
    "transformer_only": dict(target_sparsity=0.4),
}


class GatedStub(torch.nn.Module):
    """Just the gates of the 'tiny' preset (or of ``spec``): what the constraint reads from a model."""

    def __init__(self, conv=True, head_dims=False, spec=None):
        super().__init__()
        self.spec = spec or PRESETS["tiny"]
        self.gates = EncoderGates(self.spec, conv=conv, head_dims=head_dims)


def constraint(mode="macs", **kw):
    kw.setdefault("sparsity_mode", mode)
    return constraint_from_config(OmegaConf.structured(SparsityConfig(**kw)))


@pytest.mark.parametrize("kw, message", [
    (dict(), "needs criterion.target_sparsity"),
    (dict(target_sparsity=1.0), r"must be in \[0, 1\)"),
    (dict(target_sparsity=-0.1), r"must be in \[0, 1\)"),
    (dict(sparsity_mode="sep_size", target_cnn_sparsity=0.5), "needs criterion.target_transformer_sparsity"),
    (dict(target_sparsity=0.3, macs_seconds=0.0), "macs_seconds must be positive"),
    (dict(target_sparsity=0.3, sparsity_warmup_updates=-1), "warmup_updates must be >= 0"),
])
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        constraint(**kw)


def test_mode_and_model_must_agree():
    with pytest.raises(ValueError, match="set model.prune_conv=false"):
        constraint("transformer_only", target_sparsity=0.3)(GatedStub(conv=True), 0)
    with pytest.raises(ValueError, match="set model.prune_conv=true"):
        constraint("sep_size", **MODES["sep_size"])(GatedStub(conv=False), 0)
    stub = GatedStub()
    stub.gates = None
    with pytest.raises(ValueError, match="need a gated model"):
        constraint(target_sparsity=0.3)(stub, 0)


def test_target_warms_up_linearly_then_holds():
    c = constraint(target_sparsity=0.4, sparsity_warmup_updates=100)
    assert [round(float(c.target(n)), 6) for n in (0, 25, 100, 500)] == [0.0, 0.1, 0.4, 0.4]
    assert float(constraint(target_sparsity=0.4).target(0)) == pytest.approx(0.4)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sparsity_comes_from_the_cost_model(mode):
    m = GatedStub(conv=mode != "transformer_only")
    with torch.no_grad():
        for p in m.gates.parameters():
            p.normal_(0.0, 2.0)
    c = constraint(mode, **MODES[mode])
    _, logs = c(m, 10**6)
    exp = cost_model.cost(m.spec, m.gates.keep_probs(), 10.0)
    dense = cost_model.cost(m.spec, None, 10.0)
    independent = {
        "macs": {"": 1 - exp.encoder_macs / dense.encoder_macs},
        "size": {"": 1 - exp.encoder_params / dense.encoder_params},
        "transformer_only": {"": 1 - (exp.encoder_params - exp.params["cnn"]) / (dense.encoder_params - dense.params["cnn"])},
        "sep_size": {"_cnn": 1 - exp.params["cnn"] / dense.params["cnn"],
                     "_transformer": 1 - (exp.encoder_params - exp.params["cnn"]) / (dense.encoder_params - dense.params["cnn"])},
    }[mode]
    for suffix, value in independent.items():
        assert logs["sparsity" + suffix] == pytest.approx(float(value), abs=1e-9)


@pytest.mark.parametrize("head_dims", [False, True])
def test_penalty_gradients_point_the_right_way(head_dims):
    """Too little sparsity: lambda1's gradient is negative (ascent lowers it), and minimising the
    penalty then lowers log_alpha (prunes more), fine-grained query/key and value/output gates too."""
    m = GatedStub(head_dims=head_dims)
    c = constraint(target_sparsity=0.5)
    with torch.no_grad():
        c.lambda1.fill_(-1.0)
    penalty, logs = c(m, 0)
    assert logs["sparsity"] < 0.5
    penalty.backward()
    assert c.lambda1.grad.item() == pytest.approx(logs["sparsity"] - 0.5)
    assert c.lambda2.grad.item() == pytest.approx((logs["sparsity"] - 0.5) ** 2)
    assert all((p.grad > 0).all() for p in m.gates.parameters())  # descent decreases log_alpha
    assert ("kept_qk_dims" in logs) == head_dims


def _drive(m, c, cfg, updates, task=None):
    """``updates`` steps of hjprune_adamw on the constraint's penalty (plus ``task()``, a stand-in task
    loss); returns the constraint's logs of every step."""
    opt = HJPruneAdamW(OmegaConf.structured(cfg), list(m.parameters()) + list(c.parameters()))
    history = []
    for step in range(updates):
        penalty, logs = c(m, step)
        opt.zero_grad()
        (penalty if task is None else penalty + task()).backward()
        opt.step()
        history.append(logs)
    return history


@pytest.mark.parametrize("mode, head_dims, wavlm", [(m, False, False) for m in sorted(MODES)] + [
    ("macs", True, False), ("macs", True, True)])
def test_constraint_alone_reaches_its_target(mode, head_dims, wavlm):
    """Driven by hjprune_adamw (ascent on the multipliers) the expected sparsity settles on the target
    (also for WavLM, whose relative position bias adds per-head costs)."""
    torch.manual_seed(0)
    spec = dataclasses.replace(PRESETS["tiny"], rel_pos_buckets=320, rel_pos_max_distance=800, rel_pos_heads=4) if wavlm else None
    m = GatedStub(conv=mode != "transformer_only", head_dims=head_dims, spec=spec)
    c = constraint(mode, sparsity_warmup_updates=100, **MODES[mode])
    logs = _drive(m, c, HJPruneAdamWConfig(lr=[1e-4], gate_lr=0.05, lambda_lr=0.05), 500)[-1]
    for key in [k for k in logs if k.startswith("sparsity")]:
        target = logs[key.replace("sparsity", "target")]
        assert logs[key] == pytest.approx(target, abs=0.01), key
        assert logs["mask_" + key] == pytest.approx(target, abs=0.025), key


def test_logged_values_are_summable():
    outs = []
    for v in (0.2, 0.4):
        o = {}
        add_to_logging_output(o, {"sparsity": v})
        outs.append(o)
    summed = {k: sum(o[k] for o in outs) for k in outs[0]}  # what fairseq does across workers
    assert reduce_logged([summed])["sparsity"] == pytest.approx(0.3)
    assert reduce_logged(outs)["sparsity"] == pytest.approx(0.3)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_penalty_keeps_its_weight_after_division_by_sample_size(batch_size, w2v_pretrained):
    """fairseq divides all gradients by sample_size after backward: the multipliers' gradients must
    then be exactly d(penalty)/d(lambda) = (s - t), (s - t)^2, whatever the batch."""
    from fairseq.criterions import build_criterion
    from fairseq_fixtures import batch, letter_dictionary
    from helpers import gated_model

    class Task:
        target_dictionary = letter_dictionary()

    model = gated_model(w2v_pretrained).train()
    criterion = build_criterion(OmegaConf.create({
        "_name": "hjprune_ctc", "zero_infinity": True, "sentence_avg": True, "post_process": "letter",
        "sparsity_mode": "macs", "target_sparsity": 0.3}), Task())
    source, pad = batch([12000] * batch_size, seed=batch_size)
    sample = {"net_input": {"source": source, "padding_mask": pad},
              "target": torch.randint(4, 20, (batch_size, 5)), "target_lengths": torch.full((batch_size,), 5),
              "ntokens": 5 * batch_size, "id": torch.arange(batch_size)}
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    assert sample_size == batch_size
    gap = log["hjprune_sparsity"] - 0.3
    assert criterion.sparsity.lambda1.grad.item() / sample_size == pytest.approx(gap, rel=1e-6)
    assert criterion.sparsity.lambda2.grad.item() / sample_size == pytest.approx(gap ** 2, rel=1e-6)
    # In validation the penalty is logged but the loss is the plain CTC loss.
    from fairseq.criterions.ctc import CtcCriterion

    model.eval()
    with torch.no_grad():
        criterion.sparsity.lambda1.fill_(2.0)
        loss_eval, _, log_eval = criterion(model, sample)
        plain, _, _ = CtcCriterion.forward(criterion, model, sample)
    assert "hjprune_sparsity" in log_eval and log_eval["hjprune_penalty"] != 0
    assert loss_eval.item() == plain.item()


def _swing(lambda2_lr_scale, seed=0):
    """Largest |s - t| over updates 300-600 of a macs run (target 0.4 from update 200 on), with a task
    loss that resists pruning (every kept unit lowers it, by a weight drawn per unit)."""
    torch.manual_seed(seed)
    m = GatedStub()
    c = constraint("macs", target_sparsity=0.4, sparsity_warmup_updates=200)
    g = torch.Generator().manual_seed(seed)
    gates = list(m.gates.parameters())
    weights = [torch.exp(1.5 * torch.randn(p.shape, generator=g)) / p.numel() for p in gates]
    cfg = HJPruneAdamWConfig(lr=[1e-4], gate_lr=0.2, lambda_lr=0.2, lambda2_lr_scale=lambda2_lr_scale)
    history = _drive(m, c, cfg, 600, task=lambda: -sum((w * keep_prob(p)).sum() for w, p in zip(weights, gates)))
    return max(abs(logs["sparsity"] - logs["target"]) for logs in history[300:])


def test_faster_lambda2_damps_the_swing_around_the_target():
    """A short run at the tiny configs' rates: with lambda2 at 10x lambda1's rate the sparsity stays
    close to its target; at equal rates (the paper) it swings (README "Short pruning runs")."""
    equal, damped = _swing(1.0), _swing(10.0)
    assert equal > 0.05
    assert damped < 0.03 and damped < equal / 3


def test_a_new_measure_is_one_registered_function(monkeypatch):
    """A measure added to the registry (here: FFN parameters only) constrains a model without any other
    change to the constraint; its quantities name its targets and logs."""
    from hjprune_fairseq.core import measures
    from hjprune_fairseq.core.sparsity import SparsityConstraint

    monkeypatch.setattr(measures, "MEASURES", dict(measures.MEASURES))
    monkeypatch.setattr("hjprune_fairseq.core.sparsity.MEASURES", measures.MEASURES)
    measures.sparsity_measure("ffn_size")(
        lambda e, d: {"ffn_size": measures.removed(e.params["ffn"], d.params["ffn"])})
    with pytest.raises(ValueError, match="registered twice"):
        measures.sparsity_measure("ffn_size")(lambda e, d: {})
    stub = GatedStub()
    with torch.no_grad():
        for g in stub.gates.ffn:
            g.log_alpha[: g.log_alpha.numel() // 4] = -20.0  # a quarter of every layer's FFN units off
    penalty, logs = SparsityConstraint("ffn_size", {"ffn_size": 0.25}, 0, 10.0)(stub, 0)
    assert logs["sparsity"] == pytest.approx(0.25, abs=0.02) and logs["target"] == 0.25
    with pytest.raises(ValueError, match=r"unknown sparsity mode 'energy'"):
        SparsityConstraint("energy", {"energy": 0.3}, 0, 10.0)
    with pytest.raises(ValueError, match="sparsity_mode=latency needs criterion.latency_table"):  # a resource it needs
        SparsityConstraint("latency", {"latency": 0.3}, 0, 10.0)(stub, 0)
