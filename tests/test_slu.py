"""Intent classification: prune under fairseq-hydra-train, export, cost, fairseq-generate accuracy."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from fairseq_fixtures import EXAMPLES, INTENTS, USER_DIR, hydra_train, make_intent_corpus

from hjprune_fairseq.cli import cost as cost_cli
from hjprune_fairseq.convert.slim_export import export_masks, export_slim
from hjprune_fairseq.plugin.checkpoints import load_model


@pytest.fixture(scope="module")
def slu(tmp_path_factory, w2v_pretrained):
    d = tmp_path_factory.mktemp("slu")
    data = make_intent_corpus(str(d / "data"), {"train": 8, "valid": 4, "test": 5})
    r = hydra_train(os.path.join(EXAMPLES, "tiny_slu"), "prune", [
        f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={w2v_pretrained}",
        f"checkpoint.save_dir={d / 'ck'}", "optimization.max_update=4", "dataset.max_tokens=64000",
        "common.log_interval=1", "criterion.sparsity_warmup_updates=2", "mode=sep_size"], cwd=str(d))
    assert r.returncode == 0, r.stderr[-3000:]
    gated = str(d / "ck" / "checkpoint_last.pt")
    export_slim(gated, str(d / "slim.pt"))
    return {"data": data, "gated": gated, "slim": str(d / "slim.pt"), "log": r.stdout + r.stderr}


def test_training_logs_accuracy_and_sparsity(slu):
    valid = [l for l in slu["log"].splitlines() if "valid on 'valid' subset" in l]
    assert valid and "accuracy" in valid[-1]
    assert re.search(r"sparsity_cnn=", slu["log"]) and re.search(r"lambda1_transformer=", slu["log"])


def test_classifier_checkpoints_export_and_cost(slu, capsys):
    gated, state = load_model(slu["gated"])
    slim, _ = load_model(slu["slim"])
    masks = export_masks(state, gated, slu["gated"])[0]  # the run's budget, as hjprune-export meets it
    gated.gate_masks = lambda: masks
    assert type(slim).__name__ == "HJPruneSlimCls" and slim.proj.out_features == len(INTENTS) + 4
    source = torch.randn(2, 12000)
    with torch.no_grad():
        assert torch.allclose(gated(source=source)["encoder_out"], slim(source=source)["encoder_out"], atol=1e-4)
    assert cost_cli.main([slu["slim"], "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == sum(p.numel() for p in slim.parameters())
    assert r["gmacs_by_component"]["head"] * 1e9 == slim.proj.in_features * slim.proj.out_features  # once per utterance


@pytest.mark.parametrize("kind", ["gated", "slim"])
def test_generate_prints_intents_and_accuracy(slu, kind):
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    r = subprocess.run([exe, slu["data"], "--user-dir", USER_DIR, "--task", "hjprune_audio_classification",
                        "--path", slu[kind], "--gen-subset", "test", "--scoring", "hjprune_accuracy",
                        "--max-tokens", "1000000"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    refs = dict(re.findall(r"^T-(\d+)\t(\S+)$", r.stdout, re.M))
    hyps = {i: h for i, _, h in re.findall(r"^H-(\d+)\t(\S+)\t(\S+)$", r.stdout, re.M)}
    assert len(refs) == len(hyps) == 5 and set(hyps.values()) <= set(INTENTS)
    correct = sum(refs[i] == hyps[i] for i in refs)
    printed = re.search(r"^Generate test with beam=\d+: Accuracy: ([0-9.]+) \((\d+)/(\d+)\)$", r.stdout, re.M)
    assert printed and float(printed.group(1)) == pytest.approx(100.0 * correct / 5, abs=0.005)
    assert (int(printed.group(2)), int(printed.group(3))) == (correct, 5)


def test_unknown_intent_is_reported_before_decoding(tmp_path):
    from fairseq import tasks
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.tasks.hjprune_audio import HJPruneAudioClassificationConfig

    data = make_intent_corpus(str(tmp_path / "d"), {"test": 3})
    lines = open(os.path.join(data, "test.label")).read().splitlines()
    lines[2] = "book_flight"
    open(os.path.join(data, "test.label"), "w").write("\n".join(lines) + "\n")
    cfg = OmegaConf.structured(HJPruneAudioClassificationConfig(data=data, normalize=False, tpu=False, seed=1))
    cfg._name = "hjprune_audio_classification"
    task = tasks.setup_task(cfg)
    with pytest.raises(ValueError, match=r"test\.label:3: intent \['book_flight'\] not in the dictionary"):
        task.load_dataset("test")
