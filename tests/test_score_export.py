"""hjprune-score-export (score_export): an ONNX export and a Hugging Face export of a CTC model decode a test set with
fairseq-generate's hypotheses, one utterance a batch and in fairseq-generate's padded batches of two, and score it
with fairseq-generate's WER; the report counts the hypotheses that differ; a dictionary or a fairseq-generate output
that does not fit is refused in one line."""

import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from fairseq_fixtures import fairseq_generate, make_letter_corpus, save_like_trainer
from helpers import ctc_model, letters_head

from hjprune_fairseq.cli import export as export_cli
from hjprune_fairseq.cli import score_export as score_cli
from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.plugin.compat import import_transformers
from hjprune_fairseq.plugin.scoring import parse_generate

UTTERANCES = 5
BATCH_SIZES = (1, 2)


@pytest.fixture(scope="module")
def hf_modules_cache(tmp_path_factory):
    """transformers copies a trust_remote_code folder's code into its modules cache and imports it from there: a
    temporary one for this module (not the user's), removed from sys.path and sys.modules afterwards."""
    dynamic = import_transformers().dynamic_module_utils
    saved, path = dynamic.HF_MODULES_CACHE, list(sys.path)
    dynamic.HF_MODULES_CACHE = str(tmp_path_factory.mktemp("hf_modules"))
    yield dynamic.HF_MODULES_CACHE
    dynamic.HF_MODULES_CACHE = saved
    sys.path[:] = path
    for name in [m for m in sys.modules if m == "transformers_modules" or m.startswith("transformers_modules.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, w2v_pretrained, hf_modules_cache):
    """A slim CTC model whose head prints letters and spaces, its ONNX graph and Hugging Face folder, and
    fairseq-generate's output on a letter test set at each of BATCH_SIZES."""
    d = tmp_path_factory.mktemp("score_export")
    data = make_letter_corpus(str(d / "data"), {"test": UTTERANCES})
    model = ctc_model(w2v_pretrained, data)
    letters_head(model, 1)
    slim = str(d / "slim.pt")
    export_slim(save_like_trainer(model, d / "gated.pt", data=data), slim)
    onnx, hf = str(d / "slim.onnx"), str(d / "slim_hf")
    assert export_cli.main([slim, "--onnx", onnx, "--hf", hf]) == 0
    outs = {b: str(d / f"generate_bs{b}") for b in BATCH_SIZES}
    with ThreadPoolExecutor(len(BATCH_SIZES)) as pool:  # two processes at once: each spends most of its time importing
        runs = pool.map(lambda b: fairseq_generate(data, slim, "--batch-size", str(b), "--results-path", outs[b]),
                        BATCH_SIZES)
        for r in runs:
            assert r.returncode == 0, r.stderr[-3000:]
    generated = {b: os.path.join(out, "generate-test.txt") for b, out in outs.items()}
    return {"data": data, "onnx": onnx, "hf": hf, "generated": generated, "dir": d}


def score(capsys, *args):
    assert score_cli.main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_hypotheses_and_wer_equal_fairseq_generate(exported, capsys, tmp_path, batch_size):
    generated = exported["generated"][batch_size]
    hyps_path = str(tmp_path / "hyps.tsv")
    r = score(capsys, exported["data"], "--onnx", exported["onnx"], "--hf", exported["hf"], "--batch-size",
              str(batch_size), "--max-tokens", "1000000", "--compare", generated, "--hyps", hyps_path)
    expected, refs = parse_generate(generated)
    wer = float(re.search(r"WER: ([\d.]+)", open(generated).read()).group(1))  # fairseq-generate's own line
    assert r["utterances"] == UTTERANCES and r["reference"]["wer"] == pytest.approx(wer, abs=0.005)
    assert [(m["kind"], m["path"]) for m in r["models"]] == [("onnx", exported["onnx"]), ("hf", exported["hf"])]
    for m in r["models"]:
        assert m["differing_hypotheses"] == 0 and m["wer_change"] == 0.0, m
        assert m["wer"] == r["reference"]["wer"] and not m["normalize"]
    rows = [line.split("\t") for line in open(hyps_path).read().splitlines()]
    assert rows[0] == ["id", "reference", exported["onnx"], exported["hf"]]
    assert {int(row[0]): row[1] for row in rows[1:]} == refs
    assert {int(row[0]): row[2] for row in rows[1:]} == expected == {int(row[0]): row[3] for row in rows[1:]}
    text = " ".join(expected.values())
    assert len(set(text) - {" "}) >= 5 and text.count(" ") >= UTTERANCES, text  # letters and spaces: it means something


def test_padding_changes_hypotheses_so_the_batches_must_be_fairseq_generates(exported):
    """What makes the batch-of-two case above a test of the batching: the same model decodes some utterance
    differently in a padded batch (the first conv layer's GroupNorm sees the padded zeros)."""
    one, two = (parse_generate(exported["generated"][b])[0] for b in BATCH_SIZES)
    assert one.keys() == two.keys() and one != two


def test_a_different_hypothesis_is_counted(exported, capsys, tmp_path):
    generated = open(exported["generated"][1]).read()
    first = min(parse_generate(exported["generated"][1])[0])
    edited = tmp_path / "generate-test.txt"
    edited.write_text(re.sub(rf"^(D-{first}\t\S+\t)(.*)$", r"\1X \2", generated, flags=re.M))
    r = score(capsys, exported["data"], "--onnx", exported["onnx"], "--compare", str(edited))
    m = r["models"][0]
    assert m["differing_hypotheses"] == 1 and m["differing_ids"] == [first] and m["wer_change"] < 0


def test_refusals(exported, capsys, tmp_path):
    data, onnx, hf = exported["data"], exported["onnx"], exported["hf"]
    # A data dictionary unlike the model's (two letters swapped): the ONNX graph cannot tell, the folder can.
    other = tmp_path / "data"
    other.mkdir()
    for name in os.listdir(data):
        if not name.startswith("dict."):
            os.symlink(os.path.join(data, name), other / name)
    lines = open(os.path.join(data, "dict.ltr.txt")).read().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (other / "dict.ltr.txt").write_text("\n".join(lines) + "\n")
    assert score_cli.main([str(other), "--hf", hf]) == 2
    assert capsys.readouterr().err == (
        f"hjprune-score-export: error: {other}/dict.ltr.txt: the data dictionary differs from the one the model was "
        f"trained with ({hf}/vocab.json): symbol 4 is 'T' here but 'E' in training; decode and train with the "
        "training dictionary\n")
    # fairseq-generate's output of fewer utterances.
    generated = open(exported["generated"][1]).read()
    partial = tmp_path / "partial.txt"
    partial.write_text(re.sub(r"^[A-Z]-0\t.*\n", "", generated, flags=re.M))
    assert score_cli.main([data, "--onnx", onnx, "--compare", str(partial)]) == 2
    assert capsys.readouterr().err.startswith(
        f"hjprune-score-export: error: {partial}: has T-/D- lines for {UTTERANCES - 1} utterances but "
        f"{data}/test.tsv has {UTTERANCES} (missing ids [0], unknown ids []")
    # Not a CTC graph.
    not_ctc = tmp_path / "features.onnx"
    import onnx as onnx_lib

    proto = onnx_lib.load(onnx)
    proto.graph.output[0].name = "features"
    for node in proto.graph.node:
        node.output[:] = ["features" if o == "logits" else o for o in node.output]
    onnx_lib.save(proto, str(not_ctc))
    assert score_cli.main([data, "--onnx", str(not_ctc)]) == 2
    assert capsys.readouterr().err == (
        f"hjprune-score-export: error: {not_ctc}: the graph's outputs are ['features', 'frame_padding_mask'] (expected "
        "['logits', 'frame_padding_mask']: a CTC model's graph written by hjprune-export --onnx)\n")
    with pytest.raises(SystemExit):
        score_cli.main([data])
    assert "give at least one model" in capsys.readouterr().err


def test_an_existing_hyps_file_is_kept_unless_overwrite(exported, capsys, tmp_path):
    mine = tmp_path / "mine.tsv"
    mine.write_text("my notes\n")
    args = [exported["data"], "--onnx", exported["onnx"], "--hyps", str(mine)]
    assert score_cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{mine}: already exists (pass --overwrite to replace it)" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "my notes\n"  # refused before decoding, nothing lost
    score(capsys, *args, "--overwrite")
    assert mine.read_text().startswith("id\treference\t")


def with_metadata(src, dst, **changes):
    """A copy of the graph ``src`` at ``dst`` whose metadata has ``changes`` (None: the key removed)."""
    import onnx as onnx_lib

    proto = onnx_lib.load(src)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(changes)
    del proto.metadata_props[:]
    for k, v in meta.items():
        if v is not None:
            proto.metadata_props.add(key=k, value=v)
    onnx_lib.save(proto, str(dst))
    return str(dst)


def test_audio_shorter_than_the_graph_takes_is_refused(exported, capsys, tmp_path):
    """A batch shorter than the graph's metadata min_samples (the CNN's receptive field: onnxruntime would fail
    inside the first Conv) is refused in one line; a graph without that metadata (an older export) too."""
    data = exported["data"]
    rows = open(os.path.join(data, "test.tsv")).read().splitlines()[1:]
    shortest = min(int(row.split("\t")[1]) for row in rows)
    longer = with_metadata(exported["onnx"], tmp_path / "longer.onnx", min_samples=str(shortest + 1))
    assert score_cli.main([data, "--onnx", longer]) == 2
    ms = f"{1000 * (shortest + 1) / 16000:g}"
    assert capsys.readouterr().err == (
        f"hjprune-score-export: error: {longer}: an input of {shortest} samples is shorter than the graph takes "
        f"(expected at least min_samples={shortest + 1} samples, {ms} ms at 16000 Hz: the CNN's receptive field, "
        "one frame)\n")
    older = with_metadata(exported["onnx"], tmp_path / "older.onnx", min_samples=None)
    assert score_cli.main([data, "--onnx", older]) == 2
    assert capsys.readouterr().err == (
        f"hjprune-score-export: error: {older}: metadata min_samples=None (expected a positive integer, as "
        "hjprune-export --onnx writes it; export the graph again)\n")
