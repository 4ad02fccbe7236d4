"""Hugging Face export: an hjprune model as a folder that ``transformers`` loads with ``trust_remote_code``.

transformers' own wav2vec2 / HuBERT / WavLM classes cannot hold a pruned model (one hidden size and equal
layers; CoFiPruning issues #7 and #44 met the same limit), so the folder ships its modelling code: the
package's own encoder, ``core/encoder.py``, ``core/spec.py`` and ``core/gate_state.py`` copied as they
are installed, and two small files kept in ``hf_remote/`` (``configuration_hjprune.py``,
``modeling_hjprune.py``) that import them relatively; transformers' dynamic-module loader copies the
relative imports of the modelling file with it. They need torch and transformers, not fairseq.

The folder (:func:`export_hf`):

- ``config.json``: ``model_type`` ``hjprune_wav2vec2``, ``architectures``, ``auto_map`` (AutoConfig,
  AutoModel and, for a CTC model, AutoModelForCTC), the whole ``encoder_spec``, ``vocab_size``,
  ``pad_token_id`` (the CTC blank, output 0), ``normalize``, ``sampling_rate``, ``inputs_to_logits_ratio``
  (samples per frame, the product of the CNN's strides: transformers' speech-recognition pipeline aligns chunks
  and timestamps with it) and, under ``hjprune``, the checkpoint it came from, its architecture and the unpruned
  encoder's spec;
- ``model.safetensors``: the weights, as the modelling classes' ``save_pretrained`` writes them (the fairseq
  model's encoder is loaded into them strictly, so every weight and shape is checked on export);
- ``preprocessor_config.json`` for ``Wav2Vec2FeatureExtractor`` (``do_normalize`` = ``normalize``);
- for a CTC model, ``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for
  ``Wav2Vec2CTCTokenizer``: the fairseq dictionary's symbols at their fairseq indices, the CTC blank
  (index 0, fairseq's ``<s>``) named ``<pad>``, the tokenizer's pad token, and fairseq's ``<pad>`` named
  ``<s>``, as transformers' own fairseq conversion (``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py``)
  names them (``hf_import.FAIRSEQ_SPECIALS``, by which ``hf_import`` maps transformers' vocabularies back); the
  word delimiter is ``|``. The tokenizer's and the feature extractor's configs name ``processor_class``
  ``Wav2Vec2Processor``, which ``AutoProcessor`` reads (without it, it gives the bare tokenizer).

A gated checkpoint is exported as its slim model (deterministic masks, ``slim_export.exportable_model``);
a CTC model's ``blank_weight`` is folded into the output layer (its ``add`` mode into the blank's bias, its
``set`` mode as a blank row of weight 0 and bias ``blank_weight``). A distillation model's prediction heads
are for training only: its encoder is exported. A classifier is refused (transformers has no class for
its head here). The folder is written beside ``out`` and renamed in (``hjprune_manifests.output_dir``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import types
import uuid
from typing import Any, Dict, Iterator, Tuple

import torch
from hjprune_manifests.audio import SAMPLE_RATE

from ..plugin.models import registry
from ..plugin.models.base import HJPruneModel
from .hf_format import AUDIO, DELIMITER, FAIRSEQ_SPECIALS, PREPROCESSOR, TOKENIZER_DEFAULTS, VOCAB, exported_name
from .slim_export import exportable_model

logger = logging.getLogger(__name__)

TOOL = "hjprune-export-hf"  # the name of its marker file in the output folder, .hjprune-export-hf (output_dir)
WHAT = "a Hugging Face export"  # what an earlier output is called in errors
REMOTE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_remote")
CORE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "core")
REMOTE_FILES = ("configuration_hjprune.py", "modeling_hjprune.py")  # kept in hf_remote/
CORE_FILES = ("encoder.py", "spec.py", "gate_state.py")  # the encoder, copied from the installed package
WEIGHTS = "model.safetensors"
SPECIAL_TOKENS = "special_tokens_map.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
PROCESSOR_CLASS = "Wav2Vec2Processor"  # feature extractor + CTC tokenizer, named in their configs for AutoProcessor
# Per output layer (registry head): the transformers architecture, and its auto classes.
ARCHITECTURES = {"ctc": "HJPruneForCTC", "distill": "HJPruneModel"}
AUTO_MAP = {"AutoConfig": "configuration_hjprune.HJPruneConfig", "AutoModel": "modeling_hjprune.HJPruneModel"}
CTC_AUTO_MAP = {"AutoModelForCTC": "modeling_hjprune.HJPruneForCTC"}
MODEL_TYPE = "hjprune_wav2vec2"  # configuration_hjprune.HJPruneConfig.model_type


def shipped_files() -> Dict[str, str]:
    """name in the exported folder -> the file it is copied from: the modelling code."""
    files = {name: os.path.join(REMOTE_DIR, name) for name in REMOTE_FILES}
    files.update({name: os.path.join(CORE_DIR, name) for name in CORE_FILES})
    return files


@contextlib.contextmanager
def shipped_code() -> Iterator[Tuple[Any, Any]]:
    """(configuration_hjprune, modeling_hjprune) imported from the files :func:`shipped_files` copies, as a
    package of their own (their relative imports resolve among them), removed from ``sys.modules`` afterwards."""
    name = f"_hjprune_hf_export_{uuid.uuid4().hex}"
    package = types.ModuleType(name)
    package.__path__ = sorted({os.path.dirname(path) for path in shipped_files().values()})
    sys.modules[name] = package
    try:
        yield (importlib.import_module(f"{name}.configuration_hjprune"),
               importlib.import_module(f"{name}.modeling_hjprune"))
    finally:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


# ---- output layer and vocabulary --------------------------------------------------------------------
def ctc_output_layer(model: HJPruneModel) -> Dict[str, torch.Tensor]:
    """The CTC output layer with ``blank_weight`` folded in (the model's ``blank_rule``, the blank's logit being its
    row's weight times the features plus its bias): {"weight": (V, d), "bias": (V,)}; the blank is row 0."""
    weight, bias = model.proj.weight.detach().clone(), model.proj.bias.detach().clone()
    scale, shift = model.blank_rule()
    weight[0] *= scale
    bias[0] = bias[0] * scale + shift
    return {"weight": weight, "bias": bias}


def ctc_vocab(model: HJPruneModel, source: str) -> Dict[str, int]:
    """``vocab.json`` of the fairseq dictionary a CTC ``model`` records (``cfg.target_dictionary``): token -> fairseq
    index, fairseq's specials named as transformers' conversion names them (:data:`hf_import.FAIRSEQ_SPECIALS`: the
    blank ``<s>`` becomes the pad token ``<pad>``, and ``<pad>`` becomes ``<s>``)."""
    recorded = model.cfg.target_dictionary
    if not recorded:
        raise ValueError(f"{source}: records no target dictionary (model.target_dictionary), so the CTC "
                         "outputs have no tokens; expected a checkpoint of a stage run with the "
                         "hjprune_audio_finetuning task")
    symbols = list(recorded["symbols"])
    if len(symbols) != model.proj.weight.shape[0]:
        raise ValueError(f"{source}: the target dictionary has {len(symbols)} symbols but the CTC output layer "
                         f"{model.proj.weight.shape[0]} (expected the same)")
    specials = list(FAIRSEQ_SPECIALS)
    if symbols[:len(specials)] != specials:
        raise ValueError(f"{source}: the target dictionary starts {symbols[:len(specials)]} (expected fairseq's "
                         f"specials {specials})")
    names = [TOKENIZER_DEFAULTS[FAIRSEQ_SPECIALS[s]] for s in specials] + list(symbols[len(specials):])
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"{source}: the target dictionary holds {clash} besides fairseq's specials (expected each "
                         "token once)")
    return {name: i for i, name in enumerate(names)}


def add_fields(path: str, **fields: Any) -> None:
    """Add ``fields`` to the JSON object file ``path`` (one that transformers wrote)."""
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    content.update(fields)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, ensure_ascii=False, indent=2)


def write_tokenizer(folder: str, vocab: Dict[str, int]) -> None:
    """``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of ``Wav2Vec2CTCTokenizer``
    (transformers 5 writes no ``special_tokens_map.json``; older versions, and ``hf_import``, read it)."""
    from ..plugin.compat import import_transformers

    path = os.path.join(folder, VOCAB)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=1)
    if DELIMITER not in vocab:
        logger.warning("%s has no word delimiter %r: the tokenizer prints no spaces", path, DELIMITER)
    tokens = {k: TOKENIZER_DEFAULTS[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    import_transformers().Wav2Vec2CTCTokenizer(path, word_delimiter_token=DELIMITER, **tokens).save_pretrained(folder)
    special = os.path.join(folder, SPECIAL_TOKENS)
    if not os.path.exists(special):
        with open(special, "w", encoding="utf-8") as f:
            json.dump(tokens, f, indent=1)


# ---- the folder ---------------------------------------------------------------------------------
def hf_config(config_class: type, model: HJPruneModel, arch: registry.Arch, checkpoint: str,
              vocab_size: int) -> Any:
    """The ``HJPruneConfig`` (``config_class``) of ``model`` (see the module docstring)."""
    ctc = arch.head == "ctc"
    return config_class(
        encoder_spec=model.spec.to_dict(), vocab_size=vocab_size, normalize=bool(model.cfg.normalize),
        sampling_rate=SAMPLE_RATE, pad_token_id=0 if ctc else None,
        hjprune={"exported_from": os.path.abspath(checkpoint), "arch": arch.name,
                 "reference_spec": model.reference_spec.to_dict()},
        architectures=[ARCHITECTURES[arch.head]], auto_map=dict(AUTO_MAP, **(CTC_AUTO_MAP if ctc else {})),
    )


def _exportable(checkpoint: str) -> Tuple[HJPruneModel, registry.Arch]:
    model, arch = exportable_model(checkpoint)
    if arch.head not in ARCHITECTURES:
        raise ValueError(f"{checkpoint}: {arch.name} has a {arch.head} head, which the Hugging Face export does not "
                         f"carry (expected a model with a head of {sorted(ARCHITECTURES)})")
    return model, arch


def check_output(out: str, overwrite: bool) -> None:
    """Refuse ``out`` unless it is new, empty, or this tool's earlier output (with ``overwrite``), and unless the
    Hugging Face extra (transformers, safetensors) is installed: before anything is written."""
    from hjprune_manifests import output_dir

    from ..plugin.compat import import_transformers

    output_dir.check(out, TOOL, overwrite, WHAT)
    import_transformers()
    try:
        import safetensors.torch  # noqa: F401
    except ImportError as e:
        raise ImportError(f"this needs the Hugging Face extra: pip install 'hjprune-fairseq[hf]' ({e})") from e


def export_hf(checkpoint: str, out: str, overwrite: bool = False) -> Dict[str, Any]:
    """Write the Hugging Face folder ``out`` of ``checkpoint`` (any checkpoint ``checkpoints.load_model``
    reads with a CTC or distillation head; a gated one as its slim model). ``out`` must be new, empty, or
    hold only this tool's earlier output (replaced only with ``overwrite``); it appears complete or not at all.
    Returns what was written: the folder, the architectures, vocab_size, normalize, params and the files."""
    from hjprune_manifests import output_dir

    from ..plugin.compat import import_transformers

    check_output(out, overwrite)
    tr = import_transformers()
    model, arch = _exportable(checkpoint)
    vocab = ctc_vocab(model, checkpoint) if arch.head == "ctc" else None
    with output_dir.staging(out) as tmp, shipped_code() as (configuration, modeling):
        config = hf_config(configuration.HJPruneConfig, model, arch, checkpoint, len(vocab or {}))
        hf = getattr(modeling, ARCHITECTURES[arch.head])(config).eval()
        hf.encoder.load_state_dict({exported_name(k): v for k, v in model.encoder.state_dict().items()})  # strict
        if vocab is not None:
            hf.lm_head.load_state_dict(ctc_output_layer(model))
        hf.save_pretrained(tmp)  # config.json and model.safetensors
        # safetensors writes its files readable by their owner only
        os.chmod(os.path.join(tmp, WEIGHTS), output_dir.new_file_mode())
        for name, src in shipped_files().items():
            shutil.copyfile(src, os.path.join(tmp, name))
        tr.Wav2Vec2FeatureExtractor(**AUDIO, do_normalize=bool(model.cfg.normalize),
                                    return_attention_mask=True).save_pretrained(tmp)
        if vocab is not None:
            write_tokenizer(tmp, vocab)
            # AutoProcessor finds the processor by processor_class in these configs. transformers 5's feature
            # extractor drops the field, and its processor writes processor_config.json, which 4.x does not read.
            for name in (PREPROCESSOR, TOKENIZER_CONFIG):
                add_fields(os.path.join(tmp, name), processor_class=PROCESSOR_CLASS)
        files = sorted(os.listdir(tmp))
        output_dir.publish(tmp, out, TOOL, overwrite, WHAT)
    return {"hf_dir": out, "source": checkpoint, "arch": arch.name, "architecture": ARCHITECTURES[arch.head],
            "vocab_size": len(vocab or {}), "normalize": bool(model.cfg.normalize),
            "params": sum(p.numel() for p in hf.parameters()), "files": files}


