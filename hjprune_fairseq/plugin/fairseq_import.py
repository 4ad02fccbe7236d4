"""Read fairseq checkpoints into an EncoderSpec and a state dict of :class:`Wav2Vec2Encoder`.

This is the only module that knows fairseq's configuration names and parameter key names.
Supported: pre-training checkpoints of ``wav2vec2`` and ``hubert``; fine-tuned ``wav2vec_ctc`` and
``hubert_ctc`` (their ``w2v_args`` hold the pre-training config); and this plugin's own
checkpoints (``hjprune_*``), which carry ``encoder_spec``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from ..core.spec import EncoderSpec

PRETRAINED = {"wav2vec2": "wav2vec2", "hubert": "hubert"}
FINETUNED_CTC = {"wav2vec_ctc": "wav2vec2", "hubert_ctc": "hubert"}
PLUGIN_PREFIX = "hjprune_"


@dataclass
class ImportedCheckpoint:
    """What a checkpoint provides to initialise an hjprune model."""

    path: str
    kind: str  # "pretrained" | "finetuned_ctc" | "hjprune" | "huggingface" (hf_import)
    arch: str  # fairseq/hjprune model name in the checkpoint
    spec: EncoderSpec
    encoder_state: Dict[str, torch.Tensor]  # keys of Wav2Vec2Encoder
    head_state: Optional[Dict[str, torch.Tensor]]  # {"weight", "bias"} of the output layer or None
    gate_state: Optional[Dict[str, torch.Tensor]]  # hjprune gates, if any
    normalize: Optional[bool]  # the audio normalisation the encoder was trained with
    model_cfg: Dict[str, Any]


def load_state(path: str) -> Dict[str, Any]:
    """fairseq's ``load_checkpoint_to_cpu`` with a clear error for missing / unreadable files (the
    loader names the file of an unreadable one: compat quirk 6)."""
    from fairseq import checkpoint_utils

    from . import compat

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found (expected a fairseq .pt file)")
    compat.install()
    return checkpoint_utils.load_checkpoint_to_cpu(path)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def spec_from_fairseq_cfg(m: Any, arch: str, path: str) -> EncoderSpec:
    """EncoderSpec from a fairseq ``Wav2Vec2Config`` / ``HubertConfig`` (dict-like)."""
    def need(key: str) -> Any:
        v = _get(m, key)
        if v is None:
            raise ValueError(f"{path}: model config lacks '{key}' (expected a {arch} pre-training config)")
        return v

    layer_type = _get(m, "layer_type", "transformer")
    if layer_type not in (None, "transformer"):
        raise ValueError(f"{path}: layer_type={layer_type!r} is not supported (expected 'transformer')")
    if int(_get(m, "pos_conv_depth", 1) or 1) != 1:
        raise ValueError(f"{path}: pos_conv_depth={_get(m, 'pos_conv_depth')} is not supported (expected 1)")
    if _get(m, "conv_pos_batch_norm", False):
        raise ValueError(f"{path}: conv_pos_batch_norm=True is not supported (expected weight-norm pos conv)")
    act = _get(m, "activation_fn", "gelu")
    if act != "gelu":
        raise ValueError(f"{path}: activation_fn={act!r} is not supported (expected 'gelu')")
    if _get(m, "quantize_input", False):
        raise ValueError(f"{path}: quantize_input=True is not supported")
    layers_str = need("conv_feature_layers")
    try:
        conv_layers = eval(layers_str, {"__builtins__": {}}, {})  # fairseq's own format, e.g. "[(512,10,5)]*2"
    except Exception as e:
        raise ValueError(f"{path}: cannot parse conv_feature_layers={layers_str!r}: {e}") from e
    embed = int(need("encoder_embed_dim"))
    if conv_layers[-1][0] == embed:
        raise ValueError(
            f"{path}: CNN output dim equals encoder_embed_dim ({embed}), so fairseq has no "
            "post_extract_proj; this layout is not supported"
        )
    return EncoderSpec.uniform(
        conv_layers=conv_layers,
        embed_dim=embed,
        num_layers=int(need("encoder_layers")),
        num_heads=int(need("encoder_attention_heads")),
        ffn_dim=int(need("encoder_ffn_embed_dim")),
        pos_conv_kernel=int(need("conv_pos")),
        pos_conv_groups=int(need("conv_pos_groups")),
        conv_bias=bool(_get(m, "conv_bias", False)),
        extractor_mode=str(_get(m, "extractor_mode", "default")),
        layer_norm_first=bool(_get(m, "layer_norm_first", False)),
        frame_padding="hubert" if arch == "hubert" else "wav2vec2",
    )


# torch's two spellings of a weight-normalised module's (g, v): nn.utils.weight_norm and, since torch 2.1,
# nn.utils.parametrizations.weight_norm. Shared with hf_import (transformers writes either, by version).
WEIGHT_NORM_SPELLINGS = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def weight_norm_pair(sd: Dict[str, torch.Tensor], prefix: str, path: str):
    """(g, v, their two keys) of the weight-normalised module ``prefix`` in ``sd``, in either spelling."""
    for g_name, v_name in WEIGHT_NORM_SPELLINGS:
        if prefix + g_name in sd and prefix + v_name in sd:
            return sd[prefix + g_name], sd[prefix + v_name], (prefix + g_name, prefix + v_name)
    raise ValueError(f"{path}: missing the weight-normalised '{prefix}weight_g'/'weight_v' (or "
                     f"'{prefix}parametrizations.weight.original0'/'original1')")


def pos_conv_state(g: torch.Tensor, v: torch.Tensor, spec: EncoderSpec) -> Dict[str, torch.Tensor]:
    """The :class:`PositionalConv` entries of a dense grouped positional conv with weight norm over the
    kernel dim: g (1, 1, K) -> ``pos_conv.weight_g`` (K,); v (d, d / G, K) -> ``pos_conv.weight_v.{group}``."""
    out = {"pos_conv.weight_g": g.reshape(-1)}
    for gi, chunk in enumerate(torch.split(v, spec.pos_conv_groups, dim=0)):
        out[f"pos_conv.weight_v.{gi}"] = chunk
    return out


def encoder_state_from_fairseq(sd: Dict[str, torch.Tensor], spec: EncoderSpec, prefix: str, path: str) -> Dict[str, torch.Tensor]:
    """Rename a fairseq ``Wav2Vec2Model``/``HubertModel`` state dict to :class:`Wav2Vec2Encoder` keys."""
    out: Dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:
        key = prefix + src
        if key not in sd:
            raise ValueError(f"{path}: missing parameter '{key}' (expected a {spec.num_layers}-layer wav2vec2-style encoder)")
        out[dst] = sd[key]

    for i in range(len(spec.conv_layers)):
        take(f"feature_extractor.conv_layers.{i}.0.weight", f"feature_extractor.convs.{i}.weight")
        if spec.conv_bias:
            take(f"feature_extractor.conv_layers.{i}.0.bias", f"feature_extractor.convs.{i}.bias")
        if spec.extractor_mode == "layer_norm":
            for p in ("weight", "bias"):
                take(f"feature_extractor.conv_layers.{i}.2.1.{p}", f"feature_extractor.norms.{i}.{p}")
        elif i == 0:
            for p in ("weight", "bias"):
                take(f"feature_extractor.conv_layers.0.2.{p}", f"feature_extractor.norms.0.{p}")
    for p in ("weight", "bias"):
        take(f"layer_norm.{p}", f"layer_norm.{p}")
        take(f"post_extract_proj.{p}", f"post_extract_proj.{p}")
        take(f"encoder.layer_norm.{p}", f"encoder_layer_norm.{p}")
    take("mask_emb", "mask_emb")
    take("encoder.pos_conv.0.bias", "pos_conv.bias")
    g, v, _ = weight_norm_pair(sd, prefix + "encoder.pos_conv.0.", path)
    out.update(pos_conv_state(g, v, spec))
    for i in range(spec.num_layers):
        src, dst = f"encoder.layers.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                take(f"{src}self_attn.{proj}.{p}", f"{dst}self_attn.{proj}.{p}")
            take(f"{src}self_attn_layer_norm.{p}", f"{dst}self_attn_layer_norm.{p}")
            take(f"{src}fc1.{p}", f"{dst}ffn.fc1.{p}")
            take(f"{src}fc2.{p}", f"{dst}ffn.fc2.{p}")
            take(f"{src}final_layer_norm.{p}", f"{dst}final_layer_norm.{p}")
    return out


def read_checkpoint(path: str) -> ImportedCheckpoint:
    """Read any supported checkpoint; raises ValueError/FileNotFoundError naming the file."""
    state = load_state(path)
    cfg = state.get("cfg")
    model_cfg = _get(cfg, "model")
    arch = _get(model_cfg, "_name")
    sd = state.get("model")
    if sd is None or model_cfg is None:
        raise ValueError(f"{path}: checkpoint has no 'model' weights or no model config")
    if arch in PRETRAINED:
        spec = spec_from_fairseq_cfg(model_cfg, PRETRAINED[arch], path)
        normalize = _get(_get(cfg, "task"), "normalize", _get(model_cfg, "normalize", False))
        return ImportedCheckpoint(
            path, "pretrained", arch, spec, encoder_state_from_fairseq(sd, spec, "", path), None, None,
            bool(normalize), dict(model_cfg),
        )
    if arch in FINETUNED_CTC:
        w2v_args = _get(model_cfg, "w2v_args")
        if w2v_args is None:
            raise ValueError(f"{path}: {arch} checkpoint has no w2v_args (expected a fine-tuned fairseq model)")
        spec = spec_from_fairseq_cfg(_get(w2v_args, "model"), FINETUNED_CTC[arch], path)
        head = {p: sd[f"w2v_encoder.proj.{p}"] for p in ("weight", "bias")} if "w2v_encoder.proj.weight" in sd else None
        normalize = _get(_get(w2v_args, "task"), "normalize", _get(_get(w2v_args, "model"), "normalize", False))
        return ImportedCheckpoint(
            path, "finetuned_ctc", arch, spec,
            encoder_state_from_fairseq(sd, spec, "w2v_encoder.w2v_model.", path), head, None,
            bool(normalize), dict(model_cfg),
        )
    if isinstance(arch, str) and arch.startswith(PLUGIN_PREFIX):
        spec_d = _get(model_cfg, "encoder_spec")
        if spec_d is None:
            raise ValueError(f"{path}: {arch} checkpoint lacks model.encoder_spec (train with "
                             "task._name=hjprune_audio_finetuning, which stores it in the checkpoint)")
        spec = EncoderSpec.from_dict(dict(spec_d))
        enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        gates = {k[len("gates."):]: v for k, v in sd.items() if k.startswith("gates.")} or None
        # An output layer of no symbols is none: an encoder imported without a CTC head (hf_import).
        has_head = "proj.weight" in sd and sd["proj.weight"].shape[0] > 0
        head = {p: sd[f"proj.{p}"] for p in ("weight", "bias")} if has_head else None
        return ImportedCheckpoint(
            path, "hjprune", arch, spec, enc, head, gates, _get(model_cfg, "normalize"), dict(model_cfg),
        )
    raise ValueError(
        f"{path}: unsupported architecture {arch!r} (expected one of "
        f"{sorted(PRETRAINED) + sorted(FINETUNED_CTC)} or an hjprune_* checkpoint)"
    )


def conv_layers_of(model: torch.nn.Module) -> Optional[list]:
    """[(channels, kernel, stride)] of the CNN feature extractor of an hjprune model (its spec) or of a
    fairseq wav2vec2 / HuBERT model (its ``feature_extractor.conv_layers``); None if it has none."""
    spec = getattr(model, "spec", None)
    if spec is not None:
        return [tuple(c) for c in spec.conv_layers]
    for name, m in model.named_modules():
        if name.endswith("feature_extractor") and hasattr(m, "conv_layers"):
            convs = [next(c for c in layer.modules() if isinstance(c, torch.nn.Conv1d)) for layer in m.conv_layers]
            return [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]
    return None


def fairseq_model_config(spec: EncoderSpec) -> Dict[str, Any]:
    """The fairseq ``Wav2Vec2Config`` fields of a dense (uniform) spec: the inverse of spec_from_fairseq_cfg."""
    if len(set(spec.num_heads)) != 1 or len(set(spec.ffn_dims)) != 1 or len(set(spec.pos_conv_groups)) != 1:
        raise ValueError("only a dense encoder (same sizes in every layer) has a fairseq wav2vec2 config")
    if spec.has_rel_pos:
        raise ValueError("a WavLM encoder (rel_pos_buckets > 0) has no fairseq config: fairseq has no WavLM "
                         "(expected a wav2vec2 / HuBERT spec)")
    return dict(
        conv_feature_layers=repr([tuple(c) for c in spec.conv_layers]), conv_bias=spec.conv_bias,
        extractor_mode=spec.extractor_mode, encoder_layers=spec.num_layers, encoder_embed_dim=spec.embed_dim,
        encoder_ffn_embed_dim=spec.ffn_dims[0], encoder_attention_heads=spec.num_heads[0],
        conv_pos=spec.pos_conv_kernel, conv_pos_groups=len(spec.pos_conv_groups),
        layer_norm_first=spec.layer_norm_first,
    )


def write_random_wav2vec2(spec: EncoderSpec, path: str, seed: int = 0, arch: str = "wav2vec2") -> str:
    """A randomly initialised fairseq pre-training checkpoint of ``spec`` (``arch`` wav2vec2 or hubert),
    in the format fairseq's trainer writes (for benchmarks and smoke runs; real users bring their own)."""
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    task: Dict[str, Any] = {"_name": "audio_pretraining", "normalize": False}
    task_state: Dict[str, Any] = {}
    if arch == "wav2vec2":
        from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

        cfg = OmegaConf.structured(Wav2Vec2Config(**fairseq_model_config(spec)))
        model = Wav2Vec2Model(cfg)
    elif arch == "hubert":
        from fairseq.data import Dictionary
        from fairseq.models.hubert.hubert import HubertConfig, HubertModel
        from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

        cfg = OmegaConf.structured(HubertConfig(label_rate=50.0, **fairseq_model_config(spec)))
        units = Dictionary()
        for i in range(100):  # k-means unit labels of HuBERT's pre-training targets
            units.add_symbol(str(i))
        model = HubertModel(cfg, HubertPretrainingConfig(label_rate=50.0), [units])
        task = {"_name": "hubert_pretraining", "normalize": False, "label_rate": 50.0}
        task_state = {"dictionaries": [units]}
    else:
        raise ValueError(f"arch must be wav2vec2 or hubert, got {arch!r}")
    model_cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    model_cfg["_name"] = arch
    torch.save({
        "args": None,
        "cfg": {"model": model_cfg, "task": task},
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": arch, "optimizer_name": "adam", "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {}, "last_optimizer_state": None, "task_state": task_state,
    }, path)
    return path
