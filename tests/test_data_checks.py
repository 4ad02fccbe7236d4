"""Bad datasets fail with one line naming the manifest/label file and line, before decoding starts."""

import os

import numpy as np
import pytest
import soundfile as sf
from fairseq_fixtures import USER_DIR, make_letter_corpus

from hjprune_fairseq import data_checks


@pytest.fixture
def data(tmp_path):
    make_letter_corpus(str(tmp_path / "d"), {"test": 4})
    return tmp_path / "d"


def load(data):
    from fairseq import tasks
    from omegaconf import OmegaConf

    from hjprune_fairseq.tasks.hjprune_audio import HJPruneAudioFinetuningConfig

    cfg = OmegaConf.structured(HJPruneAudioFinetuningConfig(data=str(data), normalize=False, tpu=False, seed=1))
    cfg._name = "hjprune_audio_finetuning"
    task = tasks.setup_task(cfg)
    task.load_dataset("test")
    return task


def test_good_data_loads(data):
    assert len(load(data).dataset("test")) == 4


def test_missing_audio(data):
    os.remove(data / "test_2.wav")
    with pytest.raises(FileNotFoundError, match=r"test\.tsv:4: audio file .*test_2\.wav not found"):
        load(data)


def test_unreadable_audio(data):
    (data / "test_1.wav").write_bytes(b"this is not audio")
    with pytest.raises(ValueError, match=r"test\.tsv:3: audio file .*test_1\.wav is not readable audio"):
        load(data)


def test_stereo_and_wrong_rate(data):
    sf.write(data / "test_0.wav", np.zeros((9000, 2), dtype="float32"), 16000)
    with pytest.raises(ValueError, match=r"test\.tsv:2: .*test_0\.wav has 2 channels \(expected mono\)"):
        load(data)
    sf.write(data / "test_0.wav", np.zeros(9000, dtype="float32"), 8000)
    with pytest.raises(ValueError, match=r"sampled at 8000 Hz \(expected 16000\)"):
        load(data)


def test_label_count_mismatch(data):
    lines = (data / "test.ltr").read_text().splitlines()
    (data / "test.ltr").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ValueError, match=r"test\.ltr: 3 lines but .*test\.tsv has 4 rows"):
        load(data)


def test_symbol_not_in_dictionary(data):
    lines = (data / "test.ltr").read_text().splitlines()
    lines[1] = "H E L L O | W 0 R L D |"
    (data / "test.ltr").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test\.ltr:2: symbols \['0'\] not in the dictionary"):
        load(data)


def test_bad_manifest_row(data):
    lines = (data / "test.tsv").read_text().splitlines()
    lines[2] = "test_1.wav 9000"
    (data / "test.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test\.tsv:3: expected 'relative/path<TAB>num_samples'"):
        load(data)


def test_intent_labels_are_single_symbols(tmp_path):
    p = tmp_path / "x.label"
    p.write_text("alarm_set\nweather query\n")
    with pytest.raises(ValueError, match=r"x\.label:2: expected one intent label"):
        data_checks.read_labels(str(p), 2, "x.tsv", {"alarm_set", "weather_query"}, single=True)
    p.write_text("alarm_set\nmusic_play\n")
    with pytest.raises(ValueError, match=r"x\.label:2: intent \['music_play'\] not in the dictionary"):
        data_checks.read_labels(str(p), 2, "x.tsv", {"alarm_set"}, single=True)


def test_fairseq_generate_reports_the_bad_row(data, stock_ctc):
    import subprocess
    import sys

    os.remove(data / "test_3.wav")
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    r = subprocess.run([exe, str(data), "--user-dir", USER_DIR, "--task", "hjprune_audio_finetuning", "--path",
                        stock_ctc[0], "--gen-subset", "test", "--max-tokens", "1000000"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "test.tsv:5: audio file" in r.stderr and "not found" in r.stderr
    assert "T-" not in r.stdout  # nothing was decoded
