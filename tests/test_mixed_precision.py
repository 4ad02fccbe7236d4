"""fp16 / bf16: the gates and multipliers stay fp32, their overflow is caught, and a prune runs."""

import copy
import math
import os
import time

import pytest
import torch
from fairseq_fixtures import EXAMPLES, USER_DIR, compose_like_fairseq, hydra_train, make_letter_corpus
from helpers import gated_model

from hjprune_fairseq.core import hard_concrete
from hjprune_fairseq.core.cost_model import report
from hjprune_fairseq.core.sparsity import SparsityConstraint

TINY = os.path.join(EXAMPLES, "tiny")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gates_and_multipliers_keep_their_dtype_when_cast(w2v_pretrained, dtype):
    model = gated_model(w2v_pretrained).to(dtype)
    constraint = SparsityConstraint("macs", {"macs": 0.4}, 0, 10.0).to(dtype)
    assert {p.dtype for p in model.gates.parameters()} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if not n.startswith("gates.")} == {dtype}
    assert constraint.lambda1.dtype == constraint.lambda2.dtype == torch.float64
    model.train()
    source = torch.randn(2, 4000, dtype=dtype)
    out = model(source=source, padding_mask=torch.zeros(2, 4000, dtype=torch.bool))
    assert out["encoder_out"].dtype == dtype and torch.isfinite(out["encoder_out"]).all()


def test_keep_probability_gradient_survives_at_log_alpha_8(w2v_pretrained):
    """In fp16, sigmoid rounds to 1 above ~8 and its gradient is exactly 0: such a gate could never be
    pruned again. The gates stay fp32, so dP/dlog_alpha is still 6.8e-5 there."""
    x = torch.tensor(8.0 - hard_concrete.BETA * math.log(-hard_concrete.LIMIT_L / hard_concrete.LIMIT_R))
    half = x.half().requires_grad_()
    torch.sigmoid(half).backward()
    assert half.grad.item() == 0.0  # the quirk the fp32 gates avoid
    model = gated_model(w2v_pretrained).half()
    with torch.no_grad():
        for p in model.gates.parameters():
            p.fill_(8.0)
    model.gates.keep_probs().heads[0].sum().backward()
    grad = model.gates.heads[0].log_alpha.grad
    assert grad.dtype == torch.float32
    assert grad.min().item() == pytest.approx((torch.sigmoid(x) * (1 - torch.sigmoid(x))).item(), rel=1e-3)
    assert grad.min().item() > 1e-5


def fp16_optimizer(params, **overrides):
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    args = [f"common.user_dir={USER_DIR}", "task.data=x", "model.w2v_path=x", "common.fp16=true",
            "common.fp16_no_flatten_grads=true", "common.fp16_init_scale=128", "optimization.update_freq=[4]",
            *[f"{k}={v}" for k, v in overrides.items()]]
    cfg = compose_like_fairseq(TINY, "prune", args)
    return FP16Optimizer.build_optimizer(cfg, params)


def test_multiplier_gradient_no_longer_overflows_fp16(w2v_pretrained):
    """The review's scenario: 4 micro-batches of ~9,500 frames, loss scale 128, fairseq's real FP16Optimizer
    with hjprune_adamw. The lambda1 gradient, gap * sample_size * scale summed over 4, is far beyond fp16's
    65504; it used to become inf and then NaN. Now the multipliers are float64 and the step is correct."""
    model = gated_model(w2v_pretrained).half().train()
    constraint = SparsityConstraint("macs", {"macs": 0.4}, 0, 10.0).half()
    params = [p for p in list(model.parameters()) + list(constraint.parameters()) if p.requires_grad]
    opt = fp16_optimizer(params)
    frames = 9500
    for _ in range(4):
        penalty, logs = constraint(model, 0)
        opt.backward(penalty * frames)
    gap = logs["sparsity"] - logs["target"]
    assert abs(constraint.lambda1.grad.item()) == pytest.approx(abs(gap) * frames * 128 * 4, rel=1e-3)
    assert abs(constraint.lambda1.grad.item()) > 65504  # what fp16 cannot hold
    opt.multiply_grads(1.0 / (4 * frames))
    norm = opt.clip_grad_norm(10.0)
    assert math.isfinite(float(norm))
    opt.step()
    assert all(torch.isfinite(p).all() for p in params)
    # AdamW's first step moves a multiplier by its lr, by ascent: against the sign of the gap (s < t here)
    lr = next(g["lr"] for g in opt.fp32_optimizer.param_groups if g["hjprune_role"] == "lambda1")
    assert constraint.lambda1.item() == pytest.approx(lr * math.copysign(1, gap), rel=1e-3)


def test_inf_in_a_gate_gradient_is_an_overflow(w2v_pretrained):
    """A non-finite gate gradient is reported like a weight overflow: FP16Optimizer lowers the scale and
    fairseq skips the update; nothing is stepped."""
    model = gated_model(w2v_pretrained).half().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = fp16_optimizer(params)
    out = model(source=torch.randn(1, 4000).half())["encoder_out"]
    opt.backward(out.float().pow(2).mean())
    model.gates.heads[0].log_alpha.grad[0] = float("inf")
    before = [p.detach().clone() for p in params]
    with pytest.raises(OverflowError):
        opt.clip_grad_norm(10.0)
    assert opt.scaler.loss_scale == 64.0
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_inf_in_a_multiplier_gradient_stops_fp32_training():
    """In fp32 the trainer raises 'gradients are Nan/Inf' on a non-finite norm: the clip reports inf."""
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.optim.hjprune_adamw import HJPruneAdamW, HJPruneAdamWConfig

    w = torch.nn.Parameter(torch.ones(3))
    constraint = SparsityConstraint("macs", {"macs": 0.4}, 0, 10.0)
    opt = HJPruneAdamW(OmegaConf.structured(HJPruneAdamWConfig(lr=[1e-3])), [w, *constraint.parameters()])
    w.grad = torch.full((3,), 4.0)
    constraint.lambda1.grad = torch.tensor([float("nan")], dtype=torch.float64)
    constraint.lambda2.grad = torch.zeros(1, dtype=torch.float64)
    assert math.isinf(float(opt.clip_grad_norm(1.0)))
    assert torch.allclose(w.grad, torch.full((3,), 1 / math.sqrt(3)))  # the weights are still clipped
    constraint.lambda1.grad = torch.zeros(1, dtype=torch.float64)
    assert float(opt.clip_grad_norm(0.0)) == pytest.approx(1.0)


def test_memory_efficient_fp16_is_refused_in_one_line(tmp_path, w2v_pretrained):
    data = make_letter_corpus(str(tmp_path / "d"), {"train": 2, "valid": 1})
    r = hydra_train(TINY, "prune", [f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={w2v_pretrained}",
                                    f"checkpoint.save_dir={tmp_path / 'ck'}", "common.fp16=true",
                                    "common.memory_efficient_fp16=true", "common.fp16_no_flatten_grads=true"],
                    cwd=str(tmp_path))
    assert r.returncode != 0
    assert [l for l in r.stderr.splitlines() if l.startswith("hjprune: error:")] == [
        "hjprune: error: common.memory_efficient_fp16=true is not supported by hjprune_adamw (torch AdamW would "
        "step the 16-bit weights with 16-bit moments); use common.fp16 or common.bf16 with "
        "common.fp16_no_flatten_grads=true, or common.amp"], r.stderr[-2000:]


# ---- the tiny prune config under fairseq-hydra-train -------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_letter_corpus(str(tmp_path_factory.mktemp("mp_corpus")), {"train": 8, "valid": 2})


def prune(tmp_path, corpus, w2v, precision, max_update, **extra):
    o = {"common.user_dir": USER_DIR, "task.data": corpus, "model.w2v_path": w2v,
         "checkpoint.save_dir": str(tmp_path / precision), "optimization.max_update": max_update,
         "dataset.max_tokens": 64000, "common.log_interval": 1, "criterion.sparsity_warmup_updates": max_update // 4,
         "dataset.validate_interval_updates": 0, "common.fp16_no_flatten_grads": "true", "common.seed": 3}
    if precision != "fp32":
        o[f"common.{precision}"] = "true"
    if precision == "fp16":  # on CPU, fairseq's overflow handler itself fails (it calls .cuda()): start low
        o["common.fp16_init_scale"] = 4
    o.update(extra)
    r = hydra_train(TINY, "prune", [f"{k}={v}" for k, v in o.items()], cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp_path / precision, r.stdout + r.stderr


def expected_sparsity(path):
    from hjprune_fairseq.plugin.checkpoints import load_model

    model, _ = load_model(str(path))
    return report(model.spec, model.gates.keep_probs(), 10.0)["macs_sparsity"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_prune_runs_in_half_precision(tmp_path, corpus, w2v_pretrained, precision):
    save, log = prune(tmp_path, corpus, w2v_pretrained, precision, 4)
    losses = [float(x) for x in __import__("re").findall(r"\bloss=([-0-9.e+na]+)", log)]
    assert losses and all(math.isfinite(x) for x in losses), log[-2000:]
    last = torch.load(save / "checkpoint_last.pt", weights_only=False)
    gates = {k: v for k, v in last["model"].items() if k.startswith("gates.")}
    assert gates and {v.dtype for v in gates.values()} == {torch.float32}
    # fairseq saves every weight as fp32; gates held in 16 bits would still be on the 16-bit grid
    low = torch.float16 if precision == "fp16" else torch.bfloat16
    assert any((v != v.to(low).float()).any() for v in gates.values())
    assert {v.dtype for v in last["criterion"].values()} == {torch.float64}
    # Initialised within a few 0.01 of log_alpha_for(0.99); gate_lr 0.2 moves them by about that a step.
    moved = max((v - hard_concrete.log_alpha_for(0.99)).abs().max().item() for v in gates.values())
    assert moved > 0.1  # the gates are learning


def test_bf16_prune_reaches_the_sparsity_of_fp32(tmp_path, corpus, w2v_pretrained):
    """200 updates with a faster multiplier rate, so both runs settle on the target (0.4); no validation and no
    checkpoint at the end of each epoch (a batch or two each: ~100 of them), one log line every 50 updates."""
    fast = {"optimizer.lambda_lr": 1.0, "dataset.validate_interval": 1000, "checkpoint.save_interval": 1000,
            "common.log_interval": 50}
    s32 = expected_sparsity(prune(tmp_path, corpus, w2v_pretrained, "fp32", 200, **fast)[0] / "checkpoint_last.pt")
    s16 = expected_sparsity(prune(tmp_path, corpus, w2v_pretrained, "bf16", 200, **fast)[0] / "checkpoint_last.pt")
    assert abs(s32 - 0.4) < 0.02  # the constraint is at work
    assert abs(s32 - s16) < 0.01, (s32, s16)


# ---- several processes: fairseq's own DDP wrappers, FP16Optimizer, clipping --------------------------

GATE_GRADS = ([1e5, 1.0001, 3e-8], [3e5, -2.0, 1e-8])  # per rank: beyond fp16 (x the loss scale), finer than bf16
LAMBDA_GRADS = (([2.5e4], [-7.0]), ([3.5e4], [1.0]))  # per rank: lambda1, lambda2
SAMPLE_SIZE = 6  # the weights' gradient, 100 per element on each rank, averages to a norm of 100: clipped to 10
CLIP = 10.0


class TinyGated(torch.nn.Module):
    """A 16-bit weight first (legacy DDP's buffer takes its dtype), then fp32 gates; its loss has the
    gradients it is given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, 3))
        self.gates = hard_concrete.HardConcrete((3,))

    def forward(self, d_weight, d_gates):
        return (self.weight.float() * d_weight).sum() + (self.gates.log_alpha * d_gates).sum()


class TinyCriterion(torch.nn.Module):
    """The multipliers inside a criterion, as hjprune_ctc holds them."""

    def __init__(self):
        super().__init__()
        self.sparsity = SparsityConstraint("macs", {"macs": 0.4}, 0, 10.0)

    def forward(self, d1, d2):
        return (self.sparsity.lambda1 * d1).sum() + (self.sparsity.lambda2 * d2).sum()


def cpu_ddp(module, device_ids, output_device, **kw):
    """fairseq's pytorch_ddp wrapper passes the CUDA device; torch's DDP of a CPU module takes none."""
    return torch.nn.parallel.DistributedDataParallel(module, **kw)


def one_update(cfg, rank: int = 0, world: int = 1) -> dict:
    """One update as fairseq's Trainer makes it: cast, wrap (with several ranks), zero_grad, backward, all-reduce
    model and criterion, multiply by world / sample_size, clip, step. Returns what AdamW saw and did."""
    from itertools import chain

    from fairseq import optim
    from fairseq.distributed import utils as distributed_utils
    from fairseq.models import DistributedFairseqModel
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    torch.manual_seed(0)
    model, criterion = TinyGated(), TinyCriterion()
    if cfg.common.fp16:
        model, criterion = model.half(), criterion.half()
    elif cfg.common.bf16:
        model, criterion = model.to(dtype=torch.bfloat16), criterion.to(dtype=torch.bfloat16)
    if world > 1:
        group = distributed_utils.get_data_parallel_group()
        model, criterion = (DistributedFairseqModel(cfg.distributed_training, m, process_group=group,
                                                    device=torch.device("cpu")) for m in (model, criterion))
    params = [p for p in chain(model.parameters(), criterion.parameters()) if p.requires_grad]
    half = cfg.common.fp16 or cfg.common.bf16
    opt = FP16Optimizer.build_optimizer(cfg, params) if half else optim.build_optimizer(cfg.optimizer, params)
    d1, d2 = (torch.tensor(g, dtype=torch.float64) for g in LAMBDA_GRADS[rank])
    opt.zero_grad()  # also sets FP16Optimizer's multiply factor to 1 / loss scale
    opt.backward(model(torch.full((3, 3), 100.0), torch.tensor(GATE_GRADS[rank])) + criterion(d1, d2))
    opt.all_reduce_grads(model)
    opt.all_reduce_grads(criterion)
    gate = model.gates.log_alpha
    scale = opt.scaler.loss_scale if getattr(opt, "scaler", None) is not None else 1.0
    reduced = (gate.grad / scale).clone()
    opt.multiply_grads(world / SAMPLE_SIZE)
    try:
        norm = opt.clip_grad_norm(CLIP)
        opt.step()
    except OverflowError:
        return {"overflow": True, "reduced_gate_grad": reduced}
    inner = getattr(opt, "fp32_optimizer", opt)
    moments = {g["hjprune_role"]: [inner.optimizer.state[p]["exp_avg"].clone() for p in g["params"]]
               for g in inner.param_groups}
    return {"overflow": False, "reduced_gate_grad": reduced, "norm": float(norm), "moments": moments,
            "gates": gate.detach().clone(), "lambda1": criterion.sparsity.lambda1.detach().clone(),
            "lambda2": criterion.sparsity.lambda2.detach().clone(), "weight": model.weight.detach().float().clone()}


def updates_on_rank(rank: int, world: int, port: int, configs: dict, out: str) -> None:
    """One rank of a gloo group: one update per DDP backend and precision, saved to OUT/rankR.pt."""
    from fairseq.models import distributed_fairseq_model

    torch.set_num_threads(1)  # a forked child: no OpenMP pool of the parent's (as DataLoader workers do)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    distributed_fairseq_model.DistributedDataParallel = cpu_ddp
    results = {}
    for backend, cfg in configs.items():
        for precision in ("fp32", "fp16", "bf16"):
            cfg.common.fp16, cfg.common.bf16 = precision == "fp16", precision == "bf16"
            results[backend, precision] = one_update(cfg, rank, world)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_prune_cfg():
    """The tiny prune config for the updates below: loss scale 128, clip_norm CLIP, two ranks."""
    return compose_like_fairseq(TINY, "prune", [
        f"common.user_dir={USER_DIR}", "task.data=x", "model.w2v_path=x", "common.fp16_no_flatten_grads=true",
        "common.fp16_init_scale=128", f"optimization.clip_norm={CLIP}", "distributed_training.distributed_world_size=2"])


def with_values(cfg, values: dict):
    """A copy of ``cfg`` with ``values`` (dotted keys) set."""
    from omegaconf import OmegaConf

    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_prune_cfg):
    """Both ranks' results; forked, so the children start with this process's imports (a few seconds each)."""
    import socket

    configs = {backend: with_values(tiny_prune_cfg, {"distributed_training.ddp_backend": backend,
                                                    "optimizer.ddp_backend": backend})
               for backend in ("legacy_ddp", "pytorch_ddp")}
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # its first use imports torch._dynamo (~4 s): once, here
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = torch.multiprocessing.start_processes(updates_on_rank, args=(2, port, configs, str(out)), nprocs=2,
                                                  join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail("the two ranks did not finish within 120 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("backend", ["legacy_ddp", "pytorch_ddp"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_two_processes_reduce_and_clip_gates_and_multipliers_as_fp32(two_ranks, backend, precision):
    """Through fairseq's DDP wrappers and FP16Optimizer: the gates are averaged in fp32 (legacy_ddp used
    the fp16/bf16 buffer of the first weight: inf, then an overflow in fp16; rounding in bf16), only the
    weights are clipped (FP16Optimizer scaled every master by the clip factor), so AdamW sees the gate
    and multiplier gradients of fp32 and makes the same update."""
    ref, run = two_ranks[0][backend, "fp32"], two_ranks[0][backend, precision]
    mean = torch.tensor(GATE_GRADS).mean(0)
    assert torch.equal(ref["reduced_gate_grad"], mean)
    assert not run["overflow"], run["reduced_gate_grad"]
    assert torch.equal(run["reduced_gate_grad"], mean)
    assert run["norm"] == pytest.approx(ref["norm"], rel=1e-3) and ref["norm"] > CLIP
    assert torch.equal(run["moments"]["gates"][0], ref["moments"]["gates"][0])
    assert torch.equal(run["gates"], ref["gates"])
    for role in ("lambda1", "lambda2"):  # FP16Optimizer's masters of the fp64 multipliers are fp32
        assert run["moments"][role][0].double() == pytest.approx(ref["moments"][role][0], rel=1e-6)
        assert run[role] == pytest.approx(ref[role], rel=1e-6)
    assert run["moments"]["weights"][0] == pytest.approx(ref["moments"]["weights"][0].float(), rel=1e-3)
    assert run["moments"]["weights"][0].norm() == pytest.approx(0.1 * CLIP, rel=1e-3)  # (1 - beta1) * clipped
    assert all(torch.equal(two_ranks[1][backend, precision][k], run[k]) for k in ("gates", "lambda1", "lambda2"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fp16_optimizer_clips_only_the_weights(tiny_prune_cfg, precision):
    """One process: the weights' norm is 50, clip 10. FP16Optimizer used to fold the clip factor into every
    fp32 master, so the gates and multipliers reached AdamW at a fifth of their fp32 gradient; now only the
    weights are clipped, in every precision, and AdamW sees what it sees in fp32."""
    ref = one_update(tiny_prune_cfg)
    run = one_update(with_values(tiny_prune_cfg, {f"common.{precision}": True}))
    assert ref["norm"] == pytest.approx(300 / SAMPLE_SIZE, rel=1e-6) and run["norm"] == pytest.approx(ref["norm"])
    assert torch.equal(run["moments"]["gates"][0], ref["moments"]["gates"][0])
    assert torch.equal(run["gates"], ref["gates"])
    for role in ("lambda1", "lambda2"):
        assert run["moments"][role][0].double() == pytest.approx(ref["moments"][role][0], rel=1e-6)
        assert run[role] == pytest.approx(ref[role], rel=1e-6)
    assert run["moments"]["weights"][0].norm() == pytest.approx(0.1 * CLIP, rel=1e-3)  # the weights are clipped
