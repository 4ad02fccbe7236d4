"""hjprune_adamw: four groups, only the weights follow the scheduler and get clipped, ascent on lambdas."""

import pytest
import torch
from omegaconf import OmegaConf

from hjprune_fairseq.core.hard_concrete import HardConcrete
from hjprune_fairseq.core.sparsity import LAMBDA2_GROUP, LAMBDA_GROUP, SparsityConstraint
from hjprune_fairseq.plugin.optim.hjprune_adamw import HJPruneAdamW, HJPruneAdamWConfig


def setup(**kw):
    """A weight, a gate and the multipliers of a two-quantity constraint (sep_size)."""
    w = torch.nn.Parameter(torch.ones(3))
    gate = HardConcrete((4,))
    lam = SparsityConstraint("sep_size", {"cnn": 0.5, "transformer": 0.2}, 0, 10.0)
    cfg = OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3], gate_lr=0.05, lambda_lr=0.02, weight_decay=0.1, **kw))
    return HJPruneAdamW(cfg, [w, gate.log_alpha, *lam.parameters()]), w, gate.log_alpha, lam


def test_groups_and_set_lr():
    opt, w, la, lam = setup()
    assert (lam.lambda1.param_group, lam.lambda2.param_group) == (LAMBDA_GROUP, LAMBDA2_GROUP)
    roles = [(g["hjprune_role"], g["lr"], g["weight_decay"], g["maximize"]) for g in opt.param_groups]
    assert roles == [("weights", 1e-3, 0.1, False), ("gates", 0.05, 0.0, False), ("lambda1", 0.02, 0.0, True),
                     ("lambda2", 0.02, 0.0, True)]
    assert [g["params"] for g in opt.param_groups][2:] == [[lam.lambda1], [lam.lambda2]]
    opt.set_lr(5e-4)  # warming up: the fixed groups keep their rates
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.05, 0.02, 0.02])
    opt.set_lr(1e-3)
    opt.set_lr(5e-4)  # past the peak, at half of it: the fixed groups follow the decay
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.025, 0.01, 0.01])
    assert opt.get_lr() == 5e-4
    const, *_ = setup(fixed_lrs_follow_schedule=False)
    const.set_lr(1e-3)
    const.set_lr(5e-4)
    assert [g["lr"] for g in const.param_groups] == [5e-4, 0.05, 0.02, 0.02]


def test_lambda2_lr_scale():
    opt, w, la, lam = setup(lambda2_lr_scale=10.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 0.05, 0.02, 0.2])
    opt.set_lr(1e-3)
    opt.set_lr(5e-4)  # lambda2 follows the decay too
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 0.025, 0.01, 0.1])
    for p in lam.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # AdamW's first step moves each multiplier by its group's lr
    assert lam.lambda1.detach().tolist() == pytest.approx([0.01, 0.01], rel=1e-4)
    assert lam.lambda2.detach().tolist() == pytest.approx([0.1, 0.1], rel=1e-4)
    with pytest.raises(ValueError, match="lambda2_lr_scale"):
        setup(lambda2_lr_scale=0.0)


def test_ascent_on_multipliers_descent_elsewhere():
    opt, w, la, lam = setup()
    params = (w, la, lam.lambda1, lam.lambda2)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert (w < before[0]).all() and (la < before[1]).all()
    assert (lam.lambda1 > before[2]).all() and (lam.lambda2 > before[3]).all()


def test_clipping_touches_only_weights():
    opt, w, la, lam = setup()
    w.grad = torch.full_like(w, 100.0)
    la.grad = torch.full_like(la, 100.0)
    for p in lam.parameters():
        p.grad = torch.full_like(p, 100.0)
    norm = opt.clip_grad_norm(1.0)
    assert norm.item() == pytest.approx(100.0 * 3 ** 0.5)
    assert w.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert (la.grad == 100.0).all() and all((p.grad == 100.0).all() for p in lam.parameters())


def test_state_round_trip_keeps_configured_fixed_lrs():
    opt, w, la, lam = setup()
    for p in (w, la, *lam.parameters()):
        p.grad = torch.ones_like(p)
    opt.step()
    opt.set_lr(1e-3)  # past the peak: saved with the state
    state = opt.state_dict()
    opt2, *_ = setup()
    opt2.cfg.gate_lr = 0.03  # a new run may change the gate and lambda2 rates: the current config wins
    opt2.cfg.lambda2_lr_scale = 5.0
    opt2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups][1:] == pytest.approx([0.03, 0.02, 0.1])
    opt2.set_lr(2e-4)  # the restored run knows it is past the peak
    assert [g["lr"] for g in opt2.param_groups][1:] == pytest.approx([0.006, 0.004, 0.02])
    assert opt2.param_groups[2]["maximize"] is opt2.param_groups[3]["maximize"] is True
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
    assert 0 < scale <= 1 and lrs[1:] == pytest.approx([0.05 * scale, 0.02 * scale, 0.02 * scale])


def test_flattened_params_are_refused():
    flat = torch.nn.Parameter(torch.zeros(1000))
    cfg = OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3]))
    with pytest.raises(ValueError, match="fp16_no_flatten_grads"):
        HJPruneAdamW(cfg, [flat])


def test_fixed_lrs_follow_the_decay_after_reset_optimizer():
    """--reset-optimizer in the decay phase: a fresh optimizer never sees the peak again; a falling lr
    tells it the schedule is past its peak (from the second update on)."""
    opt, *_ = setup()
    opt.set_lr(1e-5)  # the scheduler's initial lr, set when it is built
    opt.set_lr(5e-4)  # the resumed update, in the decay: cannot be told from a warm-up yet
    opt.set_lr(4e-4)  # the lr fell: past the peak
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([4e-4, 0.02, 0.008, 0.008])
    warm, *_ = setup()
    for lr in (1e-4, 3e-4, 6e-4):  # a warm-up only rises: the fixed groups keep their rates
        warm.set_lr(lr)
    assert [g["lr"] for g in warm.param_groups] == pytest.approx([6e-4, 0.05, 0.02, 0.02])


def test_ddp_settings_that_reduce_gates_in_16_bits_are_refused():
    """ddp_comm_hook=fp16 compresses every pytorch_ddp bucket to fp16, the fp32 gates and fp64 multipliers
    included (compat quirk 16); fairscale's backends are not checked. Read from distributed_training."""
    import os

    from fairseq import optim
    from fairseq_fixtures import EXAMPLES, USER_DIR, compose_like_fairseq

    cfg = compose_like_fairseq(os.path.join(EXAMPLES, "tiny"), "prune", [
        f"common.user_dir={USER_DIR}", "task.data=x", "model.w2v_path=x", "distributed_training.ddp_backend=pytorch_ddp",
        "distributed_training.ddp_comm_hook=fp16"])
    w = torch.nn.Parameter(torch.ones(3, 3))
    with pytest.raises(ValueError, match="ddp_comm_hook=fp16 is not supported by hjprune_adamw"):
        optim.build_optimizer(cfg.optimizer, [w])
    for backend in ("slowmo", "fully_sharded"):
        cfg = OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3], ddp_backend=backend))
        with pytest.raises(ValueError, match=f"ddp_backend={backend} is not supported"):
            HJPruneAdamW(cfg, [w])
    for backend in ("legacy_ddp", "no_c10d", "pytorch_ddp", "c10d"):
        HJPruneAdamW(OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3], ddp_backend=backend, ddp_comm_hook="none")), [w])
