"""Load this plugin's checkpoints without a task; write the slim checkpoint of a gated one, and an imported
(hf_import) encoder as a dense one; one writer of the fairseq checkpoint format for both (:func:`write_checkpoint`)."""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional, Tuple

import torch
from hjprune_manifests.output_dir import write_atomically
from omegaconf import OmegaConf

from ..core.gate_state import GateMasks
from ..core.slim import slim_encoder, slim_head
from ..core.spec import EncoderSpec
from .fairseq_import import ImportedCheckpoint, load_state
from .models import registry
from .models.base import HJPruneModel


def arch_of(state: Dict[str, Any]) -> Any:
    """The model name (cfg.model._name) of a loaded checkpoint, or None."""
    cfg = state.get("cfg") or {}
    return (cfg.get("model") or {}).get("_name")


def model_from_state(state: Dict[str, Any], path: str) -> HJPruneModel:
    """Rebuild an hjprune model from a loaded checkpoint (its cfg.model and weights)."""
    arch = registry.find(arch_of(state))
    if arch is None:
        raise ValueError(f"{path}: architecture {arch_of(state)!r} is not an hjprune model "
                         f"(expected one of {registry.names()})")
    saved = OmegaConf.to_container(state["cfg"]["model"], resolve=False, enum_to_str=True)
    cfg = OmegaConf.merge(OmegaConf.structured(arch.config_class), saved)
    weights = state["model"]
    if arch.head == "distill":  # prediction heads, no vocabulary
        vocab = 0
    elif "proj.weight" in weights:
        vocab = weights["proj.weight"].shape[0]
    else:
        raise ValueError(f"{path}: no output layer 'proj.weight' in the weights")
    model = arch.model_class.from_config(cfg, vocab)
    model.load_state_dict(weights, strict=True)  # fairseq's: runs the upgrade_state_dict_named hooks
    return model.eval()


def load_model(path: str) -> Tuple[HJPruneModel, Dict[str, Any]]:
    state = load_state(path)
    return model_from_state(state, path), state


def check_output_path(input_path: str, output_path: str, overwrite: bool) -> None:
    """Refuse an output that is the input (also through a symlink or hard link), or an existing file
    without ``overwrite``."""
    if os.path.realpath(input_path) == os.path.realpath(output_path) or (  # symlinks, hard links
            os.path.exists(input_path) and os.path.exists(output_path) and os.path.samefile(input_path, output_path)):
        raise ValueError(f"{output_path}: output would overwrite the input checkpoint")
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(f"{output_path}: already exists (pass --overwrite to replace it)")


def export_slim(gated_path: str, slim_path: str, overwrite: bool = False, allow_no_gates: bool = False) -> Dict[str, Any]:
    """Write the physically pruned model of ``gated_path`` (deterministic masks) to ``slim_path``; a
    model without gates (e.g. a fine-tuned one) is refused unless ``allow_no_gates`` (a dense copy)."""
    check_output_path(gated_path, slim_path, overwrite)
    state = load_state(gated_path)
    arch = registry.find(arch_of(state))
    if arch is None or arch.kind != "gated":
        raise ValueError(f"{gated_path}: architecture {arch_of(state)!r} has no gates to export "
                         f"(expected one of {registry.names(kind='gated')})")
    model = model_from_state(state, gated_path)
    if model.gates is None and not allow_no_gates:
        raise ValueError(f"{gated_path}: has no gates (every model.prune_* is false, e.g. a fine-tuned model), so "
                         "nothing would be removed; export the checkpoint of a prune stage (checkpoint_last.pt), "
                         "or pass --allow-no-gates for a dense copy")
    out, spec, masks = slim_checkpoint(state, model, gated_path)
    write_atomically(slim_path, lambda tmp: torch.save(out, tmp))
    return {"spec": spec, "masks": masks}


def slim_checkpoint(state: Dict[str, Any], model: HJPruneModel, path: str) -> Tuple[Dict[str, Any], EncoderSpec, GateMasks]:
    """The slim checkpoint (the dict ``torch.save`` writes), its spec and the masks applied, of ``model``:
    a gated model rebuilt from the checkpoint ``state`` read from ``path``, with its deterministic masks
    (every unit kept where it has no gates: a dense copy in the slim format)."""
    arch = registry.get(arch_of(state))
    masks = model.gates.deterministic() if model.gates is not None else model.gate_masks()
    with torch.no_grad():
        spec, enc = slim_encoder(model.spec, model.encoder.state_dict(), masks, source=path)
        if arch.head == "distill":  # one prediction head per distilled layer
            output = {f"heads.{i}.{k}": v for i, h in enumerate(model.heads)
                      for k, v in slim_head(h.state_dict(), masks).items()}
        else:
            output = {f"proj.{k}": v for k, v in slim_head(model.proj.state_dict(), masks).items()}
    model_cfg = OmegaConf.to_container(state["cfg"]["model"], resolve=False, enum_to_str=True)
    for k in arch.gate_fields:
        model_cfg.pop(k, None)
    model_cfg["_name"] = arch.slim_name
    model_cfg["encoder_spec"] = spec.to_dict()
    model_cfg["reference_spec"] = model.reference_spec.to_dict()
    cfg = OmegaConf.to_container(state["cfg"], resolve=False, enum_to_str=True)
    cfg["model"] = model_cfg
    weights = {f"encoder.{k}": v for k, v in enc.items()}
    weights.update(output)
    out = checkpoint_dict(cfg, weights, {"hjprune_exported_from": os.path.abspath(path)},
                          copy.deepcopy(state.get("task_state", {})))
    return out, spec, masks


def checkpoint_dict(cfg: Dict[str, Any], weights: Dict[str, torch.Tensor], extra_state: Dict[str, Any],
                    task_state: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What fairseq's trainer saves (``cfg`` with its model and task sections, the ``model`` weights,
    ``extra_state``, ``task_state``), without optimizer state: fairseq's checkpoint_utils, fairseq-generate
    and every stage's ``model.w2v_path`` read it."""
    return {
        "args": None,
        "cfg": cfg,
        "model": weights,
        "optimizer_history": [{
            "criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {},
            "num_updates": 0,
        }],
        "extra_state": extra_state,
        "last_optimizer_state": None,
        "task_state": task_state if task_state is not None else {},
    }


def write_checkpoint(path: str, cfg: Dict[str, Any], weights: Dict[str, torch.Tensor], extra_state: Dict[str, Any],
                     task_state: Optional[Dict[str, Any]] = None) -> None:
    """Write :func:`checkpoint_dict` to ``path`` atomically (:func:`write_atomically`)."""
    out = checkpoint_dict(cfg, weights, extra_state, task_state)
    write_atomically(path, lambda tmp: torch.save(out, tmp))


IMPORTED_ARCH = "hjprune_slim_ctc"  # an imported model is dense and has no gates: the slim kind with a CTC head
IMPORTED_TASK = "hjprune_audio_finetuning"


def save_imported(ckpt: ImportedCheckpoint, path: str, data: str, target_dictionary: Optional[Dict[str, Any]],
                  extra_state: Dict[str, Any]) -> str:
    """Write an imported encoder as a dense ``hjprune_slim_ctc`` checkpoint; returns that name.

    With an output layer (``ckpt.head_state``), ``target_dictionary`` ({path, symbols}) is the dictionary
    it indexes, recorded as the task records it; without one, the output layer has no symbols (0 rows),
    and a stage that takes the checkpoint as ``model.w2v_path`` starts a new one for its dictionary.
    ``data`` is the task's data folder (where a fairseq script without its own task looks for the dictionary).
    """
    if (ckpt.head_state is None) != (target_dictionary is None):
        raise ValueError(f"{ckpt.path}: an output layer needs its dictionary and a dictionary its output layer")
    arch = registry.get(IMPORTED_ARCH)
    normalize = bool(ckpt.normalize)
    model_cfg = OmegaConf.to_container(OmegaConf.structured(arch.config_class(normalize=normalize)), enum_to_str=True)
    model_cfg.update(_name=arch.name, encoder_spec=ckpt.spec.to_dict(), reference_spec=ckpt.spec.to_dict(),
                     target_dictionary=target_dictionary)
    d = ckpt.spec.embed_dim
    head = ckpt.head_state or {"weight": torch.zeros(0, d), "bias": torch.zeros(0)}
    weights = {f"encoder.{k}": v for k, v in ckpt.encoder_state.items()}
    weights.update({f"proj.{k}": v for k, v in head.items()})
    task = {"_name": IMPORTED_TASK, "data": data, "labels": "ltr", "normalize": normalize}
    write_checkpoint(path, {"model": model_cfg, "task": task}, weights, extra_state)
    return arch.name
