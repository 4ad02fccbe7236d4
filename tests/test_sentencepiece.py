"""hjprune-spm: sentencepiece labels that fairseq-generate turns back into words."""

import os
import re
import subprocess
import sys

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.data.data_utils import post_process
from fairseq_fixtures import USER_DIR, make_letter_corpus

from hjprune_fairseq.plugin.tasks.hjprune_audio import check_split
from hjprune_manifests import sentencepiece_labels as spm_labels


@pytest.fixture
def data(tmp_path):
    return make_letter_corpus(str(tmp_path / "d"), {"train": 12, "test": 4})


def test_labels_round_trip_to_words(data):
    assert spm_labels.main([data, "--splits", "train", "test", "--vocab-size", "30"]) == 0
    words = spm_labels.read_words(data, "test")
    pieces = open(os.path.join(data, "test.spm")).read().splitlines()
    assert len(pieces) == 4 and all("\u2581" in p for p in pieces)
    assert [post_process(p, "sentencepiece") for p in pieces] == words
    d = Dictionary.load(os.path.join(data, "dict.spm.txt"))
    check_split(data, "test", "spm", d, check_audio=True, sample_rate=16000, single=False)  # all symbols known


def test_missing_split_and_empty_transcript(data, capsys):
    assert spm_labels.main([data, "--splits", "train", "nope"]) == 2
    assert "nope.wrd: not found" in capsys.readouterr().err
    lines = open(os.path.join(data, "train.ltr")).read().splitlines()
    lines[3] = "|"
    open(os.path.join(data, "train.ltr"), "w").write("\n".join(lines) + "\n")
    assert spm_labels.main([data, "--splits", "train"]) == 2
    assert "train.ltr:4: empty transcript" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(data, "train.spm"))


def test_fairseq_generate_post_process_sentencepiece(data, w2v_pretrained, tmp_path):
    from helpers import gated_model
    from fairseq_fixtures import save_like_trainer
    from test_generate import independent_wer

    assert spm_labels.main([data, "--splits", "train", "test", "--vocab-size", "30"]) == 0
    vocab = len(Dictionary.load(os.path.join(data, "dict.spm.txt")))
    model = gated_model(w2v_pretrained)
    model.proj = torch.nn.Linear(model.proj.in_features, vocab)
    ckpt = save_like_trainer(model, tmp_path / "spm.pt", data, labels="spm")
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    r = subprocess.run([exe, data, "--user-dir", USER_DIR, "--task", "hjprune_audio_finetuning", "--labels", "spm",
                        "--path", ckpt, "--gen-subset", "test", "--post-process", "sentencepiece", "--scoring", "wer",
                        "--max-tokens", "1000000"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    refs = dict(re.findall(r"^T-(\d+)\t(.*)$", r.stdout, re.M))
    assert sorted(refs.values()) == sorted(spm_labels.read_words(data, "test"))  # words, not pieces
    printed = float(re.search(r"WER: ([0-9.]+)", r.stdout).group(1))
    assert printed == pytest.approx(independent_wer(r.stdout, expected=4)[0], abs=0.005)


# ---- what it refuses: every file it would write is checked before any is written -----------------
def contents(data):
    return {name: open(os.path.join(data, name), "rb").read() for name in sorted(os.listdir(data))}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_refuses_to_write_over_the_letter_labels_it_reads(data, capsys, overwrite):
    """--ext ltr on a folder with letter labels and no .wrd: the labels are its input, kept even with --overwrite."""
    before = contents(data)
    assert spm_labels.main([data, "--splits", "train", "test", "--ext", "ltr", "--vocab-size", "30", *overwrite]) == 2
    assert capsys.readouterr().err == (
        f"hjprune-spm: error: {os.path.join(data, 'train.ltr')}: output would overwrite an input of this run "
        "(the transcripts of split 'train', read for its words; choose another --ext)\n")
    assert contents(data) == before  # train.ltr, test.ltr, dict.ltr.txt untouched, no spm_ltr.model


def test_refuses_to_write_over_the_word_transcripts_it_reads(data, capsys):
    open(os.path.join(data, "train.wrd"), "w").write("\n".join(spm_labels.read_words(data, "train")) + "\n")
    before = contents(data)
    assert spm_labels.main([data, "--splits", "train", "--ext", "wrd", "--overwrite"]) == 2
    assert "train.wrd: output would overwrite an input of this run (the transcripts of split 'train'" in capsys.readouterr().err
    assert contents(data) == before


def test_refuses_existing_labels_and_model_without_overwrite(data, capsys):
    """A user's own test.spm and spm_spm.model are named in the refusal and kept; nothing else is written."""
    mine = {"test.spm": b"my pieces\n", "spm_spm.model": b"my model"}
    for name, text in mine.items():
        open(os.path.join(data, name), "wb").write(text)
    before = contents(data)
    assert spm_labels.main([data, "--splits", "train", "test", "--vocab-size", "30"]) == 2
    assert capsys.readouterr().err == (
        f"hjprune-spm: error: {os.path.join(data, 'test.spm')}, {os.path.join(data, 'spm_spm.model')}: "
        "already exist (pass --overwrite to replace them)\n")
    assert contents(data) == before
    os.chmod(os.path.join(data, "test.spm"), 0o640)
    assert spm_labels.main([data, "--splits", "train", "test", "--vocab-size", "30", "--overwrite"]) == 0
    assert open(os.path.join(data, "test.spm"), "rb").read() != mine["test.spm"]
    assert os.stat(os.path.join(data, "test.spm")).st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    assert os.path.exists(os.path.join(data, "spm_spm.vocab")) and os.path.exists(os.path.join(data, "dict.spm.txt"))


def test_refuses_the_manifests_extension(data, capsys):
    before = contents(data)
    assert spm_labels.main([data, "--splits", "train", "--ext", "tsv", "--overwrite"]) == 2
    assert capsys.readouterr().err == ("hjprune-spm: error: --ext 'tsv': {split}.tsv are the manifests; "
                                       "choose another label extension\n")
    assert contents(data) == before
