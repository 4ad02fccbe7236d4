"""hjprune-export --hf (hf_export): a slim model as a Hugging Face folder that transformers loads with
trust_remote_code in a process where fairseq and hjprune_fairseq cannot be imported, in this environment as the
set-up makes it (no torchaudio-hiding trick); its output equals the fairseq model's (whole-head HuBERT, fine-grained
and WavLM slim models, a padded batch, blank at padded frames) and a CTC export decodes as fairseq-generate does:
through AutoProcessor, and through transformers' own speech-recognition pipeline, chunked (a long clip of the test
utterances), with word timestamps, and batched; frame lengths by both frame rules; the shipped code imports nothing
else; the output folder keeps what the tool did not write; hjprune-import-hf reads an export back as the same model."""

import ast
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from fairseq_fixtures import batch, fairseq_generate, make_letter_corpus, save_like_trainer
from helpers import SYMBOLS, ctc_model, gated_model, letters_head, max_diff, randomize_gates
from omegaconf import OmegaConf
from safetensors import safe_open

from hjprune_fairseq.cli import export as export_cli
from hjprune_fairseq.cli import import_hf
from hjprune_fairseq.convert import hf_export
from hjprune_fairseq.convert.slim_export import export_slim
from hjprune_fairseq.core.spec import EncoderSpec, conv_output_lengths
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.compat import import_transformers
from hjprune_fairseq.plugin.models.distill import HJPruneDistillConfig, HJPruneGatedDistill
from hjprune_fairseq.tools.cost_report import describe

TOOL = "hjprune-export-hf"
LENGTHS = [5000, 3300]
TINY_WAVLM = EncoderSpec.uniform([(16, 10, 5), (16, 4, 4), (16, 4, 4)], 32, 2, 4, 48, 8, 4, rel_pos_buckets=32,
                                 rel_pos_max_distance=32)
RATIO = 80  # samples per frame of the test models' CNN (strides 5, 2, 2, 2, 2)
GAP = 2400  # samples of silence between the utterances of the long clip (0.15 s)
CHUNK = dict(chunk_length_s=1.0, stride_length_s=0.2)  # each side's stride is far wider than the local model's context
FRAME_LENGTHS = [int(n) for n in np.random.default_rng(5).integers(400, 2000, 39)] + [2000]  # batch padded to 2000

# The child: a fresh interpreter in which fairseq, hjprune_fairseq and hjprune_manifests cannot be imported, offline,
# and transformers imported as a user would (torchaudio is not hidden: the set-up uninstalls it). It loads every
# exported folder with trust_remote_code, runs the padded batch through AutoModel (and AutoModelForCTC), counts the
# frames of FRAME_LENGTHS, decodes the wavs one at a time through AutoProcessor, and runs transformers' pipeline on
# the long clip (chunked or not, word timestamps) and on the utterances in one batch. Each step's error is recorded,
# so a failing step fails its own test.
CHILD = r"""
import importlib.abc, json, sys, traceback

BLOCKED = ("fairseq", "hjprune_fairseq", "hjprune_manifests")


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not importable here")
        return None


sys.meta_path.insert(0, Refuse())
import soundfile as sf
import torch
from transformers import AutoModel, AutoModelForCTC, AutoProcessor, pipeline

jobs = json.load(open(sys.argv[1]))
source, attention_mask = torch.load(jobs["batch"])
lengths = torch.tensor(jobs["frame_lengths"])
lengths_mask = (torch.arange(int(lengths.max())) < lengths.unsqueeze(1)).long()
results = {}


def attempt(r, key, fn):
    try:
        r[key] = fn()
    except Exception:
        r[key + "_error"] = traceback.format_exc()


def read(wav):
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 16000
    return audio


def decode(processor, model, wavs):  # one utterance at a time, as fairseq-generate --batch-size 1
    hyps = []
    for wav in wavs:
        inputs = processor(read(wav), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            hyps.append(processor.batch_decode(model(**inputs).logits.argmax(-1))[0])
    return hyps


for name, job in jobs["folders"].items():
    r = results[name] = {}
    encoder, info = AutoModel.from_pretrained(job["dir"], trust_remote_code=True, output_loading_info=True)
    with torch.no_grad():
        out = encoder.eval()(source, attention_mask=attention_mask, output_hidden_states=True)
        frames = encoder(torch.randn(lengths_mask.shape) * lengths_mask, attention_mask=lengths_mask).frame_mask
    r.update(encoder=out.last_hidden_state, frame_mask=out.frame_mask, hidden_states=out.hidden_states,
             encoder_class=type(encoder).__name__, encoder_file=sys.modules[type(encoder).__module__].__file__,
             encoder_missing=sorted(info["missing_keys"]), encoder_unexpected=sorted(info["unexpected_keys"]),
             frames=frames.sum(-1), frame_rule=encoder.config.encoder_spec["frame_padding"])
    attempt(r, "frame_lengths", lambda: encoder._get_feat_extract_output_lengths(lengths))
    attempt(r, "frame_lengths_padded", lambda: encoder._get_feat_extract_output_lengths(lengths, lengths_mask.shape[1]))
    if not job["ctc"]:
        continue
    model, info = AutoModelForCTC.from_pretrained(job["dir"], trust_remote_code=True, output_loading_info=True)
    model.eval()
    with torch.no_grad():
        out = model(source, attention_mask=attention_mask)
    r.update(logits=out.logits, ctc_frame_mask=out.frame_mask, ctc_class=type(model).__name__,
             ctc_missing=sorted(info["missing_keys"]), ctc_unexpected=sorted(info["unexpected_keys"]))
    processor = AutoProcessor.from_pretrained(job["dir"], trust_remote_code=True)
    r["processor_class"] = type(processor).__name__
    attempt(r, "hyps", lambda: decode(processor, model, job["wavs"]))
    if not job.get("clip"):
        continue
    asr = pipeline("automatic-speech-recognition", model=job["dir"], trust_remote_code=True)
    clip = {"raw": read(job["clip"]), "sampling_rate": 16000}
    run = lambda **kw: asr(dict(clip), **kw)  # the pipeline pops the dict it is given
    attempt(r, "unchunked", lambda: run(return_timestamps="word"))  # {"text": ..., "chunks": the words}
    attempt(r, "chunked", lambda: run(return_timestamps="word", **jobs["chunk"]))
    attempt(r, "batched", lambda: [o["text"] for o in asr([read(w) for w in job["wavs"]], batch_size=len(job["wavs"]))])
results["modules"] = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
torch.save(results, jobs["out"])
"""


def wavlm_distill():
    """A gated WavLM distillation model (random weights) of TINY_WAVLM: exported, an encoder without a CTC head."""
    cfg = OmegaConf.structured(HJPruneDistillConfig(encoder_spec=TINY_WAVLM.to_dict(), normalize=False,
                                                    feature_grad_mult=1.0, distill_layers="1,2", teacher_dim=32))
    model = HJPruneGatedDistill.from_config(cfg, 0).eval()
    randomize_gates(model, mean=1.5)
    with torch.no_grad():
        model.gates.heads[0].log_alpha[1] = -20.0  # a kept head reads the bias column of another index
    return model


def local_model(w2v_path, data):
    """A CTC model whose frames each see about 0.05 s of audio: LayerNorm CNN (no statistics over time) and
    self-attention silenced (out_proj weight 0), leaving the CNN's 100 samples, the positional convolution's 16 frames
    and per-frame layers. Chunked decoding with strides wider than that context must then give the unchunked output,
    and a padded batch the unpadded outputs at every real frame."""
    model = ctc_model(w2v_path, data)
    assert model.spec.extractor_mode == "layer_norm"
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
    letters_head(model, 3)
    delimiter = SYMBOLS.index("|")
    with torch.no_grad():  # the delimiter wins on about a tenth of the frames of random audio: words of a few letters
        x = model.get_logits(model(*batch([16000], seed=3)))
        others = torch.cat([x[..., :delimiter], x[..., delimiter + 1:]], -1).amax(-1)
        model.proj.bias[delimiter] += torch.quantile((others - x[..., delimiter]).flatten(), 0.1)
    return model


def write_clip(data, wavs):
    """The test utterances end to end with GAP samples of silence between them, as the split ``clip`` of ``data``: the
    long clip first, then the utterances themselves (so one fairseq-generate run decodes all). Returns the clip's path
    and where each utterance starts and ends in it (samples)."""
    pieces, spans, at = [], [], 0
    for i, wav in enumerate(wavs):
        audio = sf.read(wav, dtype="float32")[0]
        if i:
            pieces.append(np.zeros(GAP, dtype="float32"))
            at += GAP
        pieces.append(audio)
        spans.append((at, at + len(audio)))
        at += len(audio)
    clip = os.path.join(data, "clip.wav")
    sf.write(clip, np.concatenate(pieces), 16000, subtype="FLOAT")  # float: the samples read back exactly as written
    labels = open(os.path.join(data, "test.ltr")).read().split("\n")[:len(wavs)]
    rows = [f"clip.wav\t{at}"] + [f"{os.path.basename(w)}\t{sf.info(w).frames}" for w in wavs]
    with open(os.path.join(data, "clip.tsv"), "w") as f:
        f.write(os.path.abspath(data) + "\n" + "\n".join(rows) + "\n")
    with open(os.path.join(data, "clip.ltr"), "w") as f:
        f.write("\n".join([" ".join(labels)] + labels) + "\n")
    return clip, spans


def generate_hyps(data, path, subset):
    r = fairseq_generate(data, path, "--batch-size", "1", subset=subset)
    assert r.returncode == 0, r.stderr[-3000:]
    hyps = {int(i): h for i, _, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", r.stdout, re.M)}
    return [hyps[i] for i in range(len(hyps))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, hubert_pretrained, w2v_large_style):
    """name -> {slim model, its checkpoint, the exported folder, the child's results}, for a whole-head slim HuBERT CTC
    model (HuBERT's frame rule; exported from its GATED checkpoint), a fine-grained one (uneven pos-conv groups, thin
    heads, a blank weight; from its slim checkpoint), a WavLM distillation model's encoder and a local CTC model
    (:func:`local_model`) for the pipeline; plus the letter test set and the long clip."""
    d = tmp_path_factory.mktemp("hf_export")
    data = make_letter_corpus(str(d / "data"), {"test": 4})
    whole = ctc_model(hubert_pretrained, data)
    with torch.no_grad():
        whole.gates.heads[1].log_alpha.fill_(-20.0)  # a layer without heads
    fine = ctc_model(w2v_large_style, data, prune_head_dims=True, blank_weight=0.5)
    with torch.no_grad():
        fine.gates.heads[0].log_alpha.fill_(20.0)
        fine.gates.qk[0].log_alpha[0].fill_(-20.0)  # a head without query/key dims
        fine.gates.vo[0].log_alpha[1].fill_(-20.0)  # one without value/output dims: dropped
    letters_head(whole, 1)
    letters_head(fine, 2)
    models = {}
    for name, gated, from_gated in (("whole_heads", whole, True), ("fine_grained", fine, False),
                                    ("wavlm", wavlm_distill(), False), ("local", local_model(w2v_large_style, data),
                                                                        False)):
        gated_path = save_like_trainer(gated, d / f"{name}_gated.pt", data=data)
        slim_path = str(d / f"{name}_slim.pt")
        export_slim(gated_path, slim_path)
        folder = str(d / f"{name}_hf")
        args = [gated_path if from_gated else slim_path, "--hf", folder]
        assert export_cli.main(args) == 0, args
        models[name] = {"slim": load_model(slim_path)[0], "slim_path": slim_path, "dir": folder}
    rows = open(os.path.join(data, "test.tsv")).read().splitlines()[1:]
    wavs = [os.path.join(data, row.split("\t")[0]) for row in rows]
    clip, spans = write_clip(data, wavs)
    source, pad = batch(LENGTHS, seed=3)
    torch.save((source, (~pad).long()), d / "batch.pt")
    folders = {n: {"dir": m["dir"], "ctc": n != "wavlm", "wavs": wavs if n == "local" else []}
               for n, m in models.items()}
    folders["local"]["clip"] = clip
    jobs = {"batch": str(d / "batch.pt"), "out": str(d / "results.pt"), "folders": folders, "chunk": CHUNK,
            "frame_lengths": FRAME_LENGTHS}
    (d / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(d / "hf_home"),
               HF_MODULES_CACHE=str(d / "hf_home" / "modules"))  # where transformers copies the folder's code
    r = subprocess.run([sys.executable, "-c", CHILD, str(d / "jobs.json")], capture_output=True, text=True, timeout=300,
                       env=env, cwd=str(d))
    assert r.returncode == 0, r.stderr[-3000:]
    results = torch.load(d / "results.pt", weights_only=False)
    for name, m in models.items():
        m["child"] = results[name]
    return {"models": models, "modules": results["modules"], "data": data, "wavs": wavs, "batch": (source, pad),
            "hf_home": str(d / "hf_home"), "clip": clip, "spans": spans}


def ok(child, key):
    """The child's result of the step ``key``, or its error as the assertion message."""
    assert key in child, child.get(key + "_error", f"no {key}")
    return child[key]


def test_the_child_ran_without_fairseq_and_the_plugin(exported):
    assert exported["modules"] == []
    for m in exported["models"].values():
        assert m["child"]["encoder_file"].startswith(exported["hf_home"])  # the folder's code, copied by transformers


@pytest.mark.parametrize("name", ["whole_heads", "fine_grained", "wavlm"])
def test_output_equals_the_fairseq_model(exported, name):
    m = exported["models"][name]
    slim, child = m["slim"], m["child"]
    source, pad = exported["batch"]
    with torch.no_grad():
        x, frame_pad, layers = slim.encoder(source, pad, return_layers=True)
    assert child["encoder_missing"] == [] and child["encoder_class"] == "HJPruneModel"
    assert torch.equal(child["frame_mask"], (~frame_pad).long()) and bool(frame_pad.any())  # the batch is padded
    real = ~frame_pad
    assert (child["encoder"][real] - x[real]).abs().max().item() <= 1e-4
    assert len(child["hidden_states"]) == slim.spec.num_layers + 1
    assert all((a[real] - b[real]).abs().max().item() <= 1e-4 for a, b in zip(child["hidden_states"], layers))
    if name == "wavlm":
        assert slim.spec.has_rel_pos and slim.encoder.layers[0].self_attn.head_ids.tolist() != list(
            range(slim.spec.num_heads[0]))  # the kept heads' bias columns travel with the weights
        assert child["encoder_unexpected"] == [] and "logits" not in child
        return
    assert child["encoder_unexpected"] == ["lm_head.bias", "lm_head.weight"]  # the encoder of a CTC folder
    assert child["ctc_class"] == "HJPruneForCTC" and child["ctc_missing"] == child["ctc_unexpected"] == []
    with torch.no_grad():
        logits = slim.get_logits(slim(source, pad)).transpose(0, 1)  # padded frames: the blank only
    assert torch.equal(child["ctc_frame_mask"], (~frame_pad).long())
    assert child["logits"].shape == logits.shape == (len(LENGTHS), frame_pad.shape[1], len(SYMBOLS))
    assert max_diff(child["logits"], logits) <= 1e-4  # -inf at the same places: every padded frame's non-blanks
    assert bool(torch.isinf(logits[frame_pad][:, 1:]).all()) and bool((logits[frame_pad][:, 0] == 0).all())


def test_frame_lengths_follow_the_exports_frame_rule(exported):
    """_get_feat_extract_output_lengths counts the frames the model's own frame_mask marks real, for wav2vec2's rule
    (the conv formula) and HuBERT's (a frame is padding when all its samples are), on a batch padded to 2000 samples."""
    rules = set()
    for name, m in exported["models"].items():
        child = m["child"]
        rules.add(child["frame_rule"])
        assert child["frame_rule"] == m["slim"].spec.frame_padding
        assert ok(child, "frame_lengths").tolist() == child["frames"].tolist(), name
        assert ok(child, "frame_lengths_padded").tolist() == child["frames"].tolist(), name
    assert rules == {"wav2vec2", "hubert"}
    hubert = exported["models"]["whole_heads"]
    formula = conv_output_lengths(torch.tensor(FRAME_LENGTHS), hubert["slim"].spec.conv_layers)
    assert (formula != hubert["child"]["frames"]).sum() >= 10  # the rules differ here: the check can fail


def test_the_slim_models_are_the_intended_shapes(exported):
    """What the parity above covers: HuBERT with no heads in a layer; thin, uneven heads and uneven pos-conv groups;
    WavLM; and the local model of the pipeline tests, with wav2vec2's frame rule."""
    whole, fine, wavlm, local = (exported["models"][n]["slim"].spec
                                 for n in ("whole_heads", "fine_grained", "wavlm", "local"))
    assert whole.num_heads[1] == 0 and whole.qk_dims is None and not whole.layer_norm_first
    assert whole.frame_padding == "hubert" and local.frame_padding == "wav2vec2"
    assert fine.qk_dims[0][0] == 0 and len(set(fine.qk_dims[0] + fine.vo_dims[0])) > 1 and fine.layer_norm_first
    assert len(set(fine.pos_conv_groups)) > 1 and fine.extractor_mode == "layer_norm" and fine.conv_bias
    assert wavlm.rel_pos_buckets == 32 and wavlm.embed_dim < TINY_WAVLM.embed_dim


@pytest.fixture(scope="module")
def local_hyps(exported):
    """fairseq-generate --batch-size 1 of the local model: the long clip's hypothesis, then each utterance's."""
    m = exported["models"]["local"]
    hyps = generate_hyps(exported["data"], m["slim_path"], "clip")
    assert len(hyps) == 1 + len(exported["wavs"]) and len(hyps[0].split()) >= 30, hyps[0]  # many words
    return hyps


def test_ctc_export_decodes_as_fairseq_generate_through_auto_processor(exported, local_hyps):
    child = exported["models"]["local"]["child"]
    assert child["processor_class"] == "Wav2Vec2Processor"  # AutoProcessor: feature extractor + tokenizer
    hyps = ok(child, "hyps")
    assert hyps == local_hyps[1:]
    text = "".join(hyps)
    assert len(set(text) - {" "}) >= 5 and text.count(" ") >= len(exported["wavs"]), text  # it means something


def test_the_pipeline_decodes_a_long_clip_chunked_as_unchunked(exported, local_hyps):
    """transformers' pipeline on the exported folder: unchunked, the clip's fairseq-generate hypothesis; chunked
    (CHUNK), the same text (the local model sees less context than a stride, so no chunk border changes a word)."""
    child = exported["models"]["local"]["child"]
    assert ok(child, "unchunked")["text"] == local_hyps[0]
    assert ok(child, "chunked")["text"] == local_hyps[0]
    duration = sf.info(exported["clip"]).frames / 16000
    assert duration > 3 * CHUNK["chunk_length_s"]  # several chunks


def test_the_pipeline_gives_word_timestamps_in_the_clip(exported, local_hyps):
    """Word timestamps (chunked or not) name the clip's words in order, each inside the clip, the first in its first
    utterance and the last in its last; chunked, the same as unchunked."""
    child = exported["models"]["local"]["child"]
    words = ok(child, "unchunked")["chunks"]
    assert [w["text"] for w in words] == local_hyps[0].split()
    spans = [(a / 16000, b / 16000) for a, b in exported["spans"]]
    ends = [0.0]
    for w in words:
        start, end = w["timestamp"]
        assert ends[-1] <= start <= end <= spans[-1][1], (w, ends[-1])
        assert all(abs(t * 16000 / RATIO - round(t * 16000 / RATIO)) < 1e-6 for t in (start, end))  # whole frames
        ends.append(end)
    assert words[0]["timestamp"][0] < spans[0][1] and words[-1]["timestamp"][1] > spans[-1][0], (words[0], words[-1])
    assert ok(child, "chunked")["chunks"] == words


def test_the_batched_pipeline_decodes_as_one_utterance_at_a_time(exported, local_hyps):
    """pipeline(..., batch_size=4): one padded batch with an attention mask; padded frames decode to the blank, so each
    text is the utterance's own fairseq-generate hypothesis (LayerNorm CNN: padding changes no real frame)."""
    m = exported["models"]["local"]
    assert ok(m["child"], "batched") == local_hyps[1:]
    wavs = [torch.from_numpy(sf.read(w, dtype="float32")[0]) for w in exported["wavs"]]
    assert len({len(w) for w in wavs}) == len(wavs)  # every utterance but the longest is padded
    source = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    pad = torch.arange(source.shape[1]) >= torch.tensor([len(w) for w in wavs]).unsqueeze(1)
    with torch.no_grad():
        out = m["slim"](source, pad)
    unmasked = out["encoder_out"].transpose(0, 1)  # (B, T, V) before get_logits puts the blank at padded frames
    assert bool((unmasked[out["padding_mask"]].argmax(-1) != 0).any())  # they would print letters: the check can fail


def test_the_folder(exported):
    m = exported["models"]["whole_heads"]
    folder, slim = m["dir"], m["slim"]
    assert sorted(os.listdir(folder)) == sorted([
        f".{TOOL}", "config.json", "model.safetensors", "preprocessor_config.json", "vocab.json",
        "tokenizer_config.json", "special_tokens_map.json", *hf_export.shipped_files()])
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["model_type"] == "hjprune_wav2vec2" and config["architectures"] == ["HJPruneForCTC"]
    assert config["auto_map"] == {"AutoConfig": "configuration_hjprune.HJPruneConfig",
                                  "AutoModel": "modeling_hjprune.HJPruneModel",
                                  "AutoModelForCTC": "modeling_hjprune.HJPruneForCTC"}
    assert EncoderSpec.from_dict(config["encoder_spec"]) == slim.spec
    assert (config["vocab_size"], config["pad_token_id"], config["normalize"]) == (len(SYMBOLS), 0, False)
    assert config["inputs_to_logits_ratio"] == RATIO  # the pipeline's chunk and timestamp unit
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"encoder.pos_conv.g", "encoder.pos_conv.v.0", "lm_head.weight"} <= keys
    assert not any("weight_g" in k or "weight_v" in k for k in keys)  # names transformers renames on load
    # safetensors writes owner-only files: the weights get the mode open() gave config.json (the umask's)
    assert os.stat(os.path.join(folder, "model.safetensors")).st_mode == os.stat(os.path.join(folder, "config.json")).st_mode
    assert config["hjprune"]["exported_from"].endswith("whole_heads_gated.pt")  # exported from the gated checkpoint
    assert EncoderSpec.from_dict(config["hjprune"]["reference_spec"]) == slim.reference_spec != slim.spec
    pre = json.load(open(os.path.join(folder, "preprocessor_config.json")))
    assert pre["processor_class"] == json.load(open(os.path.join(folder, "tokenizer_config.json")))[
        "processor_class"] == "Wav2Vec2Processor"  # where AutoProcessor looks
    assert (pre["do_normalize"], pre["sampling_rate"], pre["return_attention_mask"]) == (False, 16000, True)
    vocab = json.load(open(os.path.join(folder, "vocab.json")))
    assert sorted(vocab, key=vocab.get) == ["<pad>", "<s>", "</s>", "<unk>"] + SYMBOLS[4:]  # fairseq's indices
    tokenizer = import_transformers().Wav2Vec2CTCTokenizer.from_pretrained(folder)
    assert (tokenizer.pad_token_id, tokenizer.word_delimiter_token) == (0, "|")
    wavlm = exported["models"]["wavlm"]
    config = json.load(open(os.path.join(wavlm["dir"], "config.json")))
    assert config["architectures"] == ["HJPruneModel"] and "AutoModelForCTC" not in config["auto_map"]
    assert not os.path.exists(os.path.join(wavlm["dir"], "vocab.json"))


def test_the_shipped_code_imports_only_torch_numpy_transformers_and_itself():
    files = hf_export.shipped_files()
    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "transformers"}
    for name, path in files.items():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= allowed, (name, ast.unparse(node))
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (name, ast.unparse(node))
            elif isinstance(node, ast.ImportFrom):  # relative: another shipped file
                assert node.level == 1 and f"{node.module}.py" in files, (name, ast.unparse(node))
    relative = {m for path in files.values() for m in re.findall(r"^from \.(\w+) import", open(path).read(), re.M)}
    assert relative == {"configuration_hjprune", "encoder", "spec", "gate_state"}


@pytest.mark.parametrize("name", ["whole_heads", "fine_grained", "wavlm"])
def test_an_export_imports_back_as_the_same_model(exported, name, tmp_path):
    """hjprune-import-hf of the folder: the slim model's encoder exactly, and for a CTC model its dictionary and
    logits (the blank weight folded into the output layer)."""
    m = exported["models"][name]
    out = str(tmp_path / "back")
    assert import_hf.main([m["dir"], out]) == 0
    back, state = load_model(os.path.join(out, "model.pt"))
    slim = m["slim"]
    assert back.spec == slim.spec and back.encoder.state_dict().keys() == slim.encoder.state_dict().keys()
    assert all(torch.equal(v, slim.encoder.state_dict()[k]) for k, v in back.encoder.state_dict().items())
    # sparsity stays measured against the dense ancestor, not the pruned model
    assert back.reference_spec == slim.reference_spec
    if name == "wavlm":
        assert back.proj.weight.shape[0] == 0  # an encoder without a CTC head
        return
    assert state["cfg"]["model"]["target_dictionary"]["symbols"] == SYMBOLS
    assert slim.reference_spec != slim.spec  # pruned: hjprune-cost says so and measures against the dense ancestor
    cost = describe(os.path.join(out, "model.pt"), 10.0)
    assert cost["kind"] == "slim" and cost["macs_sparsity"] == describe(m["slim_path"], 10.0)["macs_sparsity"] > 0
    assert open(os.path.join(out, "dict.ltr.txt")).read().split()[::2] == SYMBOLS[4:]
    source, pad = exported["batch"]
    with torch.no_grad():
        a, b = (model.get_logits(model(source, pad)) for model in (slim, back))
    assert max_diff(a, b) <= 1e-5


@pytest.mark.parametrize("mode", ["add", "set"])
def test_the_blank_weight_is_folded_into_the_output_layer(w2v_pretrained, mode):
    model = gated_model(w2v_pretrained, blank_weight=1.5, blank_mode=mode)
    x = torch.randn(7, 2, model.spec.embed_dim)
    layer = hf_export.ctc_output_layer(model)
    with torch.no_grad():
        expected = model.get_logits({"encoder_out": model.proj(x), "padding_mask": None})
    assert (F.linear(x, layer["weight"], layer["bias"]) - expected).abs().max().item() < 1e-5


def test_the_output_folder_keeps_what_the_tool_did_not_write(exported, tmp_path, capsys):
    slim_path = exported["models"]["wavlm"]["slim_path"]
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export_cli.main([slim_path, "--hf", str(out)]) == 2
    assert capsys.readouterr().err == (f"hjprune-export: error: {out}: holds files this tool did not write "
                                       "(notes.txt); choose a new or empty folder\n")
    os.remove(out / "notes.txt")
    assert export_cli.main([slim_path, "--hf", str(out)]) == 0
    assert export_cli.main([slim_path, "--hf", str(out)]) == 2
    assert capsys.readouterr().err.endswith(
        f"{out}: already holds a Hugging Face export (pass --overwrite to replace it)\n")
    (out / "model.safetensors").write_bytes(b"old")
    assert export_cli.main([exported["models"]["whole_heads"]["slim_path"], "--hf", str(out), "--overwrite"]) == 0
    assert "vocab.json" in os.listdir(out) and (out / "model.safetensors").stat().st_size > 3
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary folder left beside it


def test_a_ctc_checkpoint_without_its_dictionary_is_refused(w2v_pretrained, tmp_path, capsys):
    path = save_like_trainer(gated_model(w2v_pretrained), tmp_path / "g.pt")
    assert export_cli.main([path, "--hf", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == (
        f"hjprune-export: error: {path}: records no target dictionary (model.target_dictionary), so the CTC "
        "outputs have no tokens; expected a checkpoint of a stage run with the hjprune_audio_finetuning task\n")
    assert not os.path.exists(tmp_path / "hf")
