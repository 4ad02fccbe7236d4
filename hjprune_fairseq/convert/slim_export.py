"""The slim checkpoint of a gated one: its deterministic masks applied, the pruned units removed physically
(``core.slim``), written as the slim architecture the registry names (``hjprune-export``)."""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Tuple

import torch
from hjprune_manifests.output_dir import write_atomically
from omegaconf import OmegaConf

from ..core.gate_state import GateMasks
from ..core.slim import slim_encoder, slim_head
from ..core.spec import EncoderSpec
from ..plugin.checkpoints import arch_of, checkpoint_dict, model_from_state
from ..plugin.fairseq_import import load_state
from ..plugin.models import registry
from ..plugin.models.base import HJPruneModel


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


def exportable_model(path: str) -> Tuple[HJPruneModel, registry.Arch]:
    """The model of checkpoint ``path`` as it is exported: a gated model with gates becomes its slim
    model (deterministic masks folded in by removing the pruned units); any other as it is."""
    state = load_state(path)
    model = model_from_state(state, path)
    arch = registry.get(arch_of(state))
    if model.gates is not None:
        slim = slim_checkpoint(state, model, path)[0]
        slim["cfg"] = OmegaConf.create(slim["cfg"])  # as fairseq's loader gives it
        model, arch = model_from_state(slim, path), arch.slim
    return model, arch
