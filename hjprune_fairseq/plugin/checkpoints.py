"""Load this plugin's checkpoints without a task, and write them: the one writer of the fairseq checkpoint format
(:func:`write_checkpoint`), for slim checkpoints (convert.slim_export) and imported encoders (convert.hf_import)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from hjprune_manifests.output_dir import write_atomically
from omegaconf import OmegaConf

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
    """Write an imported encoder as an ``hjprune_slim_ctc`` checkpoint (dense; or, from a folder ``hjprune-export --hf``
    wrote, slim against the dense ancestor it records, ``ckpt.model_cfg["reference_spec"]``); returns that name.

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
    reference = ckpt.model_cfg.get("reference_spec") or ckpt.spec.to_dict()  # an export's dense ancestor, or itself
    model_cfg.update(_name=arch.name, encoder_spec=ckpt.spec.to_dict(), reference_spec=reference,
                     target_dictionary=target_dictionary)
    d = ckpt.spec.embed_dim
    head = ckpt.head_state or {"weight": torch.zeros(0, d), "bias": torch.zeros(0)}
    weights = {f"encoder.{k}": v for k, v in ckpt.encoder_state.items()}
    weights.update({f"proj.{k}": v for k, v in head.items()})
    task = {"_name": IMPORTED_TASK, "data": data, "labels": "ltr", "normalize": normalize}
    write_checkpoint(path, {"model": model_cfg, "task": task}, weights, extra_state)
    return arch.name
