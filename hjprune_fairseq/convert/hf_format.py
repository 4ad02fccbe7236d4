"""The Hugging Face folder's format, shared by the reader (``hf_import``) and the writer (``hf_export``): its
file names, transformers' tokenizer and feature-extractor defaults, how fairseq's specials are named there, and
the keys of the folders ``hjprune-export --hf`` writes (read back by :func:`exported_encoder_state`)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from hjprune_manifests.audio import SAMPLE_RATE

from ..core.encoder import Wav2Vec2Encoder
from ..core.spec import EncoderSpec

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
VOCAB = "vocab.json"

# Wav2Vec2CTCTokenizer's and Wav2Vec2FeatureExtractor's defaults (tests/test_hf_import.py checks them against the installed classes).
TOKENIZER_DEFAULTS: Dict[str, Any] = {
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
    "word_delimiter_token": "|", "replace_word_delimiter_char": " ", "do_lower_case": False,
}
PREPROCESSOR_DEFAULTS: Dict[str, Any] = {"do_normalize": True, "sampling_rate": 16000, "padding_value": 0.0,
                                         "feature_size": 1}
# fairseq's specials -> the tokenizer field naming the transformers token of their output row. CTC's blank
# is fairseq's <s> (index 0) and transformers' pad token: the two swap, and <pad> with <s>, as transformers'
# own conversion of fairseq checkpoints swaps them (convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py).
FAIRSEQ_SPECIALS = {"<s>": "pad_token", "<pad>": "bos_token", "</s>": "eos_token", "<unk>": "unk_token"}
AUDIO = {"sampling_rate": SAMPLE_RATE, "padding_value": 0.0, "feature_size": 1}  # what fairseq's audio datasets give
DELIMITER = "|"  # the word delimiter of fairseq's letter targets (post_process=letter makes it a space)

# The positional convolution's weight-norm pair: (its name in the encoder, in the exported weights). The exported
# names are modeling_hjprune.WeightNormPositionalConv's (transformers renames keys holding weight_g / weight_v).
POS_CONV_NAMES = (("pos_conv.weight_g", "pos_conv.g"), ("pos_conv.weight_v.", "pos_conv.v."))


def exported_name(name: str, back: bool = False) -> str:
    """The key of the encoder's state-dict entry ``name`` in the exported weights (:data:`POS_CONV_NAMES`), or,
    ``back``, the encoder's key of an exported one."""
    for ours, exported in POS_CONV_NAMES:
        old, new = (exported, ours) if back else (ours, exported)
        if name.startswith(old):
            return new + name[len(old):]
    return name


def exported_encoder_state(config: Dict[str, Any], weights: Dict[str, torch.Tensor], folder: str
                           ) -> Tuple[EncoderSpec, Dict[str, torch.Tensor]]:
    """(spec, state dict of :class:`~.core.encoder.Wav2Vec2Encoder`) of a folder ``hf_export.export_hf`` wrote, from its
    ``config.json`` and weights (``encoder.*``; ``lm_head.*`` is the CTC head, read by ``hf_import``); ``folder``
    is named in errors. Every encoder weight must be there with its shape, and no other weight."""
    try:
        spec = EncoderSpec.from_dict(dict(config["encoder_spec"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: no valid encoder_spec ({e}); expected the config.json "
                         "hjprune-export --hf writes") from e
    state: Dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if key.startswith("encoder."):
            state[exported_name(key[len("encoder."):], back=True)] = value
        elif not key.startswith("lm_head."):
            raise ValueError(f"{folder}: the weights hold {key!r} (expected only encoder.* and lm_head.*)")
    try:
        Wav2Vec2Encoder(spec).load_state_dict(state)  # strict: names and shapes
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise ValueError(f"{folder}: the weights do not fit the encoder config.json describes "
                         f"({' '.join(line.strip() for line in first)})") from e
    return spec, state


def exported_reference_spec(config: Dict[str, Any], folder: str) -> Optional[Dict[str, Any]]:
    """The unpruned ancestor's spec that ``hjprune-export --hf`` records under ``hjprune.reference_spec`` (so that
    sparsity stays measured against the dense model through an export and an import), or None where there is none."""
    recorded = (config.get("hjprune") or {}).get("reference_spec")
    if recorded is None:
        return None
    try:
        return EncoderSpec.from_dict(dict(recorded)).to_dict()
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: hjprune.reference_spec is not a valid encoder spec ({e}); "
                         "expected the config.json hjprune-export --hf writes") from e
