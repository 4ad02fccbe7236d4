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

from hjprune_fairseq.tasks.hjprune_audio import check_split
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
