"""Bad datasets fail with one line naming the manifest/label file and line, before decoding starts."""

import os

import numpy as np
import pytest
import soundfile as sf
from fairseq_fixtures import USER_DIR, make_letter_corpus

from hjprune_manifests import data_checks


@pytest.fixture
def data(tmp_path):
    make_letter_corpus(str(tmp_path / "d"), {"test": 4})
    return tmp_path / "d"


def load(data):
    from fairseq import tasks
    from omegaconf import OmegaConf

    from hjprune_fairseq.plugin.tasks.hjprune_audio import HJPruneAudioFinetuningConfig

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


# ---- what CTC cannot learn, and the traceback cases of a review (one line naming file and line) ----------

def test_manifest_with_bom(data):
    (data / "test.tsv").write_text("\ufeff" + (data / "test.tsv").read_text(), encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.tsv:1: starts with a UTF-8 byte-order mark"):
        load(data)


def test_manifest_without_root_line(data):
    lines = (data / "test.tsv").read_text().splitlines()
    (data / "test.tsv").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"test\.tsv:1: expected the root folder on the first line, got the row "
                                         r"'test_0\.wav\\t\d+'"):
        load(data)


def test_empty_split(data):
    (data / "test.tsv").write_text((data / "test.tsv").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"test\.tsv: no utterances \(expected 'relative/path<TAB>num_samples' rows"):
        load(data)


@pytest.mark.parametrize("line, message", [
    ("E", r"dict\.ltr\.txt:3: expected 'symbol count', got 'E'"),
    ("T 5", r"dict\.ltr\.txt:3: symbol 'T' already on line 2 \(expected each symbol once\)"),
])
def test_bad_dictionary_line(data, line, message):
    lines = (data / "dict.ltr.txt").read_text().splitlines()
    lines[2] = line
    (data / "dict.ltr.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        load(data).target_dictionary


def set_audio(data, row: int, samples: np.ndarray, subtype: str = "PCM_16") -> None:
    """Replace the audio of manifest row ``row`` (0-based) and its sample count."""
    sf.write(data / f"test_{row}.wav", samples, 16000, subtype=subtype)
    lines = (data / "test.tsv").read_text().splitlines()
    lines[row + 1] = f"test_{row}.wav\t{len(samples)}"
    (data / "test.tsv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("samples", [0, 399])
def test_audio_with_no_frame(data, samples):
    set_audio(data, 1, np.zeros(samples, dtype="float32"))
    with pytest.raises(ValueError, match=rf"test\.tsv:3: audio of {samples} samples gives no frame \(the CNN needs "
                                         r"at least 400 samples\)"):
        load(data)


def test_transcript_longer_than_its_frames(data):
    set_audio(data, 2, 0.1 * np.ones(3200, dtype="float32"))  # 9 frames of wav2vec2-base
    lines = (data / "test.ltr").read_text().splitlines()
    lines[2] = "T O O | S H O R T |"  # 10 symbols, and OO needs a blank between: 11 frames
    (data / "test.ltr").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test\.tsv:4: the transcript needs 11 CTC frames \(10 symbols\) but its "
                                         r"audio \(3200 samples\) gives 9 \(.*test\.ltr:3\)"):
        load(data)


def test_frames_are_counted_with_the_models_cnn():
    tiny = [(32, 10, 5)] + [(32, 3, 2)] * 2 + [(32, 2, 2)] * 2  # the tests' model: 80 samples a frame
    assert data_checks.num_frames(3200, tiny) == 39 and data_checks.num_frames(3200, data_checks.WAV2VEC2_CONV) == 9
    assert data_checks.receptive_field(tiny) == 100 and data_checks.receptive_field(data_checks.WAV2VEC2_CONV) == 400
    assert data_checks.frame_problem(3200, list("TOO|SHORT|"), tiny) is None
    assert data_checks.ctc_frames_needed(list("AAB")) == 4


def test_nan_samples(data):
    wav = 0.1 * np.ones(9000, dtype="float32")
    wav[1234] = np.nan
    set_audio(data, 0, wav, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"test\.tsv:2: .*test_0\.wav holds 1 NaN or infinite samples \(the first at "
                                         r"sample 1234"):
        load(data)


def test_validate_reports_what_ctc_cannot_learn(data, capsys):
    from hjprune_manifests import tools

    set_audio(data, 0, np.zeros(300, dtype="float32"))
    wav = 0.1 * np.ones(9000, dtype="float32")
    wav[5] = np.inf
    set_audio(data, 3, wav, subtype="FLOAT")
    assert tools.validate_main([str(data), "--splits", "test"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2, out
    assert out[0].startswith(f"{data / 'test.tsv'}:5: ") and "holds 1 NaN or infinite samples" in out[0]
    assert out[1].startswith(f"{data / 'test.tsv'}:2: audio of 300 samples gives no frame")


def test_training_stops_at_a_row_ctc_cannot_learn_with_one_line(tmp_path, w2v_pretrained):
    """Under fairseq-hydra-train the plugin's error is the one line hydra prints, with file and line."""
    from fairseq_fixtures import EXAMPLES, hydra_train

    make_letter_corpus(str(tmp_path), {"train": 3, "valid": 2})
    sf.write(tmp_path / "valid_1.wav", np.zeros(90, dtype="float32"), 16000)
    lines = (tmp_path / "valid.tsv").read_text().splitlines()
    lines[2] = "valid_1.wav\t90"
    (tmp_path / "valid.tsv").write_text("\n".join(lines) + "\n")
    r = hydra_train(os.path.join(EXAMPLES, "tiny"), "finetune", [
        f"common.user_dir={USER_DIR}", f"task.data={tmp_path}", f"model.w2v_path={w2v_pretrained}",
        f"checkpoint.save_dir={tmp_path / 'ck'}"], cwd=str(tmp_path))
    assert r.returncode != 0
    errors = [l for l in r.stderr.splitlines() if l.startswith("hjprune: error:")]
    assert errors == [f"hjprune: error: {tmp_path / 'valid.tsv'}:3: audio of 90 samples gives no frame (the CNN needs "
                      f"at least 100 samples) ({tmp_path / 'valid.ltr'}:2); remove the row (and its label line) or "
                      "filter it out"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_validate_counts_frames_with_the_conv_layers_given(data, capsys):
    """--conv-layers takes fairseq's conv_feature_layers string: 300 samples give no frame to wav2vec2-base's
    CNN (400 needed) but 3 frames to the tests' small CNN, too few for the row's transcript."""
    from fairseq_fixtures import TINY_MODEL

    from hjprune_manifests import tools

    set_audio(data, 0, np.zeros(300, dtype="float32"))
    assert tools.validate_main([str(data), "--splits", "test", "--conv-layers", TINY_MODEL["conv_feature_layers"]]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{data / 'test.tsv'}:2: the transcript needs "), out
    assert "gives 3" in out[0], out


@pytest.mark.parametrize("bad", ["[(512,10)]", "[(512,10,5)]*x", "__import__('os').system('true')", "[(512,10,5)"])
def test_validate_refuses_a_bad_conv_layers_string_with_one_line(data, capsys, bad):
    from hjprune_manifests import tools

    assert tools.validate_main([str(data), "--splits", "test", "--conv-layers", bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hjprune-validate: error: conv layers {bad!r}: "), lines


def test_conv_layers_strings_round_trip():
    from hjprune_manifests.audio import WAV2VEC2_CONV, format_conv_layers, parse_conv_layers

    assert format_conv_layers(WAV2VEC2_CONV) == "[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]*2"
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + 2 * [(512, 2, 2)]") == WAV2VEC2_CONV


def test_validate_reads_symbols_of_flagged_dictionary_lines(data, capsys):
    """A '#fairseq:overwrite' line names its symbol, for hjprune-validate as for the training check."""
    from hjprune_manifests import tools

    (data / "dict.ltr.txt").write_text((data / "dict.ltr.txt").read_text() + "E 3 #fairseq:overwrite\n")
    assert tools.validate_main([str(data), "--splits", "test"]) == 0
    assert [s for _, _, s, _ in data_checks.dictionary_lines(str(data / "dict.ltr.txt"))][-1] == "E"
