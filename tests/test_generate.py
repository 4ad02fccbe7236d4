"""fairseq-generate decodes hjprune and stock CTC checkpoints; its WER matches an independent count."""

import os
import re
import subprocess
import sys

import editdistance
import pytest
import torch
from fairseq_fixtures import USER_DIR, make_letter_corpus, save_like_trainer
from helpers import gated_model, randomize_gates

from hjprune_fairseq.convert.slim_export import export_slim


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_letter_corpus(str(tmp_path_factory.mktemp("gen")), {"test": 6})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data, w2v_pretrained, stock_ctc):
    d = tmp_path_factory.mktemp("gen_ckpt")
    torch.manual_seed(0)
    m = gated_model(w2v_pretrained)
    randomize_gates(m, mean=3.0, std=2.0)
    gated = save_like_trainer(m, d / "gated.pt", data)
    export_slim(gated, str(d / "slim.pt"))
    return {"gated": gated, "slim": str(d / "slim.pt"), "stock": stock_ctc[0]}


def generate(data, path, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    return subprocess.run([exe, data, "--user-dir", USER_DIR, "--task", "hjprune_audio_finetuning", "--path", path,
                           "--gen-subset", "test", "--post-process", "letter", "--scoring", "wer",
                           "--max-tokens", "1000000", *extra], capture_output=True, text=True, timeout=300)


def independent_wer(stdout, expected=6):
    refs = dict(re.findall(r"^T-(\d+)\t(.*)$", stdout, re.M))
    hyps = {i: h for i, _, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", stdout, re.M)}
    assert refs.keys() == hyps.keys() and len(refs) == expected
    errors = sum(editdistance.eval(refs[i].split(), hyps[i].split()) for i in refs)
    return 100.0 * errors / sum(len(r.split()) for r in refs.values()), refs, hyps


@pytest.mark.parametrize("kind", ["gated", "slim", "stock"])
def test_generate_prints_lines_and_matching_wer(kind, data, checkpoints):
    r = generate(data, checkpoints[kind])
    assert r.returncode == 0, r.stderr[-3000:]
    printed = re.search(r"^Generate test with beam=\d+: WER: ([0-9.]+)$", r.stdout, re.M)
    assert printed, r.stdout[-2000:]
    wer, refs, hyps = independent_wer(r.stdout)
    assert float(printed.group(1)) == pytest.approx(wer, abs=0.005)
    assert all(re.fullmatch(r"[A-Z' ]+", ref) for ref in refs.values())  # letters joined into words
    assert re.search(r"^H-\d+\t\S+\t", r.stdout, re.M)


def test_gated_and_slim_decode_identically(data, checkpoints):
    g, s = generate(data, checkpoints["gated"]), generate(data, checkpoints["slim"])
    assert g.returncode == s.returncode == 0
    assert independent_wer(g.stdout)[2] == independent_wer(s.stdout)[2]
