"""hjprune-manifest / hjprune-labels / hjprune-validate on a LibriSpeech-style layout."""

import os

import numpy as np
import pytest
import soundfile as sf
from fairseq.data import Dictionary

from hjprune_fairseq.plugin.tasks.hjprune_audio import check_split
from hjprune_manifests import tools

TEXTS = {"0": "HELLO WORLD", "1": "IT'S A FINE DAY", "2": "GOOD MORNING", "3": "SEE YOU SOON", "4": "THE END"}


@pytest.fixture
def libri(tmp_path):
    """root/train-clean-100/{spk}/{chap}/{spk}-{chap}-{utt}.flac + {spk}-{chap}.trans.txt"""
    root = tmp_path / "LibriSpeech"
    for spk, chap in (("19", "198"), ("26", "495")):
        d = root / "train-clean-100" / spk / chap
        d.mkdir(parents=True)
        lines = []
        for utt, text in TEXTS.items():
            uid = f"{spk}-{chap}-{int(utt):04d}"
            sf.write(d / f"{uid}.flac", np.random.default_rng(int(utt)).standard_normal(8000 + 100 * int(utt)) * 0.1, 16000)
            lines.append(f"{uid} {text}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_round_trip(libri, tmp_path, capsys):
    dest = tmp_path / "manifest"
    assert tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--valid-percent", "0.3", "--seed", "1"]) == 0
    train, valid = (open(dest / f"{s}.tsv").read().splitlines() for s in ("train", "valid"))
    assert train[0] == valid[0] == str(libri) and len(train) + len(valid) - 2 == 10 and len(valid) > 1
    assert tools.labels_main([str(dest), "--splits", "train", "valid"]) == 0
    rel, _ = train[1].split("\t")
    uid = os.path.basename(rel)[:-5]
    assert open(dest / "train.wrd").read().splitlines()[0] == TEXTS[str(int(uid.split("-")[2]))]
    assert "I T ' S | A |" in open(dest / "train.ltr").read() or "I T ' S | A |" in open(dest / "valid.ltr").read()
    d = Dictionary.load(str(dest / "dict.ltr.txt"))
    for split in ("train", "valid"):
        check_split(str(dest), split, "ltr", d, check_audio=True, sample_rate=16000, single=False)
    assert tools.validate_main([str(dest)]) == 0
    again = tmp_path / "again"
    tools.manifest_main([str(libri), str(again), "--ext", "flac", "--valid-percent", "0.3", "--seed", "1"])
    assert open(again / "valid.tsv").read() == open(dest / "valid.tsv").read()  # seeded split


def test_bad_audio_is_listed_and_skipped(libri, tmp_path, capsys):
    d = libri / "train-clean-100" / "19" / "198"
    (d / "19-198-0099.flac").write_text("not audio at all")
    sf.write(d / "19-198-0098.flac", np.zeros((8000, 2)), 16000)
    sf.write(d / "19-198-0097.flac", np.zeros(4000), 8000)
    dest = tmp_path / "m"
    assert tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--valid-percent", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    skipped = [l for l in err if l.startswith("skipped: ")]
    assert len(skipped) == 3
    assert any("0099.flac is not readable audio" in l for l in skipped)
    assert any("0098.flac has 2 channels (expected mono)" in l for l in skipped)
    assert any("0097.flac is sampled at 8000 Hz (expected 16000)" in l for l in skipped)
    assert len(open(dest / "train.tsv").read().splitlines()) == 11
    assert tools.manifest_main([str(libri), str(dest)]) == 2  # refuses to overwrite
    assert capsys.readouterr().err == (f"error: {dest / 'train.tsv'}, {dest / 'valid.tsv'}: already exist "
                                       "(pass --overwrite to replace them)\n")


def test_bad_transcripts(libri, tmp_path, capsys):
    dest = tmp_path / "m"
    tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--valid-percent", "0"])
    trans = libri / "train-clean-100" / "26" / "495" / "26-495.trans.txt"
    good = trans.read_text()
    trans.write_text(good.replace("GOOD MORNING", ""))
    assert tools.labels_main([str(dest), "--splits", "train"]) == 2
    assert f"{trans}:3: empty transcript for 26-495-0002" in capsys.readouterr().err
    assert not (dest / "train.ltr").exists()  # nothing half-written
    trans.write_text(good.replace("THE END", "THE 3ND"))
    assert tools.labels_main([str(dest), "--splits", "train"]) == 2
    assert f"{trans}:5: characters ['3'] outside the dictionary" in capsys.readouterr().err
    trans.write_text("\n".join(good.splitlines()[:4]) + "\n")
    assert tools.labels_main([str(dest), "--splits", "train"]) == 2
    assert "no transcript for 26-495-0004" in capsys.readouterr().err


def test_validate_lists_every_problem(libri, tmp_path, capsys):
    dest = tmp_path / "m"
    tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--valid-percent", "0"])
    tools.labels_main([str(dest), "--splits", "train"])
    rel = open(dest / "train.tsv").read().splitlines()[2].split("\t")[0]
    os.remove(libri / rel)
    lines = open(dest / "train.ltr").read().splitlines()
    lines[4] = "H E L L 0 |"
    (dest / "train.ltr").write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    assert tools.validate_main([str(dest), "--splits", "train"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert any(l.startswith(f"{dest / 'train.tsv'}:3: audio file") and l.endswith("not found") for l in out)
    assert any("train.ltr: 9 lines but" in l for l in out)
    assert any("train.ltr:5: symbols ['0'] not in the dictionary" in l for l in out)


# ---- what they refuse: every file a run would write is checked before any is written ---------------
def test_manifest_refuses_a_users_valid_tsv(libri, tmp_path, capsys):
    """Only valid.tsv exists (the user's own): refused, kept, and no train.tsv written beside it."""
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "valid.tsv").write_text("my own split\n")
    assert tools.manifest_main([str(libri), str(dest), "--ext", "flac"]) == 2
    assert capsys.readouterr().err == f"error: {dest / 'valid.tsv'}: already exists (pass --overwrite to replace it)\n"
    assert os.listdir(dest) == ["valid.tsv"] and (dest / "valid.tsv").read_text() == "my own split\n"
    os.chmod(dest / "valid.tsv", 0o640)
    assert tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--overwrite"]) == 0
    assert (dest / "valid.tsv").read_text().startswith(str(libri))
    assert os.stat(dest / "valid.tsv").st_mode & 0o777 == 0o640  # a replaced file keeps its mode


def test_manifest_never_writes_over_a_file_it_indexes(libri, capsys):
    """DEST inside ROOT with --ext tsv: the user's train.tsv there is an input, kept even with --overwrite."""
    dest = libri / "train-clean-100"
    (dest / "train.tsv").write_text("mine\n")
    assert tools.manifest_main([str(libri), str(dest), "--ext", "flac", "tsv", "--overwrite"]) == 2
    assert capsys.readouterr().err == (f"error: {dest / 'train.tsv'}: output would overwrite an input of this run "
                                       f"(a file under {libri} matched by --ext)\n")
    assert (dest / "train.tsv").read_text() == "mine\n" and not (dest / "valid.tsv").exists()


def test_labels_refuse_existing_labels_without_overwrite(libri, tmp_path, capsys):
    """A user's own valid.ltr and dict.ltr.txt: both named, both kept, no .wrd written; --overwrite replaces them."""
    dest = tmp_path / "m"
    tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--valid-percent", "0.3", "--seed", "1"])
    (dest / "valid.ltr").write_text("M Y |\n")
    (dest / "dict.ltr.txt").write_text("M 1\nY 1\n")
    before = sorted(os.listdir(dest))
    assert tools.labels_main([str(dest)]) == 2
    assert capsys.readouterr().err == (f"error: {dest / 'valid.ltr'}, {dest / 'dict.ltr.txt'}: already exist "
                                       "(pass --overwrite to replace them)\n")
    assert sorted(os.listdir(dest)) == before
    assert (dest / "valid.ltr").read_text() == "M Y |\n" and (dest / "dict.ltr.txt").read_text() == "M 1\nY 1\n"
    assert tools.labels_main([str(dest), "--overwrite"]) == 0
    assert (dest / "valid.ltr").read_text() != "M Y |\n" and (dest / "train.wrd").exists()


def test_labels_never_write_over_their_dictionary(libri, tmp_path, capsys):
    """--dict naming one of the outputs (a label file): an input, kept even with --overwrite."""
    dest = tmp_path / "m"
    tools.manifest_main([str(libri), str(dest), "--ext", "flac", "--valid-percent", "0"])
    (dest / "train.ltr").write_text("my letters\n")
    assert tools.labels_main([str(dest), "--splits", "train", "--dict", str(dest / "train.ltr"), "--overwrite"]) == 2
    assert capsys.readouterr().err == (f"error: {dest / 'train.ltr'}: output would overwrite an input of this run "
                                       "(the dictionary given by --dict)\n")
    assert (dest / "train.ltr").read_text() == "my letters\n" and not (dest / "train.wrd").exists()
