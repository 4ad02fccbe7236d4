"""hjprune-demo --quick --sweep --baselines: every stage runs and the report is written (budgets too
small for accuracy). The sweep is cut to one budget ladder of two rungs (latency at 0.2 and 0.3, with the
demo's latency table), besides the pipeline's macs_40, a run of its own."""

import contextlib
import io
import json
import os

import pytest

from hjprune_fairseq.cli import demo
from hjprune_fairseq.tools.demo import pipeline, report


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "asr")
    sweep = {"latency": [{"latency": 0.2}, {"latency": 0.3}]}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(pipeline, "SWEEP", sweep)
        assert demo.main(["--quick", "--sweep", "--baselines", "--jobs", "2", "--precision", "fp32", "--out", out]) == 0
    open(out + ".printed.txt", "w").write(printed.getvalue())  # beside OUT, which holds only the demo's files
    return out


def test_quick_demo_writes_the_report(quick):
    r = json.load(open(os.path.join(quick, "report.json")))
    names = [m["name"] for m in r["models"]]
    assert names == ["unpruned", "macs_40", "latency_1", "latency_2", "parp", "distill_40"]
    for m in r["models"]:
        assert 0 <= m["wer"] and m["latency_s"] > 0 and m["gmacs"] > 0 and m["predicted_latency_s"] > 0
        assert set(m["layers"]) >= {"conv_channels", "heads", "ffn_units"}
    unpruned, macs_40, latency_1, latency_2, parp, distill_40 = r["models"]
    for m, target in ((latency_1, 0.2), (latency_2, 0.3)):
        assert m["mode"] == "latency" and m["target_speedup"] == pytest.approx(1 / (1 - target))
        assert m["predicted_latency_s"] < unpruned["predicted_latency_s"]
    log = open(os.path.join(quick, "logs", "prune_latency_ladder.log")).read()
    assert "'sparsity_mode': latency," in log and "exp_latency_ms" in log and "latency_table.json'" in log
    assert "'target_sparsity': [0.2, 0.3]," in log and "'budget_hold_updates': 6," in log
    assert json.load(open(os.path.join(quick, "latency_table.json")))["backend"] == "pytorch"
    assert macs_40["gmacs"] < unpruned["gmacs"]  # the slim model is smaller, even in a quick run
    assert parp["gmacs"] == unpruned["gmacs"] and parp["mode"] == "parp"  # unstructured: dense MACs
    assert abs(parp["params"] - macs_40["params"]) < 0.01 * unpruned["params"]  # at macs_40's parameter count
    assert distill_40["mode"] == "task_agnostic"
    for png in ("wer_vs_gmacs.png", "kept_per_layer.png", "latency.png"):
        assert open(os.path.join(quick, png), "rb").read(4) == b"\x89PNG"
    md = open(os.path.join(quick, "report.md")).read()
    assert "| unpruned | none |" in md and "| macs_40 | macs |" in md and "| latency_1 | latency |" in md
    assert "| parp | parp |" in md and "PARP (unstructured)" in md and "| distill_40 | task_agnostic |" in md
    assert "| latency_2 | latency |" in md and "| 1.43x |" in md and "| 1.25x |" in md and "predicted s" in md
    assert set(r["timings_s"]) >= {"synthesise", "latency_table", "pretrain", "finetune", "prune_macs_40", "final_macs_40",
                                   "sweep_ladders", "sweep_rungs", "latency", "parp", "distill", "finetune_distill_40",
                                   "baselines"}


def test_sweep_prunes_each_mode_once_by_a_ladder(quick):
    """One prune run per mode (the latency ladder beside macs_40's own run), both rungs' checkpoints, each rung
    exported, fine-tuned and decoded."""
    logs = os.listdir(os.path.join(quick, "logs"))
    assert sorted(f for f in logs if f.startswith("prune_") and f.endswith(".log")) == [
        "prune_latency_ladder.log", "prune_macs_40.log"]
    ladder = os.path.join(quick, "checkpoints", "prune_latency_ladder")
    assert {"checkpoint_budget_0.20.pt", "checkpoint_budget_0.30.pt"} <= set(os.listdir(ladder))
    timings = json.load(open(os.path.join(quick, "report.json")))["timings_s"]
    for k in (1, 2):
        assert {f"export_latency_{k}", f"final_latency_{k}", f"decode_latency_{k}"} <= set(timings)
        assert os.path.exists(os.path.join(quick, f"slim_latency_{k}.pt"))
    export_2 = open(os.path.join(quick, "logs", "export_latency_2.log")).read()
    assert "checkpoint_budget_0.30.pt" in export_2 and '"latency": 0.3' in export_2


def test_report_gives_target_and_delivered_sparsity_of_every_pruned_model(quick):
    r = {m["name"]: m for m in json.load(open(os.path.join(quick, "report.json")))["models"]}
    assert "target" not in r["unpruned"]
    asked = {"macs_40": ("macs", {"macs": 0.4}), "latency_1": ("latency", {"latency": 0.2}),
             "latency_2": ("latency", {"latency": 0.3}), "distill_40": ("macs", {"macs": 0.4})}
    for name, (measure, target) in asked.items():
        m = r[name]
        assert m["measure"] == measure and m["target"] == target and set(m["delivered"]) == set(target)
        log = open(os.path.join(quick, "logs", f"export_{name}.log")).read()
        exported = json.JSONDecoder().raw_decode(log, log.index("{\n"))[0]["budget"]
        assert exported["targets"] == target  # the rung's budget, recorded in its checkpoint
        assert m["delivered"] == pytest.approx(exported["delivered"], abs=1e-9), name  # the export's, same measure
        # exported at its budget, or the export says the units (the tiny model, a table measured on a busy
        # machine) do not allow it; the report shows the gap either way
        assert abs(m["delivered"][measure] - target[measure]) <= 0.005 or "is not met within 0.5 points" in log, name
    for name in ("macs_40", "distill_40"):  # MACs: the tiny model's units always allow 0.4
        assert abs(r[name]["delivered"]["macs"] - 0.4) <= 0.005, r[name]["delivered"]
    assert r["macs_40"]["delivered"]["macs"] == pytest.approx(r["macs_40"]["macs_sparsity"])
    assert r["latency_2"]["ladder"] == {"run": "prune_latency_ladder", "rung": 2, "rungs": 2}
    assert r["macs_40"]["ladder"] is None and r["distill_40"]["ladder"] is None
    assert r["parp"]["measure"] == "size" and abs(r["parp"]["delivered"]["size"] - r["parp"]["target"]["size"]) < 0.01
    md = open(os.path.join(quick, "report.md")).read()
    assert "| model | measure | pruned by | target | delivered | off by (points) |" in md
    assert "| macs_40 | macs | a run of its own | 0.400 | " in md
    assert "| latency_2 | latency | ladder `prune_latency_ladder`, rung 2 of 2 | 0.300 | " in md


def test_budget_rows_name_each_quantity_of_a_measure_of_several():
    m = {"name": "sep_size_1", "measure": "sep_size", "target": {"cnn": 0.3, "transformer": 0.1},
         "delivered": {"cnn": 0.2987, "transformer": 0.1001},
         "ladder": {"run": "prune_sep_size_ladder", "rung": 1, "rungs": 3}}
    assert report.budget_rows([{"name": "unpruned"}, m]) == [
        "| sep_size_1 | sep_size | ladder `prune_sep_size_ladder`, rung 1 of 3 | cnn 0.300, transformer 0.100 | "
        "cnn 0.2987, transformer 0.1001 | 0.13 |"]


def test_the_sweep_ladders_are_valid_and_cheaper_than_separate_runs():
    """Every mode's ladder composes into the prune config's budget ladder of SWEEP's rungs, and three rungs take
    at most 60 % of the updates of three runs of their own, each rung ramping and holding."""
    from fairseq_fixtures import EXAMPLES, USER_DIR, compose_like_fairseq

    from hjprune_fairseq.plugin.criterions.sparsity_config import ladder_from_config

    for b in (pipeline.FULL, pipeline.QUICK):
        assert 10 * b.ladder_updates(3) <= 6 * 3 * b.prune and b.ladder_warmup > 0 and b.ladder_hold > 0
    for mode, rungs in pipeline.SWEEP.items():
        cfg = compose_like_fairseq(os.path.join(EXAMPLES, "tiny"), "prune", [
            f"common.user_dir={USER_DIR}", "task.data=x", "model.w2v_path=x", f"mode={mode}",
            *pipeline.target_overrides(mode, rungs), "+criterion.budget_hold_updates=6"])
        assert ladder_from_config(cfg.criterion) == rungs, mode


def test_report_says_what_it_shows(quick):
    r = json.load(open(os.path.join(quick, "report.json")))
    meta = [l.split("\t") for l in open(os.path.join(quick, "data", "test.meta.tsv")).read().splitlines()[1:]]
    voices = sorted({row[1] for row in meta})
    assert len(voices) > 1
    for m in r["models"]:
        assert sorted(m["wer_per_voice"]) == voices and all(w >= 0 for w in m["wer_per_voice"].values())
    md = open(os.path.join(quick, "report.md")).read()
    assert "eSpeak NG only" in md and "not accuracy on real speech" in md
    assert "WER % per test voice:" in md and "| model | " + " | ".join(voices) + " |" in md
    assert "`" + " ".join(pipeline.DECODING) + "`" in md  # the decoding settings, the same for every model
    assert "fairseq-generate, greedy CTC," in md
    slu = report.markdown("slu", "wer", r["models"], r["timings_s"], pipeline.Budget(**r["budget"]), r["precision"])
    assert "CTC" not in slu and "the intent classifier's most probable intent" in slu  # intent classifiers
    for name in ("decode_unpruned", "decode_macs_40"):  # fairseq-generate prints its config
        assert "'batch_size': 1," in open(os.path.join(quick, "logs", f"{name}.log")).read()


def test_prints_a_line_per_stage_with_the_time_left(quick):
    lines = open(quick + ".printed.txt").read().splitlines()
    done = [l for l in lines if " done in " in l]
    assert any(l.split("] ")[1].startswith("finetune done in") for l in done)
    assert any(l.split("] ")[1].startswith("prune_latency_ladder done in") for l in done)
    assert all("min left (estimate)" in l for l in done[:-1])
    # the last stage: nothing left, so every stage expected (the ladder's and its rungs' too) has run
    assert done[-1].split("] ")[1].startswith("latency done in") and "min left" not in done[-1]


def test_refuses_a_folder_with_results(quick, capsys):
    assert demo.main(["--quick", "--out", quick]) == 2
    assert "already holds results (pass --overwrite" in capsys.readouterr().err
    assert os.path.exists(os.path.join(quick, "report.json"))  # nothing lost
