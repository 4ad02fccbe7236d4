"""hjprune-demo --quick --sweep --baselines: every stage runs and the report is written (budgets too
small for accuracy). The sweep is cut to two points (run at once: macs at 0.2 and latency at 0.3),
besides the pipeline's macs_40 that it reuses."""

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
    sweep = {"macs": [["criterion.target_sparsity=0.2"], pipeline.MAIN_POINT[1]],
             "latency": [["criterion.target_sparsity=0.3"]]}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(pipeline, "SWEEP", sweep)
        assert demo.main(["--quick", "--sweep", "--baselines", "--jobs", "2", "--precision", "fp32", "--out", out]) == 0
    open(out + ".printed.txt", "w").write(printed.getvalue())  # beside OUT, which holds only the demo's files
    return out


def test_quick_demo_writes_the_report(quick):
    r = json.load(open(os.path.join(quick, "report.json")))
    names = [m["name"] for m in r["models"]]
    assert names == ["unpruned", "macs_40", "macs_1", "latency_1", "parp", "distill_40"]  # macs 0.4 once
    for m in r["models"]:
        assert 0 <= m["wer"] and m["latency_s"] > 0 and m["gmacs"] > 0 and m["predicted_latency_s"] > 0
        assert set(m["layers"]) >= {"conv_channels", "heads", "ffn_units"}
    latency_1 = r["models"][3]
    assert latency_1["mode"] == "latency" and latency_1["target_speedup"] == pytest.approx(1 / 0.7)
    assert latency_1["predicted_latency_s"] < r["models"][0]["predicted_latency_s"]
    log = open(os.path.join(quick, "logs", "prune_latency_1.log")).read()
    assert "'sparsity_mode': latency," in log and "exp_latency_ms" in log and "latency_table.json'" in log
    assert json.load(open(os.path.join(quick, "latency_table.json")))["backend"] == "pytorch"
    unpruned, macs_40, parp = r["models"][0], r["models"][1], r["models"][4]
    assert macs_40["gmacs"] < unpruned["gmacs"]  # the slim model is smaller, even in a quick run
    assert parp["gmacs"] == unpruned["gmacs"] and parp["mode"] == "parp"  # unstructured: dense MACs
    assert abs(parp["params"] - macs_40["params"]) < 0.01 * unpruned["params"]  # at macs_40's parameter count
    assert r["models"][5]["mode"] == "task_agnostic"
    for png in ("wer_vs_gmacs.png", "kept_per_layer.png", "latency.png"):
        assert open(os.path.join(quick, png), "rb").read(4) == b"\x89PNG"
    md = open(os.path.join(quick, "report.md")).read()
    assert "| unpruned | none |" in md and "| macs_40 | macs |" in md and "| macs_1 | macs |" in md
    assert "| parp | parp |" in md and "PARP (unstructured)" in md and "| distill_40 | task_agnostic |" in md
    assert "| latency_1 | latency |" in md and "| 1.43x |" in md and "predicted s" in md
    assert set(r["timings_s"]) >= {"synthesise", "latency_table", "pretrain", "finetune", "prune_macs_40", "final_macs_40",
                                   "prune_macs_1", "prune_latency_1", "sweep", "latency", "parp", "distill",
                                   "finetune_distill_40", "baselines"}
    assert "'target_sparsity': 0.2," in open(os.path.join(quick, "logs", "prune_macs_1.log")).read()


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
    assert all("min left (estimate)" in l for l in done if "final_macs_40" not in l and "latency" not in l)


def test_refuses_a_folder_with_results(quick, capsys):
    assert demo.main(["--quick", "--out", quick]) == 2
    assert "already holds results (pass --overwrite" in capsys.readouterr().err
    assert os.path.exists(os.path.join(quick, "report.json"))  # nothing lost
