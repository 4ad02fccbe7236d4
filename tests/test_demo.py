"""hjprune-demo --quick: every stage runs and the report is written (budgets too small for accuracy)."""

import json
import os

import pytest

from hjprune_fairseq.cli import demo


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "asr")
    assert demo.main(["--quick", "--out", out]) == 0
    return out


def test_quick_demo_writes_the_report(quick):
    r = json.load(open(os.path.join(quick, "report.json")))
    names = [m["name"] for m in r["models"]]
    assert names == ["unpruned", "macs_40"]
    for m in r["models"]:
        assert 0 <= m["wer"] and m["latency_s"] > 0 and m["gmacs"] > 0
        assert set(m["layers"]) >= {"conv_channels", "heads", "ffn_units"}
    assert r["models"][1]["gmacs"] < r["models"][0]["gmacs"]  # the slim model is smaller, even in a quick run
    for png in ("wer_vs_gmacs.png", "kept_per_layer.png", "latency.png"):
        assert open(os.path.join(quick, png), "rb").read(4) == b"\x89PNG"
    md = open(os.path.join(quick, "report.md")).read()
    assert "| unpruned | none |" in md and "| macs_40 | macs |" in md
    assert set(r["timings_s"]) >= {"synthesise", "pretrain", "finetune", "prune_macs_40", "final_macs_40"}


def test_refuses_a_folder_with_results(quick, capsys):
    assert demo.main(["--quick", "--out", quick]) == 2
    assert "already holds results (pass --overwrite" in capsys.readouterr().err
    assert os.path.exists(os.path.join(quick, "report.json"))  # nothing lost
