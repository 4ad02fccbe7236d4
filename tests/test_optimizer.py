"""hjprune_adamw: three groups, only the weights follow the scheduler and get clipped, ascent on lambdas."""

import pytest
import torch
from omegaconf import OmegaConf

from hjprune_fairseq.hard_concrete import HardConcrete
from hjprune_fairseq.optim.hjprune_adamw import HJPruneAdamW, HJPruneAdamWConfig
from hjprune_fairseq.sparsity import LAMBDA_GROUP


def setup(**kw):
    w = torch.nn.Parameter(torch.ones(3))
    gate = HardConcrete((4,))
    lam = torch.nn.Parameter(torch.zeros(2))
    lam.param_group = LAMBDA_GROUP
    cfg = OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3], gate_lr=0.05, lambda_lr=0.02, weight_decay=0.1, **kw))
    return HJPruneAdamW(cfg, [w, gate.log_alpha, lam]), w, gate.log_alpha, lam


def test_groups_and_set_lr():
    opt, w, la, lam = setup()
    roles = [(g["hjprune_role"], g["lr"], g["weight_decay"], g["maximize"]) for g in opt.param_groups]
    assert roles == [("weights", 1e-3, 0.1, False), ("gates", 0.05, 0.0, False), ("multipliers", 0.02, 0.0, True)]
    opt.set_lr(5e-4)  # warming up: the fixed groups keep their rates
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.05, 0.02])
    opt.set_lr(1e-3)
    opt.set_lr(5e-4)  # past the peak, at half of it: the fixed groups follow the decay
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.025, 0.01])
    assert opt.get_lr() == 5e-4
    const, *_ = setup(fixed_lrs_follow_schedule=False)
    const.set_lr(1e-3)
    const.set_lr(5e-4)
    assert [g["lr"] for g in const.param_groups] == [5e-4, 0.05, 0.02]


def test_ascent_on_multipliers_descent_elsewhere():
    opt, w, la, lam = setup()
    before = (w.detach().clone(), la.detach().clone(), lam.detach().clone())
    for p in (w, la, lam):
        p.grad = torch.ones_like(p)
    opt.step()
    assert (w < before[0]).all() and (la < before[1]).all()
    assert (lam > before[2]).all()


def test_clipping_touches_only_weights():
    opt, w, la, lam = setup()
    w.grad = torch.full_like(w, 100.0)
    la.grad = torch.full_like(la, 100.0)
    lam.grad = torch.full_like(lam, 100.0)
    norm = opt.clip_grad_norm(1.0)
    assert norm.item() == pytest.approx(100.0 * 3 ** 0.5)
    assert w.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert (la.grad == 100.0).all() and (lam.grad == 100.0).all()


def test_state_round_trip_keeps_configured_fixed_lrs():
    opt, w, la, lam = setup()
    for p in (w, la, lam):
        p.grad = torch.ones_like(p)
    opt.step()
    opt.set_lr(1e-3)  # past the peak: saved with the state
    state = opt.state_dict()
    opt2, *_ = setup()
    opt2.cfg.gate_lr = 0.03  # a new run may change the gate lr: the current config wins
    opt2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups][1:] == pytest.approx([0.03, 0.02])
    opt2.set_lr(2e-4)  # the restored run knows it is past the peak
    assert [g["lr"] for g in opt2.param_groups][1:] == pytest.approx([0.006, 0.004])
    assert opt2.param_groups[2]["maximize"] is True
    assert set(opt2.optimizer.state) and all(s["step"] == 1 for s in opt2.optimizer.state.values())


@pytest.mark.parametrize("name, extra", [
    ("tri_stage", dict(phase_ratio=[0.1, 0.4, 0.5], final_lr_scale=0.05, max_update=100)),
    ("polynomial_decay", dict(warmup_updates=10, total_num_update=100)),
])
def test_fairseq_schedulers_drive_only_weights(name, extra):
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY, LR_SCHEDULER_REGISTRY

    opt, *_ = setup()
    cfg = OmegaConf.structured(LR_SCHEDULER_DATACLASS_REGISTRY[name](lr=[1e-3], **extra))
    sched = LR_SCHEDULER_REGISTRY[name](cfg, opt)
    for n in range(1, 60):
        sched.step_update(n)
    lrs = [g["lr"] for g in opt.param_groups]
    scale = lrs[0] / 1e-3
    assert 0 < scale <= 1 and lrs[1:] == pytest.approx([0.05 * scale, 0.02 * scale])


def test_flattened_params_are_refused():
    flat = torch.nn.Parameter(torch.zeros(1000))
    cfg = OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3]))
    with pytest.raises(ValueError, match="fp16_no_flatten_grads"):
        HJPruneAdamW(cfg, [flat])
