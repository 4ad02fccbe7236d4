"""Load this plugin's checkpoints without a task, and write the slim checkpoint of a gated one."""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any, Dict, Tuple

import torch
from omegaconf import OmegaConf

from .fairseq_import import load_state
from .models.hjprune_cls import CLASSIFIERS, HJPruneGatedCls, HJPruneParpCls, HJPruneSlimCls
from .models.hjprune_ctc import HJPruneCtcModel, HJPruneGatedCtc, HJPruneParpCtc, HJPruneSlimCtc
from .models.hjprune_distill import HJPruneGatedDistill, HJPruneSlimDistill
from .core.slim import slim_encoder, slim_head

MODEL_CLASSES = {
    "hjprune_wav2vec_ctc": HJPruneGatedCtc, "hjprune_slim_ctc": HJPruneSlimCtc,
    "hjprune_wav2vec_cls": HJPruneGatedCls, "hjprune_slim_cls": HJPruneSlimCls,
    "hjprune_parp_ctc": HJPruneParpCtc, "hjprune_parp_cls": HJPruneParpCls,
    "hjprune_wav2vec_distill": HJPruneGatedDistill, "hjprune_slim_distill": HJPruneSlimDistill,
}
DISTILL = ("hjprune_wav2vec_distill", "hjprune_slim_distill")  # prediction heads, no vocabulary
PARP = ("hjprune_parp_ctc", "hjprune_parp_cls")  # dense models with unstructured zeros (core/parp.py)
SLIM_OF = {"hjprune_wav2vec_ctc": "hjprune_slim_ctc", "hjprune_wav2vec_cls": "hjprune_slim_cls",
           "hjprune_wav2vec_distill": "hjprune_slim_distill"}
GATE_FIELDS = ("prune_conv", "prune_heads", "prune_ffn", "prune_hidden", "prune_head_dims", "gate_init_keep_prob",
               "gate_ste")


def arch_of(state: Dict[str, Any]) -> Any:
    """The model name (cfg.model._name) of a loaded checkpoint, or None."""
    cfg = state.get("cfg") or {}
    return (cfg.get("model") or {}).get("_name")


def model_from_state(state: Dict[str, Any], path: str) -> HJPruneCtcModel:
    """Rebuild an hjprune model from a loaded checkpoint (its cfg.model and weights)."""
    arch = arch_of(state)
    if arch not in MODEL_CLASSES:
        raise ValueError(f"{path}: architecture {arch!r} is not an hjprune model (expected one of {sorted(MODEL_CLASSES)})")
    cls = MODEL_CLASSES[arch]
    saved = OmegaConf.to_container(state["cfg"]["model"], resolve=False, enum_to_str=True)
    cfg = OmegaConf.merge(OmegaConf.structured(cls.__dataclass), saved)
    weights = state["model"]
    if arch in DISTILL:
        vocab = 0
    elif "proj.weight" in weights:
        vocab = weights["proj.weight"].shape[0]
    else:
        raise ValueError(f"{path}: no output layer 'proj.weight' in the weights")
    model = cls.from_config(cfg, vocab)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_model(path: str) -> Tuple[HJPruneCtcModel, Dict[str, Any]]:
    state = load_state(path)
    return model_from_state(state, path), state


def export_slim(gated_path: str, slim_path: str, overwrite: bool = False, allow_no_gates: bool = False) -> Dict[str, Any]:
    """Write the physically pruned model of ``gated_path`` (deterministic masks) to ``slim_path``; a
    model without gates (e.g. a fine-tuned one) is refused unless ``allow_no_gates`` (a dense copy)."""
    if os.path.realpath(gated_path) == os.path.realpath(slim_path) or (  # symlinks, hard links
            os.path.exists(gated_path) and os.path.exists(slim_path) and os.path.samefile(gated_path, slim_path)):
        raise ValueError(f"{slim_path}: output would overwrite the input checkpoint")
    if os.path.exists(slim_path) and not overwrite:
        raise FileExistsError(f"{slim_path}: already exists (pass --overwrite to replace it)")
    state = load_state(gated_path)
    if arch_of(state) not in SLIM_OF:
        raise ValueError(f"{gated_path}: architecture {arch_of(state)!r} has no gates to export "
                         f"(expected one of {sorted(SLIM_OF)})")
    model = model_from_state(state, gated_path)
    if model.gates is None and not allow_no_gates:
        raise ValueError(f"{gated_path}: has no gates (every model.prune_* is false, e.g. a fine-tuned model), so "
                         "nothing would be removed; export the checkpoint of a prune stage (checkpoint_last.pt), "
                         "or pass --allow-no-gates for a dense copy")
    masks = model.gates.deterministic() if model.gates is not None else model.gate_masks()
    with torch.no_grad():
        spec, enc = slim_encoder(model.spec, model.encoder.state_dict(), masks, source=gated_path)
        if isinstance(model.proj, torch.nn.ModuleList):  # distillation: one prediction head per layer
            head = {f"{i}.{k}": v for i, h in enumerate(model.proj) for k, v in slim_head(h.state_dict(), masks).items()}
        else:
            head = slim_head(model.proj.state_dict(), masks)
    model_cfg = OmegaConf.to_container(state["cfg"]["model"], resolve=False, enum_to_str=True)
    for k in GATE_FIELDS:
        model_cfg.pop(k, None)
    model_cfg["_name"] = SLIM_OF[arch_of(state)]
    model_cfg["encoder_spec"] = spec.to_dict()
    model_cfg["reference_spec"] = model.reference_spec.to_dict()
    cfg = OmegaConf.to_container(state["cfg"], resolve=False, enum_to_str=True)
    cfg["model"] = model_cfg
    weights = {f"encoder.{k}": v for k, v in enc.items()}
    weights.update({f"proj.{k}": v for k, v in head.items()})
    out = {
        "args": None,
        "cfg": cfg,
        "model": weights,
        "optimizer_history": [{
            "criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {},
            "num_updates": 0,
        }],
        "extra_state": {"hjprune_exported_from": os.path.abspath(gated_path)},
        "last_optimizer_state": None,
        "task_state": copy.deepcopy(state.get("task_state", {})),
    }
    folder = os.path.dirname(os.path.abspath(slim_path))
    os.makedirs(folder, exist_ok=True)
    # A fresh temporary name (never a user's file), renamed in: never a half-written checkpoint.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(slim_path)}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(out, tmp)
        os.replace(tmp, slim_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"spec": spec, "masks": masks}
