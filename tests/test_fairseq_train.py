"""The models train under fairseq-hydra-train: gated from a pre-training checkpoint, then the exported
slim model from ``model.w2v_path=slim.pt`` (the final fine-tuning stage)."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from fairseq_fixtures import make_letter_corpus

import hjprune_fairseq
from hjprune_fairseq.cli import cost as cost_cli
from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.plugin.checkpoints import load_model

USER_DIR = os.path.dirname(hjprune_fairseq.__file__)


def train(tmp_path, name, model, data, save_dir, max_update=2):
    cfg = {
        "common": {"cpu": True, "log_format": "simple", "log_interval": 1, "seed": 1, "user_dir": USER_DIR},
        "checkpoint": {"save_dir": str(save_dir), "no_epoch_checkpoints": True},
        "task": {"_name": "hjprune_audio_finetuning", "data": str(data), "labels": "ltr", "normalize": False},
        "dataset": {"num_workers": 0, "max_tokens": 64000, "valid_subset": "valid", "required_batch_size_multiple": 1},
        "distributed_training": {"distributed_world_size": 1, "ddp_backend": "legacy_ddp"},
        "criterion": {"_name": "ctc", "zero_infinity": True, "post_process": "letter"},
        "optimization": {"max_update": max_update, "lr": [1e-4], "sentence_avg": True},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "fixed"},
        "model": model,
        "hydra": {"run": {"dir": "."}},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    r = subprocess.run([exe, "--config-dir", str(tmp_path), "--config-name", name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(save_dir / "checkpoint_last.pt")
    return save_dir / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_letter_corpus(str(tmp_path_factory.mktemp("corpus")), {"train": 8, "valid": 4})


def test_gated_then_slim_under_fairseq_hydra_train(tmp_path, corpus, w2v_pretrained, capsys):
    gated_ckpt = train(tmp_path, "gated", {
        "_name": "hjprune_wav2vec_ctc", "w2v_path": w2v_pretrained, "feature_grad_mult": 1.0,
        "apply_mask": True, "mask_prob": 0.2, "mask_length": 2, "gate_init_keep_prob": 0.6,
    }, corpus, tmp_path / "gated")
    # The trainer's checkpoint is self-contained: it loads with w2v_path gone.
    os.rename(w2v_pretrained, w2v_pretrained + ".away")
    try:
        gated, state = load_model(str(gated_ckpt))
    finally:
        os.rename(w2v_pretrained + ".away", w2v_pretrained)
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert state["cfg"]["model"]["encoder_spec"] is not None
    assert gated.gates is not None

    slim_path = tmp_path / "slim.pt"
    export_slim(str(gated_ckpt), str(slim_path))
    final_ckpt = train(tmp_path, "final", {
        "_name": "hjprune_slim_ctc", "w2v_path": str(slim_path), "feature_grad_mult": 1.0,
    }, corpus, tmp_path / "final")
    final, _ = load_model(str(final_ckpt))
    exported, _ = load_model(str(slim_path))
    assert final.spec == exported.spec and final.reference_spec == gated.spec
    assert any(not torch.equal(a, b) for a, b in zip(final.parameters(), exported.parameters()))  # it trained

    assert cost_cli.main([str(gated_ckpt), "--json"]) == 0
    g = yaml.safe_load(capsys.readouterr().out)
    assert cost_cli.main([str(final_ckpt), "--json"]) == 0
    f = yaml.safe_load(capsys.readouterr().out)
    assert f["params"] == sum(p.numel() for p in final.parameters()) == g["params"]
    assert f["macs_sparsity"] == pytest.approx(g["macs_sparsity"], abs=1e-9)
