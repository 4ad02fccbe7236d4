"""hjprune-import-hf (hf_import): tiny random transformers models, written by save_pretrained, become hjprune
checkpoints whose output equals transformers' with and without padding; a CTC import decodes through
fairseq-generate exactly as transformers' argmax and tokenizer do, and trains through prune, hjprune-export
and the final fine-tuning; what the encoder cannot compute is refused in one line."""

import inspect
import json
import os
import re
import shutil

import pytest
import soundfile as sf
import torch
from fairseq_fixtures import EXAMPLES, LETTERS, batch, fairseq_generate, make_letter_corpus, train_ok
from helpers import VOCAB as LETTER_VOCAB
from helpers import gated_model

from hjprune_fairseq.cli import cost as cost_cli
from hjprune_fairseq.cli import export as export_cli
from hjprune_fairseq.cli import import_hf
from hjprune_fairseq.convert import hf_import
from hjprune_fairseq.plugin.checkpoints import load_model
from hjprune_fairseq.plugin.compat import import_transformers
from hjprune_fairseq.plugin.fairseq_import import read_checkpoint

TOOL = "hjprune-import-hf"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, conv_dim=(16, 16, 16),
            conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
LAYER_PRE_LN = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
# wav2vec2-base-960h's layout: the specials, the word delimiter, then the letters.
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(LETTERS[:-1])}}
SWAP = {"<s>": "<pad>", "<pad>": "<s>"}  # fairseq's <s> row is transformers' blank, and the other way round
MODELS = {  # name: (transformers class, its config class, config fields beyond TINY)
    "wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Config", {}),
    "wav2vec2_layer_pre_ln": ("Wav2Vec2Model", "Wav2Vec2Config", LAYER_PRE_LN),
    "wav2vec2_pretraining": ("Wav2Vec2ForPreTraining", "Wav2Vec2Config",
                             dict(num_codevectors_per_group=8, codevector_dim=16, proj_codevector_dim=16)),
    "wav2vec2_ctc": ("Wav2Vec2ForCTC", "Wav2Vec2Config", {}),
    "hubert": ("HubertModel", "HubertConfig", {}),
    "hubert_ctc": ("HubertForCTC", "HubertConfig", LAYER_PRE_LN),
}
LENGTHS = [4000, 2600]


def hf_model(name: str, seed: int = 0, **fields):
    """A random transformers model of MODELS[name], every weight, norm and bias perturbed (transformers'
    init: std 0.02, unit norms, zero biases, would leave much of the computation untested)."""
    tr = import_transformers()
    cls, config_cls, extra = MODELS[name]
    torch.manual_seed(seed)
    vocab = dict(vocab_size=len(VOCAB)) if cls.endswith("ForCTC") else {}
    model = getattr(tr, cls)(getattr(tr, config_cls)(**dict(TINY, **extra, **fields), **vocab)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    return model


def save_hf(model, folder, normalize: bool = False) -> str:
    """The folder a transformers user has: save_pretrained of the model, its feature extractor and, for a
    CTC model, its tokenizer."""
    tr = import_transformers()
    model.save_pretrained(folder)
    tr.Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=True).save_pretrained(folder)
    if hasattr(model, "lm_head"):
        vocab = os.path.join(folder, "vocab.json")
        with open(vocab, "w") as f:
            json.dump(VOCAB, f)
        tr.Wav2Vec2CTCTokenizer(vocab).save_pretrained(folder)
    return str(folder)


def imports(folder, out, *flags) -> str:
    assert import_hf.main([str(folder), str(out), *flags]) == 0
    return str(out)


def refused(capsys, line: str) -> None:
    assert capsys.readouterr().err == f"{TOOL}: error: {line}\n"


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request, tmp_path_factory):
    """(name, transformers model, its folder, the import's OUT_DIR) of every model of MODELS."""
    d = tmp_path_factory.mktemp(request.param)
    model = hf_model(request.param)
    folder = save_hf(model, d / "hf")
    return request.param, model, folder, imports(folder, d / "out")


def fairseq_rows(symbols):
    """The transformers output row of every fairseq index, from the symbols alone."""
    return [VOCAB[SWAP.get(s, s)] for s in symbols]


@pytest.mark.parametrize("padded", [False, True])
def test_output_equals_transformers(imported, padded):
    name, hf, _, out = imported
    model, state = load_model(os.path.join(out, "model.pt"))
    assert state["cfg"]["model"]["_name"] == "hjprune_slim_ctc" and model.spec.frame_padding == "wav2vec2"
    source, pad = batch(LENGTHS) if padded else (batch([LENGTHS[0]] * 2)[0], None)
    mask = None if pad is None else (~pad).long()
    with torch.no_grad():
        if hasattr(hf, "lm_head"):
            output = model(source, pad)
            ours, frame_pad = output["encoder_out"].transpose(0, 1), output["padding_mask"]
            symbols = state["cfg"]["model"]["target_dictionary"]["symbols"]
            theirs = hf(source, attention_mask=mask).logits[..., fairseq_rows(symbols)]
        else:
            ours, frame_pad = model.encode(source, pad)
            theirs = hf.base_model(source, attention_mask=mask).last_hidden_state
    lengths = torch.tensor(LENGTHS if padded else [LENGTHS[0]] * 2)
    frames = hf._get_feat_extract_output_lengths(lengths)
    assert (frame_pad is None) == (not padded)
    if padded:
        assert torch.equal((~frame_pad).sum(1), frames)  # the same frames are padding
    assert ours.shape == theirs.shape
    for b, n in enumerate(frames.tolist()):
        assert (ours[b, :n] - theirs[b, :n]).abs().max().item() < 1e-4, name


def test_imported_checkpoint_is_read_by_every_tool(imported, capsys):
    """read_checkpoint (every stage's model.w2v_path) takes it; hjprune-cost describes it; a CTC import
    records the dictionary its head indexes, dict.ltr.txt holds that dictionary."""
    name, hf, folder, out = imported
    path = os.path.join(out, "model.pt")
    ckpt = read_checkpoint(path)
    model, state = load_model(path)
    assert ckpt.kind == "hjprune" and ckpt.spec == model.spec and ckpt.normalize is False
    assert ckpt.spec.num_layers == 2 and ckpt.spec.layer_norm_first == ("pre_ln" in name or name == "hubert_ctc")
    ctc = hasattr(hf, "lm_head")
    expected_files = {"model.pt", ".hjprune-import-hf"} | ({"dict.ltr.txt"} if ctc else set())
    assert set(os.listdir(out)) == expected_files
    if ctc:
        symbols = state["cfg"]["model"]["target_dictionary"]["symbols"]
        assert symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and symbols[4:] == list(VOCAB)[4:]
        assert open(os.path.join(out, "dict.ltr.txt")).read().split() == [w for s in symbols[4:] for w in (s, "1")]
        assert ckpt.head_state["weight"].shape == (len(VOCAB), 32)
    else:
        assert ckpt.head_state is None and model.proj.weight.shape == (0, 32)  # an output layer of no symbols
    assert cost_cli.main([path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert report["size_sparsity"] == 0.0 and report["kind"] == "dense"  # not "slim": its reference is itself


def test_an_import_initialises_a_gated_model(imported):
    """model.w2v_path of a gated model: the encoder's weights carry over; a head carries over when there is one."""
    name, hf, _, out = imported
    model = gated_model(os.path.join(out, "model.pt"))
    imported_model, _ = load_model(os.path.join(out, "model.pt"))
    assert model.spec == imported_model.spec
    assert all(torch.equal(v, imported_model.encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())
    assert torch.equal(model.proj.weight, imported_model.proj.weight) == hasattr(hf, "lm_head")
    assert model.proj.weight.shape[0] == LETTER_VOCAB


# ---- CTC decoding ----------------------------------------------------------------------------------
def shape_head(hf, scale: float = 2.0, blank: float = 3.0, space: float = 5.0, components: int = 8) -> None:
    """Make the CTC head of ``hf`` score random combinations of the leading principal components (whitened)
    of the encoder's output on noise: random audio then decodes to many letters, blanks between repeats
    and spaces, where a random head repeats one or two tokens. <s>, </s> and <unk> never win, as after CTC
    training on letters (fairseq-generate strips <s> and </s> where transformers' decode prints them)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        h = hf.base_model(0.1 * torch.randn(1, 16000, generator=g)).last_hidden_state[0]
        values, vectors = torch.linalg.eigh(torch.cov(h.T))
        whiten = torch.diag(values[-components:].rsqrt()) @ vectors[:, -components:].T
        weight = scale * torch.randn(len(VOCAB), components, generator=g) @ whiten
        bias = -weight @ h.mean(0)
        bias[VOCAB["<pad>"]] += blank
        bias[VOCAB["|"]] += space
        for token in ("<s>", "</s>", "<unk>"):
            weight[VOCAB[token]], bias[VOCAB[token]] = 0.0, -100.0
        hf.lm_head.weight.copy_(weight)
        hf.lm_head.bias.copy_(bias)


@pytest.fixture(scope="module")
def ctc_import(tmp_path_factory):
    """(transformers Wav2Vec2ForCTC, its folder, OUT_DIR), its head shaped (:func:`shape_head`). Its CNN has
    LayerNorms: GroupNorm's statistics would span the padding of fairseq-generate's batches, which a
    transformers model run one utterance at a time does not see."""
    d = tmp_path_factory.mktemp("ctc")
    hf = hf_model("wav2vec2_ctc", seed=1, **LAYER_PRE_LN)
    shape_head(hf)
    folder = save_hf(hf, d / "hf")
    return hf, folder, imports(folder, d / "out")


def test_ctc_import_decodes_as_transformers_through_fairseq_generate(ctc_import, tmp_path):
    hf, folder, out = ctc_import
    data = make_letter_corpus(str(tmp_path / "data"), {"test": 4})
    shutil.copy(os.path.join(out, "dict.ltr.txt"), os.path.join(data, "dict.ltr.txt"))
    r = fairseq_generate(data, os.path.join(out, "model.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    hyps = {int(i): h for i, _, h in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", r.stdout, re.M)}
    tokenizer = import_transformers().Wav2Vec2CTCTokenizer.from_pretrained(folder)
    rows = open(os.path.join(data, "test.tsv")).read().splitlines()[1:]
    expected = {}
    for i, row in enumerate(rows):  # one utterance at a time: no padding on transformers' side
        wav, _ = sf.read(os.path.join(data, row.split("\t")[0]), dtype="float32")
        with torch.no_grad():
            ids = hf(torch.from_numpy(wav)[None]).logits.argmax(-1)[0]
        expected[i] = tokenizer.decode(ids.tolist())  # merge repeats, drop the blank, '|' -> ' '
    assert hyps == expected
    text = "".join(expected.values())  # the comparison means something: many letters, repeats, spaces
    assert len(set(text) - {" "}) >= 10 and text.count(" ") >= 3 * len(rows), expected
    assert re.search(r"([A-Z])\1", text), expected  # a repeated letter: a blank between two frames of it


# ---- what is refused ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved transformers folders to edit: a Wav2Vec2ForCTC and a HubertModel."""
    d = tmp_path_factory.mktemp("refused")
    return {name: save_hf(hf_model(name), d / name) for name in ("wav2vec2_ctc", "hubert")}


def edited(folders, name, tmp_path, file="config.json", **fields) -> str:
    folder = tmp_path / "hf"
    shutil.copytree(folders[name], folder)
    with open(folder / file) as f:
        data = json.load(f)
    data.update(fields)
    with open(folder / file, "w") as f:
        json.dump(data, f)
    return str(folder)


@pytest.mark.parametrize("name, field, value, expected", [
    ("wav2vec2_ctc", "architectures", ["Wav2Vec2ConformerForCTC"],
     f"architectures=['Wav2Vec2ConformerForCTC'] is not supported (expected one of {sorted(hf_import.ARCHITECTURES)})"),
    ("wav2vec2_ctc", "hidden_act", "relu", "hidden_act='relu' is not supported (expected 'gelu')"),
    ("wav2vec2_ctc", "feat_extract_activation", "gelu_new",
     "feat_extract_activation='gelu_new' is not supported (expected 'gelu')"),
    ("wav2vec2_ctc", "layer_norm_eps", 1e-6, "layer_norm_eps=1e-06 is not supported (expected 1e-05)"),
    ("wav2vec2_ctc", "add_adapter", True, "add_adapter=True is not supported (expected False)"),
    ("wav2vec2_ctc", "adapter_attn_dim", 16, "adapter_attn_dim=16 is not supported (expected None)"),
    ("wav2vec2_ctc", "use_weighted_layer_sum", True, "use_weighted_layer_sum=True is not supported on a CTC model "
                                                     "(expected False: the output layer reads the last layer)"),
    ("wav2vec2_ctc", "num_conv_pos_embedding_groups", 3,
     "num_conv_pos_embedding_groups=3 does not divide hidden_size=32 (expected a divisor)"),
    ("wav2vec2_ctc", "feat_extract_norm", "batch",
     "feat_extract_norm='batch' is not supported (expected one of ['group', 'layer'])"),
    ("hubert", "feat_proj_layer_norm", False, "feat_proj_layer_norm=False is not supported (expected True)"),
    ("hubert", "conv_pos_batch_norm", True, "conv_pos_batch_norm=True is not supported (expected False)"),
])
def test_a_setting_the_encoder_cannot_compute_is_refused(folders, tmp_path, capsys, name, field, value, expected):
    folder = edited(folders, name, tmp_path, **{field: value})
    assert import_hf.main([folder, str(tmp_path / "out")]) == 2
    refused(capsys, f"{folder}/config.json: {expected}")
    assert not os.path.exists(tmp_path / "out")


def test_normalisation_comes_from_the_feature_extractor_or_the_user(folders, tmp_path, capsys):
    folder = edited(folders, "hubert", tmp_path, file="preprocessor_config.json", do_normalize=True)
    assert read_checkpoint(os.path.join(imports(folder, tmp_path / "a"), "model.pt")).normalize is True
    assert import_hf.main([folder, str(tmp_path / "b"), "--no-normalize"]) == 2
    refused(capsys, f"{folder}/preprocessor_config.json: do_normalize=True but normalize=False was given "
                    "(expected the same, or normalize left out)")
    os.remove(os.path.join(folder, "preprocessor_config.json"))
    assert import_hf.main([folder, str(tmp_path / "b")]) == 2
    refused(capsys, f"{folder}: has neither preprocessor_config.json nor a feature_extractor in processor_config.json, "
                    "so the audio normalisation of the model is unknown (expected one, or normalize given: "
                    "hjprune-import-hf --normalize / --no-normalize)")
    assert read_checkpoint(os.path.join(imports(folder, tmp_path / "b", "--no-normalize"), "model.pt")).normalize is False


def test_a_folder_saved_through_the_processor(folders, tmp_path, capsys):
    """transformers 5's Wav2Vec2Processor.save_pretrained writes processor_config.json, the feature extractor's
    settings nested in it, and no preprocessor_config.json: the import reads them where transformers'
    AutoFeatureExtractor does (the nested ones first, then preprocessor_config.json)."""
    tr = import_transformers()
    folder = tmp_path / "hf"
    shutil.copytree(folders["wav2vec2_ctc"], folder)
    for name in ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(folder / name):
            os.remove(folder / name)
    extractor = tr.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    tr.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tr.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
                         ).save_pretrained(folder)
    nested = json.load(open(folder / "processor_config.json"))
    assert not os.path.exists(folder / "preprocessor_config.json") and nested["feature_extractor"]["do_normalize"]
    out = imports(folder, tmp_path / "a")
    assert read_checkpoint(os.path.join(out, "model.pt")).normalize is True
    assert tr.AutoFeatureExtractor.from_pretrained(folder).do_normalize is True
    assert open(os.path.join(out, "dict.ltr.txt")).read().split()[::2] == list(VOCAB)[4:]
    assert import_hf.main([str(folder), str(tmp_path / "b"), "--no-normalize"]) == 2
    refused(capsys, f"{folder}/processor_config.json: feature_extractor.do_normalize=True but normalize=False was "
                    "given (expected the same, or normalize left out)")
    # Both files: the nested settings win, as in transformers; a processor_config.json without them does not count.
    with open(folder / "preprocessor_config.json", "w") as f:
        json.dump(dict(nested["feature_extractor"], do_normalize=False), f)
    assert read_checkpoint(os.path.join(imports(folder, tmp_path / "a", "--overwrite"), "model.pt")).normalize is True
    with open(folder / "processor_config.json", "w") as f:
        json.dump({"processor_class": "Wav2Vec2Processor"}, f)
    assert read_checkpoint(os.path.join(imports(folder, tmp_path / "a", "--overwrite"), "model.pt")).normalize is False
    assert tr.AutoFeatureExtractor.from_pretrained(folder).do_normalize is False
    with open(folder / "processor_config.json", "w") as f:
        json.dump(dict(nested, feature_extractor=dict(nested["feature_extractor"], sampling_rate=8000)), f)
    assert import_hf.main([str(folder), str(tmp_path / "b")]) == 2
    refused(capsys, f"{folder}/processor_config.json: feature_extractor.sampling_rate=8000 is not supported "
                    "(expected 16000)")


def test_audio_or_weights_other_than_described_are_refused(folders, tmp_path, capsys):
    folder = edited(folders, "hubert", tmp_path, file="preprocessor_config.json", sampling_rate=8000)
    assert import_hf.main([folder, str(tmp_path / "out")]) == 2
    refused(capsys, f"{folder}/preprocessor_config.json: sampling_rate=8000 is not supported (expected 16000)")
    shutil.rmtree(folder)
    folder = edited(folders, "hubert", tmp_path, num_hidden_layers=1)
    assert import_hf.main([folder, str(tmp_path / "out")]) == 2
    refused(capsys, f"{folder}: the weights hold 16 parameters this import does not use (encoder.layers.1.attention."
                    "k_proj.bias, encoder.layers.1.attention.k_proj.weight, encoder.layers.1.attention.out_proj.bias, "
                    "...); expected only what config.json describes")


def test_another_word_delimiter_becomes_fairseqs(folders, tmp_path, capsys):
    """A delimiter other than '|' is renamed '|' (both print it as a space); refused when '|' is another token."""
    folder = edited(folders, "wav2vec2_ctc", tmp_path, file="tokenizer_config.json", word_delimiter_token="Q")
    assert import_hf.main([folder, str(tmp_path / "out")]) == 2
    refused(capsys, f"{folder}/tokenizer_config.json: word_delimiter_token='Q' while '|' is another token (expected "
                    "'|', which fairseq's post_process=letter prints as a space)")
    vocab = {("_" if t == "|" else t): i for t, i in VOCAB.items()}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    config = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    config.update(word_delimiter_token="_", added_tokens_decoder={})
    json.dump(config, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    out = imports(folder, tmp_path / "out")
    assert open(os.path.join(out, "dict.ltr.txt")).read().split()[::2] == list(VOCAB)[4:]  # '|' where '_' was


def test_a_vocabulary_with_other_specials(folders, tmp_path, capsys):
    """The blank is config.pad_token_id whatever the pad token is called; a fairseq special without a
    transformers token gets a row that never wins; a token named like a fairseq special is refused."""
    from safetensors.torch import load_file

    tokens = ["|"] + LETTERS[:-1] + ["[UNK]", "[PAD]", "@", "#"]  # as transformers' fine-tuning recipe builds it
    folder = edited(folders, "wav2vec2_ctc", tmp_path, pad_token_id=tokens.index("[PAD]"))
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    config = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    config.update(unk_token="[UNK]", pad_token="[PAD]", added_tokens_decoder={})
    json.dump(config, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    ckpt = read_checkpoint(os.path.join(imports(folder, tmp_path / "out"), "model.pt"))
    assert ckpt.model_cfg["target_dictionary"]["symbols"] == ["<s>", "<pad>", "</s>", "<unk>", "|", *LETTERS[:-1],
                                                              "@", "#"]
    hf = load_file(os.path.join(folder, "model.safetensors"))
    rows = [tokens.index("[PAD]"), None, None, tokens.index("[UNK]"), *range(len(LETTERS)), len(tokens) - 2,
            len(tokens) - 1]
    for i, row in enumerate(rows):
        weight, bias = ckpt.head_state["weight"][i], ckpt.head_state["bias"][i]
        if row is None:  # fairseq's <pad> and </s>: no transformers token
            assert not weight.any() and bias.item() == hf_import.NEVER_WINS == torch.tensor(-1e4).half().item()
        else:
            assert torch.equal(weight, hf["lm_head.weight"][row]) and bias == hf["lm_head.bias"][row]
    tokens[-1] = "</s>"  # not the tokenizer's eos token here: an ordinary token fairseq cannot hold
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    config.update(eos_token="[EOS]")
    json.dump(config, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    assert import_hf.main([folder, str(tmp_path / "out"), "--overwrite"]) == 2
    refused(capsys, f"{folder}/vocab.json: token '</s>' (id 31) cannot be a fairseq dictionary symbol (expected one "
                    "token without whitespace, unlike the others and fairseq's ['<s>', '<pad>', '</s>', '<unk>'])")


def test_pytorch_bin_with_the_older_weight_norm_spelling(folders, tmp_path):
    """pytorch_model.bin with weight_g/weight_v (transformers before torch's parametrizations) imports the
    same weights as model.safetensors with parametrizations.weight.original0/1."""
    from safetensors.torch import load_file

    legacy = tmp_path / "hf"
    shutil.copytree(folders["hubert"], legacy)
    weights = load_file(str(legacy / "model.safetensors"))
    renamed = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                   "weight_v"): v
               for k, v in weights.items()}
    assert renamed.keys() != weights.keys()
    torch.save(renamed, legacy / "pytorch_model.bin")
    os.remove(legacy / "model.safetensors")
    a = torch.load(os.path.join(imports(folders["hubert"], tmp_path / "a"), "model.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(imports(legacy, tmp_path / "b"), "model.pt"), weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_output_folder_keeps_what_the_tool_did_not_write(folders, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert import_hf.main([folders["wav2vec2_ctc"], str(out)]) == 2
    refused(capsys, f"{out}: holds files this tool did not write (notes.txt); choose a new or empty folder")
    os.remove(out / "notes.txt")
    imports(folders["wav2vec2_ctc"], out)
    assert sorted(os.listdir(out)) == [f".{TOOL}", "dict.ltr.txt", "model.pt"]
    assert import_hf.main([folders["hubert"], str(out)]) == 2
    refused(capsys, f"{out}: already holds an imported model (pass --overwrite to replace it)")
    imports(folders["hubert"], out, "--overwrite")  # a model without a CTC head: the old dictionary goes too
    assert sorted(os.listdir(out)) == [f".{TOOL}", "model.pt"]
    assert json.load(open(out / f".{TOOL}"))["entries"] == ["model.pt"]
    assert read_checkpoint(str(out / "model.pt")).head_state is None
    assert os.listdir(tmp_path) == ["out"]  # no temporary folder left beside it


def test_defaults_are_transformers():
    """A field missing from an older config.json takes transformers' default: the values hf_import assumes."""
    tr = import_transformers()
    for cls in (tr.Wav2Vec2Config, tr.HubertConfig, tr.WavLMConfig):
        config = cls()
        for field, (expected, _) in hf_import.FIXED.items():
            assert getattr(config, field, expected) == expected, (cls.__name__, field)
        for field, value in hf_import.DEFAULTS.items():
            assert getattr(config, field, value) == value, (cls.__name__, field)
    tokenizer = inspect.signature(tr.Wav2Vec2CTCTokenizer.__init__).parameters
    assert {k: tokenizer[k].default for k in hf_import.TOKENIZER_DEFAULTS} == hf_import.TOKENIZER_DEFAULTS
    extractor = tr.Wav2Vec2FeatureExtractor()
    assert {k: getattr(extractor, k) for k in hf_import.PREPROCESSOR_DEFAULTS} == hf_import.PREPROCESSOR_DEFAULTS


# ---- every stage ------------------------------------------------------------------------------------
def test_prune_export_final_and_generate_from_an_import(ctc_import, tmp_path):
    _, _, out = ctc_import
    data = make_letter_corpus(str(tmp_path / "data"), {"train": 8, "valid": 4})
    shutil.copy(os.path.join(out, "dict.ltr.txt"), os.path.join(data, "dict.ltr.txt"))
    tiny = os.path.join(EXAMPLES, "tiny")
    train_ok(tiny, "prune", data, os.path.join(out, "model.pt"), tmp_path / "prune", [
        "optimization.max_update=4", "criterion.sparsity_warmup_updates=2", "dataset.validate_interval_updates=0",
        "common.log_interval=1"])
    slim = str(tmp_path / "slim.pt")
    assert export_cli.main([str(tmp_path / "prune" / "checkpoint_last.pt"), slim]) == 0
    train_ok(tiny, "final", data, slim, tmp_path / "final", ["optimization.max_update=2"])
    final, state = load_model(str(tmp_path / "final" / "checkpoint_last.pt"))
    assert state["cfg"]["model"]["target_dictionary"]["symbols"][4:] == list(VOCAB)[4:]
    r = fairseq_generate(data, str(tmp_path / "final" / "checkpoint_last.pt"), subset="valid")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(re.findall(r"^D-\d+\t", r.stdout, re.M)) == 4
