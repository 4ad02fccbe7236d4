"""hjprune-synth: real eSpeak NG speech, deterministic, with out-of-domain voices and unseen sentences."""

import os

import pytest
import soundfile as sf
from fairseq.data import Dictionary

from hjprune_fairseq.plugin.tasks.hjprune_audio import check_split
from hjprune_manifests import synth
from hjprune_manifests.espeak import Espeak

SIZES = {"train": 30, "valid": 6, "test": 12}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    out = {task: str(d / task) for task in ("asr", "slu")}
    for task, path in out.items():
        synth.write_corpus(path, task, SIZES, seed=3)
    return out


def lines(path):
    return open(path).read().splitlines()


def test_every_voice_speaks():
    e = Espeak()
    for voice in synth.TRAIN_VOICES + synth.TEST_VOICES:
        wav = e.synthesize("hello there", voice, 160, 50)
        assert 0.2 * 16000 < len(wav) < 3 * 16000 and abs(wav).max() > 0.05, voice


@pytest.mark.parametrize("task", ["asr", "slu"])
def test_splits_pass_the_dataset_checks(corpora, task):
    data = corpora[task]
    ltr = Dictionary.load(os.path.join(data, "dict.ltr.txt"))
    for split, n in SIZES.items():
        check_split(data, split, "ltr", ltr, check_audio=True, sample_rate=16000, single=False)
        assert len(lines(os.path.join(data, f"{split}.tsv"))) == n + 1
    if task == "slu":
        intents = Dictionary.load(os.path.join(data, "dict.label.txt"))
        check_split(data, "test", "label", intents, check_audio=False, sample_rate=16000, single=True)
    info = sf.info(os.path.join(data, "wav", "train", "000000.wav"))
    assert info.samplerate == 16000 and info.channels == 1


@pytest.mark.parametrize("task", ["asr", "slu"])
def test_test_split_is_out_of_domain(corpora, task):
    data = corpora[task]
    meta = {s: [l.split("\t") for l in lines(os.path.join(data, f"{s}.meta.tsv"))[1:]] for s in ("train", "test")}
    train_voices, test_voices = {m[1] for m in meta["train"]}, {m[1] for m in meta["test"]}
    assert test_voices and not (train_voices & test_voices)
    assert not ({m[2] for m in meta["train"]} & {m[2] for m in meta["test"]})
    train_text = set(lines(os.path.join(data, "train.wrd")))
    test_text = lines(os.path.join(data, "test.wrd"))
    unseen = [t not in train_text for t in test_text]
    assert sum(unseen) >= len(test_text) / 3 and not all(unseen)  # both kinds, >= a third never heard
    assert [m[4] == "0" for m in meta["test"]] == unseen  # the meta file says which


def test_deterministic_by_seed(corpora, tmp_path):
    again = str(tmp_path / "again")
    synth.write_corpus(again, "asr", SIZES, seed=3)
    for f in ("train.tsv", "test.ltr", "test.meta.tsv", "dict.ltr.txt"):
        a, b = lines(os.path.join(corpora["asr"], f)), lines(os.path.join(again, f))
        assert a[1:] == b[1:] if f.endswith(".tsv") else a == b, f  # a manifest's first line is its folder
    wav = os.path.join("wav", "test", "000003.wav")
    assert open(os.path.join(corpora["asr"], wav), "rb").read() == open(os.path.join(again, wav), "rb").read()


def test_refusals(corpora, capsys, tmp_path):
    assert synth.main([corpora["asr"], "--train", "3", "--valid", "1", "--test", "3"]) == 2
    assert "already holds a corpus (pass --overwrite" in capsys.readouterr().err
    assert synth.main([str(tmp_path / "x"), "--unseen-fraction", "0.2"]) == 2
    assert "--unseen-fraction must be in [1/3, 1]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("task", ["asr", "slu"])
def test_demo_sizes_can_be_planned(task):
    """The grammars make enough distinct sentences for the demo's full corpus (plan only, no audio)."""
    from hjprune_fairseq.tools.demo.pipeline import FULL

    sizes = {"train": FULL.train, "valid": FULL.valid, "test": FULL.test}
    rows = synth.plan(task, sizes, seed=1, unseen_fraction=0.5)
    assert {s: len(r) for s, r in rows.items()} == sizes
    train = {r["text"] for r in rows["train"]}
    assert sum(r["text"] not in train for r in rows["test"]) == FULL.test // 2
