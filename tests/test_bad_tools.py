"""The tools on bad input: one line naming the file, never a silent wrong result (the review's tool cases)."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from fairseq_fixtures import EXAMPLES, USER_DIR, hydra_train, letter_dictionary, make_letter_corpus, save_like_trainer
from omegaconf import OmegaConf

from hjprune_fairseq.cli import cost, export
from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.plugin.models.base import HJPruneGatedCtcConfig
from hjprune_fairseq.plugin.models.ctc import HJPruneGatedCtc

NO_GATES = dict(prune_conv=False, prune_heads=False, prune_ffn=False, prune_hidden=False)


def build_task(data):
    from fairseq import tasks

    from hjprune_fairseq.plugin.tasks.hjprune_audio import HJPruneAudioFinetuningConfig

    cfg = OmegaConf.structured(HJPruneAudioFinetuningConfig(data=str(data), normalize=False, tpu=False, seed=1))
    cfg._name = "hjprune_audio_finetuning"
    return tasks.setup_task(cfg)


def model_cfg(w2v_path, **gates):
    cfg = OmegaConf.structured(HJPruneGatedCtcConfig(w2v_path=str(w2v_path), normalize=False, feature_grad_mult=1.0,
                                                     **gates))
    cfg._name = "hjprune_wav2vec_ctc"
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_letter_corpus(str(tmp_path_factory.mktemp("tools")), {"test": 3})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, w2v_pretrained):
    """A gated checkpoint built through the task, as fairseq-hydra-train builds it (dictionary recorded)."""
    torch.manual_seed(0)
    model = build_task(data).build_model(model_cfg(w2v_pretrained))
    return save_like_trainer(model, tmp_path_factory.mktemp("tools_ck") / "gated.pt", data)


def generate(data, path):
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    return subprocess.run([exe, str(data), "--user-dir", USER_DIR, "--task", "hjprune_audio_finetuning", "--path",
                           str(path), "--gen-subset", "test", "--post-process", "letter", "--scoring", "wer",
                           "--max-tokens", "1000000"], capture_output=True, text=True, timeout=300)


def test_checkpoints_record_their_dictionary(trained, data):
    saved = torch.load(trained, weights_only=False)["cfg"]["model"]["target_dictionary"]
    assert saved["path"] == os.path.join(data, "dict.ltr.txt")
    assert saved["symbols"] == letter_dictionary().symbols


@pytest.mark.parametrize("change, difference", [
    (lambda lines: [lines[1], lines[0]] + lines[2:], "symbol 4 is 'T' here but 'E' in training"),
    (lambda lines: lines[:-2], "30 symbols here but 32 in training"),
])
def test_generate_refuses_another_dictionary(trained, data, tmp_path, change, difference):
    other = tmp_path / "other"
    other.mkdir()
    for name in os.listdir(data):
        os.symlink(os.path.join(data, name), other / name)
    os.remove(other / "dict.ltr.txt")
    lines = open(os.path.join(data, "dict.ltr.txt")).read().splitlines()
    (other / "dict.ltr.txt").write_text("\n".join(change(lines)) + "\n")
    if len(change(lines)) < len(lines):  # the labels must not use the removed letters
        (other / "test.ltr").unlink()
        (other / "test.ltr").write_text("E T |\n" * 3)
    r = generate(other, trained)
    assert r.returncode != 0
    assert (f"{other / 'dict.ltr.txt'}: the data dictionary differs from the one the model was trained with "
            f"({os.path.join(data, 'dict.ltr.txt')}): {difference}") in r.stderr, r.stderr[-2000:]
    assert "T-" not in r.stdout  # nothing decoded


def test_generate_with_the_same_dictionary_decodes(trained, data):
    r = generate(data, trained)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "records no target dictionary" not in r.stderr


def test_a_later_stage_refuses_another_dictionary(trained, w2v_pretrained, tmp_path):
    """A fine-tuning stage from a checkpoint whose output layer indexes another dictionary."""
    other = make_letter_corpus(str(tmp_path / "d"), {"test": 1})
    lines = open(os.path.join(other, "dict.ltr.txt")).read().splitlines()
    open(os.path.join(other, "dict.ltr.txt"), "w").write("\n".join([lines[2]] + lines[:2] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"the data dictionary differs from the one the model was trained with "
                                         r"\(.*dict\.ltr\.txt, recorded in .*gated\.pt\): symbol 4 is 'A' here"):
        build_task(other).build_model(model_cfg(trained))


def test_stock_checkpoint_without_a_record_warns(stock_ctc, data, caplog):
    with caplog.at_level(logging.WARNING):
        build_task(data).build_model(model_cfg(stock_ctc[0]))
    assert "stock_ctc.pt records no target dictionary" in caplog.text


def test_truncated_checkpoint_is_named(trained, data, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(trained, "rb").read()[:5000])
    r = generate(data, cut)
    assert r.returncode != 0
    assert f"{cut}: not a readable fairseq checkpoint (" in r.stderr


def test_resume_from_a_truncated_checkpoint_is_one_line(tmp_path, w2v_pretrained):
    data = make_letter_corpus(str(tmp_path / "d"), {"train": 2, "valid": 1})
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint_last.pt").write_bytes(open(w2v_pretrained, "rb").read()[:3000])
    r = hydra_train(os.path.join(EXAMPLES, "tiny"), "finetune", [
        f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={w2v_pretrained}",
        f"checkpoint.save_dir={tmp_path / 'ck'}"], cwd=str(tmp_path))
    assert r.returncode != 0
    errors = [l for l in r.stderr.splitlines() if l.startswith("hjprune: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"hjprune: error: {tmp_path / 'ck' / 'checkpoint_last.pt'}: not a readable fairseq checkpoint ("), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_cost_of_a_file_that_is_no_checkpoint(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    assert cost.main([str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hjprune-cost: error: {notes}: not a readable fairseq checkpoint (")
    assert len(err.strip().splitlines()) == 1


def test_export_refuses_a_checkpoint_without_gates(tmp_path, w2v_pretrained, capsys):
    torch.manual_seed(0)
    dense = HJPruneGatedCtc.from_config(model_cfg(w2v_pretrained, **NO_GATES), len(letter_dictionary()))
    path = save_like_trainer(dense, tmp_path / "finetuned.pt")
    assert export.main([path, str(tmp_path / "slim.pt")]) == 2
    err = capsys.readouterr().err
    assert err == (f"hjprune-export: error: {path}: has no gates (every model.prune_* is false, e.g. a fine-tuned "
                   "model), so nothing would be removed; export the checkpoint of a prune stage "
                   "(checkpoint_last.pt), or pass --allow-no-gates for a dense copy\n")
    assert not (tmp_path / "slim.pt").exists()
    export_slim(path, str(tmp_path / "slim.pt"), allow_no_gates=True)
    assert (tmp_path / "slim.pt").exists()


def test_generate_stops_at_a_row_with_no_frame(trained, data, tmp_path):
    """Decoding checks what CTC cannot learn too (with the model's own CNN), before decoding anything."""
    import numpy as np
    import soundfile as sf

    other = tmp_path / "short"
    other.mkdir()
    for name in os.listdir(data):
        os.symlink(os.path.join(data, name), other / name)
    (other / "test.tsv").unlink()
    sf.write(other / "empty.wav", np.zeros(0, dtype="float32"), 16000)
    lines = open(os.path.join(data, "test.tsv")).read().splitlines()
    lines[0], lines[2] = str(other), "empty.wav\t0"
    (other / "test.tsv").write_text("\n".join(lines) + "\n")
    r = generate(other, trained)
    assert r.returncode != 0
    assert (f"{other / 'test.tsv'}:3: audio of 0 samples gives no frame (the CNN needs at least 100 samples)"
            in r.stderr), r.stderr[-2000:]
    assert "T-" not in r.stdout
