"""The benchmarks run and report what they claim to compare (no timing is asserted)."""

import json

import pytest

from hjprune_fairseq.cli import bench, bench_train
from hjprune_fairseq.core.presets import PRESETS


def test_latency_bench_reports_ratios(capsys):
    assert bench.main(["--preset", "tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mac_ratio"] == pytest.approx(2.0, rel=0.03)
    assert r["dense_latency_s"] > 0 and r["slim_latency_s"] > 0
    assert r["speedup"] == pytest.approx(r["dense_latency_s"] / r["slim_latency_s"])
    assert r["slim_params"] < r["dense_params"]


def test_latency_bench_fine_grained_model(capsys):
    """--fine-grained times a third model with thin, uneven heads at the same MACs sparsity."""
    assert bench.main(["--preset", "tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--json",
                       "--fine-grained"]) == 0
    r = json.loads(capsys.readouterr().out)
    f = r["fine_grained"]
    assert f["mac_ratio"] == pytest.approx(2.0, rel=0.03)
    assert f["speedup"] == pytest.approx(r["dense_latency_s"] / f["latency_s"])
    assert f["speedup_vs_whole_heads"] == pytest.approx(r["slim_latency_s"] / f["latency_s"])
    spec = PRESETS["tiny"]
    assert len(f["qk_dims"]) == spec.num_layers and max(f["attention_calls"]) > 1  # uneven head widths in a layer
    assert all(q < h * spec.head_dim for q, h in zip(f["qk_dims"], spec.num_heads))  # dims pruned inside the heads


def test_train_step_bench_runs_both_updates(capsys):
    args = ["--preset", "tiny", "--batch-size", "1", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--json"]
    assert bench_train.main(args) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)  # stdout is the JSON alone
    assert "Wav2Vec2Model(" not in err and "ModuleList(" not in err  # fairseq's print of the model: debug log only
    assert r["stock_update_s"] > 0 and r["prune_update_s"] > 0
    assert r["ratio"] == pytest.approx(r["prune_update_s"] / r["stock_update_s"])


def test_train_step_bench_updates_gates_and_multipliers(tmp_path):
    from hjprune_fairseq.tools.bench import train_update as bench_train
    from hjprune_fairseq.plugin.fairseq_import import write_random_wav2vec2
    from hjprune_fairseq.core.presets import PRESETS

    import torch

    w2v = write_random_wav2vec2(PRESETS["tiny"], str(tmp_path / "w.pt"))
    model, criterion, optimizer = bench_train.build("prune", w2v, "sep_size")
    gates_before = [p.detach().clone() for p in model.gates.parameters()]
    lambdas_before = [p.detach().clone() for p in criterion.parameters()]
    bench_train.update(model, criterion, optimizer, bench_train.make_batch(1, 1.0, 12, 32, 0))
    # Both multipliers move at once; the gates move with the task loss (the penalty is 0 while lambda is).
    assert all(not torch.equal(a, b) for a, b in zip(lambdas_before, criterion.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(gates_before, model.gates.parameters()))


def test_latency_bench_reaches_high_budgets_and_times_an_aligned_model(capsys):
    """--macs-sparsity 0.8 is met (the scaled pattern saturated below it), with an aligned model beside."""
    assert bench.main(["--preset", "tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--json",
                       "--macs-sparsity", "0.8", "--align", "8"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 1 - 1 / r["mac_ratio"] == pytest.approx(0.8, abs=0.005)
    al = r["aligned"]
    assert 1 - 1 / al["mac_ratio"] == pytest.approx(0.8, abs=0.005)
    assert al["speedup_vs_unaligned"] == pytest.approx(r["slim_latency_s"] / al["latency_s"])
    s = al["structure"]
    assert all(c % 8 == 0 for c in s["conv_channels"] + s["ffn_units"] + [s["hidden"]])
    assert any(c % 8 for c in r["slim_structure"]["conv_channels"] + r["slim_structure"]["ffn_units"])


def test_latency_bench_refuses_an_unreachable_budget_in_one_line(capsys):
    # blocks of 100 units: this model's 128 channels and 192 hidden dims can keep only 100 or all
    assert bench.main(["--preset", "tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--macs-sparsity", "0.9",
                       "--align", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fewer MACs" in err
