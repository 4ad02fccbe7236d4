"""Read Hugging Face ``transformers`` checkpoints of wav2vec2, HuBERT and WavLM, and write them as hjprune ones.

This is the only module that knows transformers' configuration field names and parameter key names,
as ``fairseq_import`` is for fairseq's (one importer per foreign format: the layout of torchaudio's
``utils/import_huggingface.py``; the code is this project's). A folder written by ``save_pretrained``
holds ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``, either possibly
sharded with an ``.index.json``) and, for a CTC model, its tokenizer (``vocab.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) and feature extractor: ``preprocessor_config.json``
(``Wav2Vec2FeatureExtractor.save_pretrained``, and ``Wav2Vec2Processor``'s before transformers 5) or, nested
under ``feature_extractor``, ``processor_config.json`` (``Wav2Vec2Processor.save_pretrained`` in transformers 5;
:func:`feature_extractor_settings`). ``config.json`` is read as JSON and the weights as tensors: no
transformers class is built, so importing needs only ``safetensors`` (the ``hf`` extra).

What transformers would compute and :class:`~hjprune_fairseq.core.encoder.Wav2Vec2Encoder` does not
is refused with one line naming the file, the field and the value expected (:func:`check_config`).
transformers counts padded frames with the conv output-length formula in all three families, so an
imported encoder has ``frame_padding="wav2vec2"`` (fairseq's HuBERT uses another rule).

CTC vocabulary. transformers' blank is ``config.pad_token_id`` (its ``<pad>``); the blank of fairseq's
CTC criterion and of this plugin's decoding is the dictionary's index 0 (``<s>``, ``Dictionary.bos()``).
The two conventions swap roles (:data:`FAIRSEQ_SPECIALS`, as transformers' own conversion of fairseq
checkpoints does): fairseq's ``<s>`` row takes transformers' pad (blank) row, fairseq's ``<pad>`` row
transformers' ``<s>``, ``</s>`` and ``<unk>`` their namesakes; fairseq-generate strips ``<s>``, ``<pad>``
and ``</s>`` from its output. Every other token is a line of ``dict.ltr.txt``, in
transformers' id order, so fairseq's argmax picks the same token on every frame as transformers';
a fairseq special with no transformers token gets a row that never wins (weight 0, bias
:data:`NEVER_WINS`). The word delimiter must print as a space in both: fairseq's ``post_process=letter``
turns ``|`` into one, so another delimiter is renamed ``|`` (refused when ``|`` is a different token).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..core.spec import EncoderSpec
from ..plugin.fairseq_import import ImportedCheckpoint, pos_conv_state, weight_norm_pair
from .hf_format import (AUDIO, CONFIG, DELIMITER, FAIRSEQ_SPECIALS, PREPROCESSOR, PREPROCESSOR_DEFAULTS,
                        TOKENIZER_DEFAULTS, VOCAB, exported_encoder_state, exported_reference_spec)

logger = logging.getLogger(__name__)

# transformers 5's ProcessorMixin.save_pretrained writes one processor_config.json with each sub-processor's
# settings nested under its attribute name; AutoFeatureExtractor looks under these keys, in this order, first.
PROCESSOR = "processor_config.json"
NESTED_FEATURE_EXTRACTOR = ("feature_extractor", "audio_processor")
TOKENIZER_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # later ones win
ADDED_TOKENS = "added_tokens.json"  # older tokenizers' tokens beyond vocab.json
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # each may be sharded: NAME.index.json

# architecture -> (family, has a CTC head); the family is also transformers' ``base_model_prefix``, under
# which a model with a head keeps the encoder's weights.
ARCHITECTURES: Dict[str, Tuple[str, bool]] = {
    "Wav2Vec2Model": ("wav2vec2", False),
    "Wav2Vec2ForPreTraining": ("wav2vec2", False),
    "Wav2Vec2ForCTC": ("wav2vec2", True),
    "HubertModel": ("hubert", False),
    "HubertForCTC": ("hubert", True),
    "WavLMModel": ("wavlm", False),
    "WavLMForCTC": ("wavlm", True),
    # what hjprune-export --hf writes: hf_export reads its encoder weights (not under the family's prefix)
    "HJPruneModel": ("hjprune", False),
    "HJPruneForCTC": ("hjprune", True),
}
FAMILIES = ("wav2vec2", "hubert", "wavlm")
UNUSED_HEADS = ("quantizer.", "project_hid.", "project_q.")  # Wav2Vec2ForPreTraining's contrastive head

# Fields this encoder computes one way: field -> (the value it needs, families whose transformers code
# reads the field). A field missing from config.json takes transformers' default, which is that value
# (tests/test_hf_import.py checks the defaults against the installed config classes).
FIXED: Dict[str, Tuple[Any, Tuple[str, ...]]] = {
    "feat_extract_activation": ("gelu", FAMILIES),
    "hidden_act": ("gelu", FAMILIES),
    "layer_norm_eps": (1e-5, FAMILIES),  # the encoder's LayerNorms use 1e-5 (fairseq's)
    "add_adapter": (False, FAMILIES),
    "adapter_attn_dim": (None, ("wav2vec2", "hubert")),
    "feat_proj_layer_norm": (True, ("hubert",)),
    "conv_pos_batch_norm": (False, ("hubert",)),
}
# transformers' defaults of the other optional fields read here (checked by the same test).
DEFAULTS: Dict[str, Any] = {
    "feat_extract_norm": "group", "conv_bias": False, "do_stable_layer_norm": False,
    "use_weighted_layer_sum": False, "pad_token_id": 0, "num_buckets": 320, "max_bucket_distance": 800,
}
EXTRACTOR_MODES = {"group": "default", "layer": "layer_norm"}  # feat_extract_norm -> EncoderSpec.extractor_mode
NEVER_WINS = -1.0e4  # bias of an output row without a token: far below any logit, and finite in fp16


# ---- files ---------------------------------------------------------------------------------------
def read_json(path: str) -> Dict[str, Any]:
    """A JSON object file; FileNotFoundError / ValueError naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (expected a Hugging Face model folder written by save_pretrained)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(folder: str) -> Dict[str, Any]:
    """``config.json`` of a model folder."""
    return read_json(os.path.join(folder, CONFIG))


def _load_file(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(f"{path}: reading safetensors needs the Hugging Face extra: "
                              f"pip install 'hjprune-fairseq[hf]' ({e})") from e
        loader = load_file
    else:
        def loader(p):
            return torch.load(p, map_location="cpu", weights_only=True)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (a weights file named by the folder's index)")
    try:
        weights = loader(path)
    except Exception as e:  # safetensors and torch raise many types for a bad file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable weights file ({type(e).__name__}: {first})") from e
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return weights


def load_weights(folder: str) -> Dict[str, torch.Tensor]:
    """The weights of a model folder, whole or sharded (``NAME.index.json``), floating tensors as fp32."""
    for name in WEIGHT_FILES:
        single, index = os.path.join(folder, name), os.path.join(folder, name + ".index.json")
        if os.path.isfile(single):
            weights = _load_file(single)
            break
        if os.path.isfile(index):
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: has no 'weight_map' object (expected a sharded checkpoint's index)")
            weights = {}
            for shard in sorted(set(weight_map.values())):
                weights.update(_load_file(os.path.join(folder, shard)))
            break
    else:
        raise FileNotFoundError(f"{folder}: holds no weights (expected one of "
                                f"{', '.join(n + s for n in WEIGHT_FILES for s in ('', '.index.json'))})")
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


# ---- config -> EncoderSpec -----------------------------------------------------------------------
def architecture(config: Dict[str, Any], folder: str) -> Tuple[str, str, bool]:
    """(architecture, family, has a CTC head) of ``config``."""
    archs = config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: architectures={archs!r} is not supported "
                         f"(expected one of {sorted(ARCHITECTURES)})")
    return (archs[0], *ARCHITECTURES[archs[0]])


def _need(config: Dict[str, Any], key: str, folder: str) -> Any:
    if config.get(key) is None:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: lacks '{key}' (expected a config.json of transformers)")
    return config[key]


def check_config(config: Dict[str, Any], folder: str) -> None:
    """Refuse every field whose value changes what transformers computes from what the encoder does."""
    path = os.path.join(folder, CONFIG)
    _, family, ctc = architecture(config, folder)
    for field, (expected, families) in FIXED.items():
        value = config.get(field, expected)
        if family in families and value != expected:
            raise ValueError(f"{path}: {field}={value!r} is not supported (expected {expected!r})")
    norm = config.get("feat_extract_norm", DEFAULTS["feat_extract_norm"])
    if norm not in EXTRACTOR_MODES:
        raise ValueError(f"{path}: feat_extract_norm={norm!r} is not supported (expected one of {sorted(EXTRACTOR_MODES)})")
    if ctc and config.get("use_weighted_layer_sum", DEFAULTS["use_weighted_layer_sum"]):
        raise ValueError(f"{path}: use_weighted_layer_sum=True is not supported on a CTC model "
                         "(expected False: the output layer reads the last layer)")
    hidden = int(_need(config, "hidden_size", folder))
    for field in ("num_attention_heads", "num_conv_pos_embedding_groups"):
        n = int(_need(config, field, folder))
        if n <= 0 or hidden % n:
            raise ValueError(f"{path}: {field}={n} does not divide hidden_size={hidden} (expected a divisor)")
    lengths = {k: len(_need(config, k, folder)) for k in ("conv_dim", "conv_kernel", "conv_stride")}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: conv_dim, conv_kernel and conv_stride have {lengths} entries (expected the same number)")


def hf_spec(config: Dict[str, Any], folder: str) -> EncoderSpec:
    """The EncoderSpec of a checked transformers config (:func:`check_config`)."""
    check_config(config, folder)
    _, family, _ = architecture(config, folder)
    rel_pos = {}
    if family == "wavlm":
        rel_pos = dict(rel_pos_buckets=int(config.get("num_buckets", DEFAULTS["num_buckets"])),
                       rel_pos_max_distance=int(config.get("max_bucket_distance", DEFAULTS["max_bucket_distance"])))
    conv = list(zip(*(map(int, _need(config, k, folder)) for k in ("conv_dim", "conv_kernel", "conv_stride"))))
    try:
        return EncoderSpec.uniform(
            conv_layers=conv,
            embed_dim=int(_need(config, "hidden_size", folder)),
            num_layers=int(_need(config, "num_hidden_layers", folder)),
            num_heads=int(_need(config, "num_attention_heads", folder)),
            ffn_dim=int(_need(config, "intermediate_size", folder)),
            pos_conv_kernel=int(_need(config, "num_conv_pos_embeddings", folder)),
            pos_conv_groups=int(_need(config, "num_conv_pos_embedding_groups", folder)),
            conv_bias=bool(config.get("conv_bias", DEFAULTS["conv_bias"])),
            extractor_mode=EXTRACTOR_MODES[config.get("feat_extract_norm", DEFAULTS["feat_extract_norm"])],
            layer_norm_first=bool(config.get("do_stable_layer_norm", DEFAULTS["do_stable_layer_norm"])),
            frame_padding="wav2vec2",  # transformers' padded frames: the conv output-length formula, every family
            **rel_pos,
        )
    except ValueError as e:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: {e}") from e


# ---- weights -> Wav2Vec2Encoder state --------------------------------------------------------------
def hf_encoder_state(config: Dict[str, Any], weights: Dict[str, torch.Tensor], folder: str
                     ) -> Tuple[EncoderSpec, Dict[str, torch.Tensor]]:
    """(spec, state dict of :class:`Wav2Vec2Encoder`) of a transformers model's ``config`` and ``weights``;
    ``folder`` is named in errors. Every weight is used, except a head (``lm_head``, the pre-training
    quantizer and projections); a missing or misshapen one is an error."""
    from ..core.encoder import Wav2Vec2Encoder

    if architecture(config, folder)[1] == "hjprune":
        return exported_encoder_state(config, weights, folder)
    spec = hf_spec(config, folder)
    _, family, ctc = architecture(config, folder)
    prefix = f"{family}." if any(k.startswith(f"{family}.") for k in weights) else ""
    out: Dict[str, torch.Tensor] = {}
    used = set()

    def take(src: str, dst: str) -> None:
        key = prefix + src
        if key not in weights:
            raise ValueError(f"{folder}: the weights lack '{key}' (expected a {spec.num_layers}-layer {family} "
                             "model as config.json describes)")
        out[dst] = weights[key]
        used.add(key)

    for i in range(len(spec.conv_layers)):
        take(f"feature_extractor.conv_layers.{i}.conv.weight", f"feature_extractor.convs.{i}.weight")
        if spec.conv_bias:
            take(f"feature_extractor.conv_layers.{i}.conv.bias", f"feature_extractor.convs.{i}.bias")
        if spec.extractor_mode == "layer_norm" or i == 0:  # GroupNorm (first layer only) or LayerNorm (every layer)
            for p in ("weight", "bias"):
                take(f"feature_extractor.conv_layers.{i}.layer_norm.{p}", f"feature_extractor.norms.{i}.{p}")
    for p in ("weight", "bias"):
        take(f"feature_projection.layer_norm.{p}", f"layer_norm.{p}")
        take(f"feature_projection.projection.{p}", f"post_extract_proj.{p}")
        take(f"encoder.layer_norm.{p}", f"encoder_layer_norm.{p}")
    if prefix + "masked_spec_embed" in weights:
        take("masked_spec_embed", "mask_emb")
    else:  # transformers builds it only for a config with masking (mask_time_prob or mask_feature_prob > 0)
        logger.info("%s has no masked_spec_embed: mask_emb starts uniform in [0, 1), as transformers initialises it",
                    folder)
        out["mask_emb"] = torch.rand(spec.embed_dim, generator=torch.Generator().manual_seed(0))
    take("encoder.pos_conv_embed.conv.bias", "pos_conv.bias")
    g, v, keys = weight_norm_pair(weights, prefix + "encoder.pos_conv_embed.conv.", folder)
    used.update(keys)
    out.update(pos_conv_state(g, v, spec))
    if spec.has_rel_pos:
        # One bias table, kept by transformers in layer 0 and shared by every layer.
        take("encoder.layers.0.attention.rel_attn_embed.weight", "rel_pos_embed.weight")
    for i in range(spec.num_layers):
        src, dst = f"encoder.layers.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                take(f"{src}attention.{proj}.{p}", f"{dst}self_attn.{proj}.{p}")
            take(f"{src}layer_norm.{p}", f"{dst}self_attn_layer_norm.{p}")
            take(f"{src}feed_forward.intermediate_dense.{p}", f"{dst}ffn.fc1.{p}")
            take(f"{src}feed_forward.output_dense.{p}", f"{dst}ffn.fc2.{p}")
            take(f"{src}final_layer_norm.{p}", f"{dst}final_layer_norm.{p}")
            if spec.has_rel_pos:
                take(f"{src}attention.gru_rel_pos_linear.{p}", f"{dst}self_attn.rel_gate.{p}")
        if spec.has_rel_pos:
            take(f"{src}attention.gru_rel_pos_const", f"{dst}self_attn.rel_gate_const")
            out[f"{dst}self_attn.rel_gate_const"] = out[f"{dst}self_attn.rel_gate_const"].reshape(-1)  # (1, H, 1, 1) -> (H,)
    heads = ("lm_head.",) if ctc else UNUSED_HEADS
    unused = sorted(k for k in weights if k not in used and not k.startswith(heads))
    if unused:
        raise ValueError(f"{folder}: the weights hold {len(unused)} parameters this import does not use "
                         f"({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}); expected only what "
                         "config.json describes")
    # The buffers the encoder builds itself (WavLM's head_ids, rel_gate_index): its own, dense values.
    encoder = Wav2Vec2Encoder(spec)
    own = encoder.state_dict()
    for name, _ in encoder.named_buffers():
        if name in own and name not in out:
            out[name] = own[name]
    problems = [f"'{k}' missing" for k in own if k not in out] + [f"'{k}' unexpected" for k in out if k not in own]
    problems += [f"'{k}' has shape {tuple(out[k].shape)}, expected {tuple(own[k].shape)}"
                 for k in own if k in out and out[k].shape != own[k].shape]
    if problems:
        raise ValueError(f"{folder}: the weights do not fit the encoder config.json describes: "
                         f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}")
    return spec, out


# ---- CTC vocabulary -------------------------------------------------------------------------------
@dataclass
class CtcVocabulary:
    """A transformers CTC output layer in fairseq's terms.

    symbols: the fairseq dictionary's symbols in index order, its specials first (what
        ``Dictionary.load`` of :attr:`lines` makes).
    rows: per fairseq index, the transformers output row (token id) it takes; None: a row that never wins.
    """

    symbols: List[str]
    rows: List[Optional[int]]
    nspecial: int

    @property
    def lines(self) -> List[str]:
        """The symbols of ``dict.ltr.txt`` (fairseq adds its specials itself)."""
        return self.symbols[self.nspecial:]


def _token(value: Any) -> Any:
    """A special token of a tokenizer file: a string, or an AddedToken dict with its ``content``."""
    return value.get("content") if isinstance(value, dict) else value


def tokenizer_settings(folder: str) -> Dict[str, Any]:
    """The tokenizer fields read here, from the folder's tokenizer files or Wav2Vec2CTCTokenizer's defaults."""
    settings = dict(TOKENIZER_DEFAULTS)
    for name in TOKENIZER_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            data = read_json(path)
            settings.update({k: _token(data[k]) for k in TOKENIZER_DEFAULTS if k in data})
    return settings


def token_ids(folder: str) -> Dict[int, str]:
    """id -> token of ``vocab.json`` and the tokenizer's added tokens."""
    path = os.path.join(folder, VOCAB)
    by_id: Dict[int, str] = {}
    sources = [(path, read_json(path))]
    added = os.path.join(folder, ADDED_TOKENS)
    if os.path.isfile(added):
        sources.append((added, read_json(added)))
    config = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(config):
        decoder = read_json(config).get("added_tokens_decoder") or {}
        sources.append((config, {_token(t): int(i) for i, t in decoder.items()}))
    for source, tokens in sources:
        for token, i in tokens.items():
            if not isinstance(i, int) or isinstance(i, bool):
                raise ValueError(f"{source}: token {token!r} has id {i!r} (expected an integer)")
            if by_id.setdefault(i, token) != token:
                raise ValueError(f"{source}: id {i} is {token!r} here but {by_id[i]!r} elsewhere (expected one token per id)")
    return by_id


def ctc_vocabulary(folder: str, config: Dict[str, Any], rows: int) -> CtcVocabulary:
    """How the ``rows`` outputs of a transformers CTC head become a fairseq dictionary (module docstring)."""
    from fairseq.data import Dictionary

    vocab_path = os.path.join(folder, VOCAB)
    tok = tokenizer_settings(folder)
    by_id = {i: t for i, t in token_ids(folder).items() if i < rows}  # larger ids are never predicted
    missing = [i for i in range(rows) if i not in by_id]
    if missing:
        raise ValueError(f"{vocab_path}: no token has id {', '.join(map(str, missing[:5]))}"
                         f"{', ...' if len(missing) > 5 else ''} of the {rows} outputs of the CTC head "
                         "(expected a token for every output)")
    ids = {t: i for i, t in by_id.items()}
    blank = config.get("pad_token_id", DEFAULTS["pad_token_id"])
    if not isinstance(blank, int) or not 0 <= blank < rows:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: pad_token_id={blank!r} is not an output of the CTC head "
                         f"(expected the blank's id in 0..{rows - 1})")
    if tok["pad_token"] in ids and ids[tok["pad_token"]] != blank:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: pad_token_id={blank} but {VOCAB} gives the pad token "
                         f"{tok['pad_token']!r} id {ids[tok['pad_token']]} (expected the same: it is the CTC blank)")
    if tok["replace_word_delimiter_char"] != " ":
        raise ValueError(f"{folder}/tokenizer_config.json: replace_word_delimiter_char="
                         f"{tok['replace_word_delimiter_char']!r} is not supported (expected ' ': fairseq's "
                         "post_process=letter prints the delimiter as a space)")
    d = Dictionary()
    fairseq_rows: Dict[int, int] = {}
    for index, symbol in enumerate(d.symbols[:d.nspecial]):
        field = FAIRSEQ_SPECIALS[symbol]
        row = blank if field == "pad_token" else ids.get(tok[field])  # the blank: config.pad_token_id
        if row is not None and row not in fairseq_rows.values():
            fairseq_rows[index] = row
    delimiter = tok["word_delimiter_token"]
    if delimiter != DELIMITER and delimiter in ids and DELIMITER in ids:
        raise ValueError(f"{folder}/tokenizer_config.json: word_delimiter_token={delimiter!r} while {DELIMITER!r} is "
                         f"another token (expected {DELIMITER!r}, which fairseq's post_process=letter prints as a space)")
    symbols = list(d.symbols)
    row_of: List[Optional[int]] = [fairseq_rows.get(i) for i in range(len(symbols))]
    for i in range(rows):
        if i in fairseq_rows.values():
            continue
        symbol = DELIMITER if by_id[i] == delimiter else by_id[i]
        if not symbol or symbol.split() != [symbol] or symbol in symbols:
            raise ValueError(f"{vocab_path}: token {by_id[i]!r} (id {i}) cannot be a fairseq dictionary symbol "
                             "(expected one token without whitespace, unlike the others and fairseq's "
                             f"{d.symbols[:d.nspecial]})")
        symbols.append(symbol)
        row_of.append(i)
    if tok["do_lower_case"]:
        logger.warning("%s: do_lower_case: transformers lower-cases its decoded text; fairseq prints the symbols "
                       "as vocab.json has them (the case of the plugin's letter targets)", vocab_path)
    if DELIMITER not in symbols:
        logger.warning("%s has no word delimiter %r: the model never predicts a space", vocab_path, delimiter)
    return CtcVocabulary(symbols, row_of, d.nspecial)


def ctc_head(weight: torch.Tensor, bias: torch.Tensor, vocab: CtcVocabulary) -> Dict[str, torch.Tensor]:
    """The output layer in fairseq's order: row i is transformers' row ``vocab.rows[i]``, or weight 0 and
    bias NEVER_WINS. weight (V_hf, d), bias (V_hf,) -> {"weight": (V, d), "bias": (V,)}."""
    w = weight.new_zeros(len(vocab.rows), weight.shape[1])
    b = bias.new_full((len(vocab.rows),), NEVER_WINS)
    for i, row in enumerate(vocab.rows):
        if row is not None:
            w[i], b[i] = weight[row], bias[row]
    return {"weight": w, "bias": b}


# ---- the whole folder ----------------------------------------------------------------------------
def feature_extractor_settings(folder: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(where, settings) of the folder's feature extractor, found as transformers 5's ``AutoFeatureExtractor``
    finds it: nested in ``processor_config.json`` under ``feature_extractor`` (or ``audio_processor``), else
    ``preprocessor_config.json``; None when the folder has neither. ``where`` names the file, and the key, in
    errors (``.../processor_config.json: feature_extractor.``)."""
    processor = os.path.join(folder, PROCESSOR)
    if os.path.isfile(processor):
        data = read_json(processor)
        for key in NESTED_FEATURE_EXTRACTOR:
            if key in data:
                if not isinstance(data[key], dict):
                    raise ValueError(f"{processor}: {key} is a {type(data[key]).__name__} (expected an object: the "
                                     "feature extractor's settings)")
                return f"{processor}: {key}.", data[key]
    path = os.path.join(folder, PREPROCESSOR)
    if os.path.isfile(path):
        return f"{path}: ", read_json(path)
    return None


def read_normalize(folder: str, normalize: Optional[bool]) -> bool:
    """Whether the model expects normalised audio: ``do_normalize`` of the feature extractor's settings
    (:func:`feature_extractor_settings`), or ``normalize`` (which must agree with them, if both are given)."""
    found = feature_extractor_settings(folder)
    if found is None:
        if normalize is None:
            raise ValueError(f"{folder}: has neither {PREPROCESSOR} nor a feature_extractor in {PROCESSOR}, so the "
                             "audio normalisation of the model is unknown (expected one, or normalize given: "
                             "hjprune-import-hf --normalize / --no-normalize)")
        return bool(normalize)
    where, pre = found
    for field, expected in AUDIO.items():
        value = pre.get(field, PREPROCESSOR_DEFAULTS[field])
        if value != expected:
            raise ValueError(f"{where}{field}={value!r} is not supported (expected {expected!r})")
    do = bool(pre.get("do_normalize", PREPROCESSOR_DEFAULTS["do_normalize"]))
    if normalize is not None and bool(normalize) != do:
        raise ValueError(f"{where}do_normalize={do} but normalize={bool(normalize)} was given "
                         "(expected the same, or normalize left out)")
    return do


def read_hf(folder: str, normalize: Optional[bool] = None) -> ImportedCheckpoint:
    """A transformers model folder as an :class:`ImportedCheckpoint` (kind ``huggingface``): the encoder,
    and for a CTC model its output layer in fairseq's order, with ``model_cfg["target_dictionary"]``
    (``{"path": vocab.json, "symbols": [...]}``) the fairseq dictionary it indexes; ``model_cfg["hf_config"]``
    is ``config.json``, ``model_cfg["reference_spec"]`` the dense ancestor's spec of a folder ``hjprune-export --hf``
    wrote. ``normalize``: see :func:`read_normalize`."""
    config = read_config(folder)
    arch, _, ctc = architecture(config, folder)
    norm = read_normalize(folder, normalize)
    weights = load_weights(folder)
    spec, state = hf_encoder_state(config, weights, folder)
    model_cfg: Dict[str, Any] = {"hf_config": config}
    reference = exported_reference_spec(config, folder)
    if reference is not None:  # an export of this project: its dense ancestor stays the reference
        model_cfg["reference_spec"] = reference
    head = None
    if ctc:
        if "lm_head.weight" not in weights or "lm_head.bias" not in weights:
            raise ValueError(f"{folder}: the weights lack lm_head.weight / lm_head.bias (expected the CTC head of {arch})")
        weight, bias = weights["lm_head.weight"], weights["lm_head.bias"]
        if weight.shape[1:] != (spec.embed_dim,):
            raise ValueError(f"{folder}: lm_head.weight has shape {tuple(weight.shape)}, expected (vocab, {spec.embed_dim})")
        vocab = ctc_vocabulary(folder, config, weight.shape[0])
        head = ctc_head(weight, bias, vocab)
        model_cfg["target_dictionary"] = {"path": os.path.join(folder, VOCAB), "symbols": vocab.symbols}
    return ImportedCheckpoint(folder, "huggingface", arch, spec, state, head, None, norm, model_cfg)


TOOL = "hjprune-import-hf"  # the name of its marker file in OUT_DIR, .hjprune-import-hf (output_dir)
CHECKPOINT = "model.pt"
DICTIONARY = "dict.ltr.txt"


def import_hf(folder: str, out: str, normalize: Optional[bool] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Write ``out/model.pt`` (a dense ``hjprune_slim_ctc`` checkpoint, :func:`checkpoints.save_imported`)
    and, for a CTC model, ``out/dict.ltr.txt`` from the transformers model in ``folder``. ``out`` must be
    new, empty, or hold only this tool's earlier output (replaced only with ``overwrite``)."""
    from fairseq.data import Dictionary
    from hjprune_manifests import output_dir
    from hjprune_manifests.labels import write_dictionary

    from ..plugin.checkpoints import save_imported

    output_dir.check(out, TOOL, overwrite, "an imported model")
    ckpt = read_hf(folder, normalize)
    recorded = ckpt.model_cfg.get("target_dictionary")
    target = None
    with output_dir.staging(out) as tmp:
        if recorded:
            lines = recorded["symbols"][Dictionary().nspecial:]  # fairseq adds its specials itself
            write_dictionary(os.path.join(tmp, DICTIONARY), [(s, 1) for s in lines])
            target = {"path": os.path.abspath(os.path.join(out, DICTIONARY)), "symbols": recorded["symbols"]}
        arch = save_imported(ckpt, os.path.join(tmp, CHECKPOINT), os.path.abspath(out), target,
                             {"hjprune_imported_from": os.path.abspath(folder), "hf_architecture": ckpt.arch})
        output_dir.publish(tmp, out, TOOL, overwrite, "an imported model")
    return {
        "source": folder, "architecture": ckpt.arch, "checkpoint": os.path.join(out, CHECKPOINT), "arch": arch,
        "dictionary": os.path.join(out, DICTIONARY) if recorded else None,
        "symbols": len(recorded["symbols"]) if recorded else 0, "normalize": ckpt.normalize,
    }
