"""The prune stage under fairseq's own training loop: logging, resume, two processes."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from fairseq_fixtures import EXAMPLES, USER_DIR, hydra_train, make_letter_corpus

TINY = os.path.join(EXAMPLES, "tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_letter_corpus(str(tmp_path_factory.mktemp("prune_corpus")), {"train": 8, "valid": 4})


def overrides(corpus, w2v, save_dir, max_update, mode="macs", **extra):
    o = {
        "common.user_dir": USER_DIR, "task.data": corpus, "model.w2v_path": w2v, "checkpoint.save_dir": str(save_dir),
        "optimization.max_update": max_update, "dataset.max_tokens": 64000, "common.log_interval": 1,
        "criterion.sparsity_warmup_updates": 4, "model.apply_mask": "true", "+model.mask_prob": 0.2,
        "+model.mask_length": 2, "+model.dropout": 0.1, "dataset.validate_interval_updates": 0, "mode": mode,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def run(tmp_path, args):
    r = hydra_train(TINY, "prune", args, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def pruning_state(path):
    s = torch.load(path, weights_only=False)
    state = {k: v for k, v in s["model"].items() if k.startswith("gates.")}
    state.update({f"criterion.{k}": v for k, v in s["criterion"].items()})
    return state, s["optimizer_history"][-1]["num_updates"]


def test_logs_to_progress_bar_and_tensorboard(tmp_path, corpus, w2v_pretrained):
    tb = tmp_path / "tb"
    r = run(tmp_path, overrides(corpus, w2v_pretrained, tmp_path / "ck", 4, **{"common.tensorboard_logdir": str(tb)}))
    log = r.stdout + r.stderr
    for key in ("sparsity=", "target=", "lambda1=", "lambda2=", "exp_mparams=", "exp_gmacs=", "kept_conv=",
                "kept_heads=", "kept_ffn=", "kept_hidden=", "mask_sparsity="):
        assert key in log, key
    events = [os.path.join(d, f) for d, _, fs in os.walk(tb) for f in fs if f.startswith("events")]
    assert events
    blob = b"".join(open(e, "rb").read() for e in events)
    assert b"sparsity" in blob and b"lambda1" in blob and b"kept_heads" in blob


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_keep_gates_and_multipliers_identical(tmp_path, corpus, w2v_pretrained):
    port = free_port()
    driver = os.path.join(os.path.dirname(__file__), "ddp_driver.py")
    args = overrides(corpus, w2v_pretrained, tmp_path / "ddp", 6, mode="sep_size")
    procs = [
        subprocess.Popen([sys.executable, driver, str(r), "2", str(port), str(tmp_path / f"rank{r}.pt"), TINY, "prune", *args],
                         cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(__file__)))
        for r in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["num_updates"] == r1["num_updates"] == 6
    assert set(r0) == set(r1) and "criterion.sparsity.lambda1" in r0
    assert r0["criterion.sparsity.lambda1"].shape == (2,)  # sep_size: one pair per quantity
    for k in r0:
        if k != "num_updates":
            assert torch.equal(r0[k], r1[k]), k
    assert r0["criterion.sparsity.lambda1"].abs().sum() > 0


LADDER = {"criterion.target_sparsity": "[0.2,0.4,0.6]", "criterion.sparsity_warmup_updates": 2,
          "+criterion.budget_hold_updates": 2, "lr_scheduler.phase_ratio": "null", "+lr_scheduler.warmup_steps": 3,
          "+lr_scheduler.hold_steps": 3, "+lr_scheduler.decay_steps": 6}  # a rung: 2 updates of ramp, 2 of hold


def test_budget_ladder_saves_each_rung_and_resumes_mid_hold(tmp_path, corpus, w2v_pretrained, capsys):
    """A ladder 0.2/0.4/0.6 writes checkpoint_budget_0.20/0.40/0.60.pt at the end of each hold (updates 4, 8, 12),
    each recording its budget, exported at it; stopped at update 7 (inside the 0.40 hold) and resumed from
    checkpoint_last.pt, it ends as the uninterrupted run: gates, multipliers and every rung's checkpoint (fairseq's
    resume of any pruning run; the lr schedule is given in steps so it does not depend on max_update, as it would
    not for a run killed mid-way)."""
    import json

    from hjprune_fairseq.cli import export as export_cli
    from hjprune_fairseq.plugin.run_budget import BUDGET_KEY

    straight = tmp_path / "straight"
    run(tmp_path, overrides(corpus, w2v_pretrained, straight, 12, **LADDER))
    for t, n in (("0.20", 4), ("0.40", 8), ("0.60", 12)):
        s = torch.load(straight / f"checkpoint_budget_{t}.pt", weights_only=False)
        assert s["optimizer_history"][-1]["num_updates"] == n
        assert s["extra_state"][BUDGET_KEY] == {"mode": "macs", "targets": {"macs": float(t)}, "seconds": 10.0,
                                                "latency_table": None, "target_latency_ms": None}
        assert "train_iterator" in s["extra_state"]  # fairseq's own extra_state: resumable from it
    assert export_cli.main([str(straight / "checkpoint_budget_0.40.pt"), str(tmp_path / "slim40.pt")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["budget"]["targets"] == {"macs": 0.4} and r["budget"]["delivered"]["macs"] < 0.6

    resumed = tmp_path / "resumed"
    run(tmp_path, overrides(corpus, w2v_pretrained, resumed, 7, **LADDER))
    assert not (resumed / "checkpoint_budget_0.40.pt").exists()
    half, n = pruning_state(resumed / "checkpoint_last.pt")
    assert n == 7
    run(tmp_path, overrides(corpus, w2v_pretrained, resumed, 12, **LADDER))  # picks up checkpoint_last.pt
    for name in ("checkpoint_last.pt", "checkpoint_budget_0.40.pt", "checkpoint_budget_0.60.pt"):
        (a, na), (b, nb) = pruning_state(straight / name), pruning_state(resumed / name)
        assert na == nb and a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert any(not torch.equal(half[k], a[k]) for k in a)  # the second half did train
    assert a["criterion.sparsity.lambda1"].abs().sum() > 0


def test_sep_size_ladder_saves_both_rungs_each_exported_at_its_targets(tmp_path, corpus, w2v_pretrained, capsys):
    """A ladder of two quantities (sep_size: CNN 0.3 then 0.6, Transformer 0.1 then 0.2) writes a checkpoint per
    rung, named after both targets and recording them; each exports within 0.5 points of both."""
    import json

    from hjprune_fairseq.cli import export as export_cli
    from hjprune_fairseq.plugin.run_budget import BUDGET_KEY

    ladder = {**LADDER, "criterion.target_cnn_sparsity": "[0.3,0.6]", "criterion.target_transformer_sparsity": "[0.1,0.2]"}
    del ladder["criterion.target_sparsity"]
    run(tmp_path, overrides(corpus, w2v_pretrained, tmp_path / "ck", 8, mode="sep_size", **ladder))
    for n, targets in ((4, {"cnn": 0.3, "transformer": 0.1}), (8, {"cnn": 0.6, "transformer": 0.2})):
        name = f"checkpoint_budget_cnn{targets['cnn']:.2f}_transformer{targets['transformer']:.2f}.pt"
        s = torch.load(tmp_path / "ck" / name, weights_only=False)
        assert s["optimizer_history"][-1]["num_updates"] == n
        assert s["extra_state"][BUDGET_KEY]["targets"] == targets
        assert export_cli.main([str(tmp_path / "ck" / name), str(tmp_path / f"slim{n}.pt")]) == 0
        r = json.loads(capsys.readouterr().out)["budget"]
        assert r["targets"] == targets
        for q, t in targets.items():
            assert abs(r["delivered"][q] - t) <= 0.005, (name, q, r["delivered"])


@pytest.mark.parametrize("mode, targets, message", [
    ("macs", {"target_sparsity": [0.4, 0.2]}, "list of increasing numbers"),
    ("macs", {"target_sparsity": [0.2, 1.0]}, "list of increasing numbers"), ("macs", {"target_sparsity": []}, "list of"),
    ("sep_size", {"target_cnn_sparsity": [0.3, 0.6], "target_transformer_sparsity": [0.1, 0.2, 0.3]},
     r"criterion.target_cnn_sparsity and criterion.target_transformer_sparsity must be lists of one length"),
    ("sep_size", {"target_cnn_sparsity": [0.3, 0.6], "target_transformer_sparsity": 0.2}, "must be lists of one length"),
    ("sep_size", {"target_cnn_sparsity": [0.3, 0.6], "target_transformer_sparsity": [0.2, 0.1]}, "none decreasing"),
    ("sep_size", {"target_cnn_sparsity": [0.3, 0.3], "target_transformer_sparsity": [0.1, 0.1]}, "at least one rising"),
    ("sep_size", {"target_cnn_sparsity": [0.3, 1.2], "target_transformer_sparsity": [0.1, 0.2]}, r"numbers in \[0, 1\)"),
    ("sep_size", {"target_sparsity": [0.2, 0.4]}, "sep_size takes a budget ladder as lists in criterion.target_cnn_sparsity"),
])
def test_bad_ladder_is_one_clear_error(mode, targets, message):
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.criterions.sparsity_config import SparsityConfig, constraint_from_config

    cfg = OmegaConf.structured(SparsityConfig(sparsity_mode=mode))
    for field, value in targets.items():
        setattr(cfg, field, OmegaConf.create({"t": value}).t)
    with pytest.raises(ValueError, match=message):
        constraint_from_config(cfg)


def test_a_ladder_of_two_quantities_may_hold_one_while_the_other_rises():
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.criterions.sparsity_config import SparsityConfig, constraint_from_config

    cfg = OmegaConf.structured(SparsityConfig(sparsity_mode="sep_size", budget_hold_updates=2))
    cfg.target_cnn_sparsity, cfg.target_transformer_sparsity = [0.3, 0.3], [0.1, 0.2]
    assert constraint_from_config(cfg).ladder == [[0.3, 0.1], [0.3, 0.2]]
