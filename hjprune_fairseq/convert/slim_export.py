"""The slim checkpoint of a gated one: its masks applied, the pruned units removed physically (``core.slim``),
written as the slim architecture the registry names (``hjprune-export``).

The masks meet the run's budget exactly (``core.budget``: the deterministic masks moved in log_alpha order
until the sparsity is within 0.5 points of the target; a ladder rung's checkpoint at its rung), or a budget
given; ``as_trained``: the deterministic masks as they are. A checkpoint that records no budget (no criterion
config, e.g. written by a script) is exported as trained, with a log line saying so.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch
from hjprune_manifests.output_dir import write_atomically
from omegaconf import OmegaConf

from ..core import cost_model
from ..core import latency_table as lt
from ..core.budget import BudgetResult, fit_budget, measure_sparsity
from ..core.gate_state import GateMasks
from ..core.measures import MEASURES
from ..core.slim import slim_encoder, slim_head
from ..core.spec import EncoderSpec
from ..plugin.checkpoints import arch_of, checkpoint_dict, model_from_state
from ..plugin.fairseq_import import load_state
from ..plugin.models import registry
from ..plugin.models.base import HJPruneModel
from ..plugin.run_budget import run_budget

logger = logging.getLogger(__name__)


def check_output_path(input_path: str, output_path: str, overwrite: bool) -> None:
    """Refuse an output that is the input (also through a symlink or hard link), or an existing file
    without ``overwrite``."""
    if os.path.realpath(input_path) == os.path.realpath(output_path) or (  # symlinks, hard links
            os.path.exists(input_path) and os.path.exists(output_path) and os.path.samefile(input_path, output_path)):
        raise ValueError(f"{output_path}: output would overwrite the input checkpoint")
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(f"{output_path}: already exists (pass --overwrite to replace it)")


def measure_of(quantities) -> str:
    """The measure of the registry whose quantities are ``quantities`` (``macs``; ``cnn`` and ``transformer``)."""
    found = [m.name for m in MEASURES.values() if set(m.quantities) == set(quantities)]
    if not found:
        raise ValueError(f"budget {sorted(quantities)}: no sparsity measure constrains exactly these (expected the "
                         f"quantities of one of {[list(m.quantities) for m in MEASURES.values()]})")
    return found[0]


def export_masks(state: Dict[str, Any], model: HJPruneModel, path: str, budget: Optional[Dict[str, float]] = None,
                 align: int = 1, as_trained: bool = False, latency_table: Optional[str] = None
                 ) -> Tuple[GateMasks, Optional[BudgetResult], str]:
    """The masks ``model`` (rebuilt from the checkpoint ``state`` read from ``path``) is exported with, the
    budget fit that made them (None: as trained) and a line saying which. ``budget``: {quantity: fraction}
    instead of the run's; ``latency_table``: the table of a latency budget instead of the run's."""
    if model.gates is None:
        return model.gate_masks(), None, "no gates: every unit kept"
    if as_trained:
        if align != 1 or budget is not None:
            raise ValueError(f"{path}: --as-trained keeps the trained masks; it takes no --budget or --align")
        return model.gates.deterministic(), None, "as trained (deterministic masks), as asked"
    run = run_budget(state, path)
    seconds = run.seconds if run is not None else 10.0
    if budget is not None:
        mode, targets = measure_of(budget), dict(budget)
    elif run is not None:
        mode, targets = run.mode, run.targets
    else:
        if align != 1:
            raise ValueError(f"{path}: records no sparsity target (cfg.criterion.sparsity_mode) to align within; "
                             "give one with --budget (e.g. --budget macs=0.5)")
        note = "as trained (deterministic masks): the checkpoint records no sparsity target (cfg.criterion)"
        logger.info("%s: %s", path, note)
        return model.gates.deterministic(), None, note
    measure = MEASURES[mode]
    measure.check_cnn_gates(model.gates.conv is not None)
    resources: Dict[str, Any] = {}
    if "latency_table" in measure.needs:
        table_path = latency_table or (run.latency_table if run is not None else None)
        if not table_path:
            raise ValueError(f"{path}: a {mode} budget needs the latency table it is measured with "
                             "(give --latency-table PATH)")
        table = lt.load(table_path)
        lt.check_family(table, model.spec)
        resources["latency_table"] = table
        if not targets and run is not None and run.target_latency_ms is not None:  # the run's target in ms
            dense_ms = 1000 * float(table.predict(cost_model.counts(model.spec)))
            targets = {"latency": 1 - run.target_latency_ms / dense_ms}
    result = fit_budget(model.gates, measure, targets, measure_sparsity(measure, model.spec, seconds, **resources),
                        align=align)
    if not result.met:  # a small model's units are coarse: the closest structure, and a word
        logger.warning("%s: the budget %s %s is not met within 0.5 points; the closest the units allow: %s "
                       "(align %d)", path, mode, targets, result.delivered, align)
    note = (f"budget {mode} {targets}: as trained {result.before}, delivered {result.delivered}; units added "
            f"{result.added}, removed {result.removed}")
    logger.info("%s: %s", path, note)
    return result.masks, result, note


def export_slim(gated_path: str, slim_path: str, overwrite: bool = False, allow_no_gates: bool = False,
                budget: Optional[Dict[str, float]] = None, align: int = 1, as_trained: bool = False,
                latency_table: Optional[str] = None) -> Dict[str, Any]:
    """Write the physically pruned model of ``gated_path`` to ``slim_path``, at the run's budget, at ``budget``
    ({quantity: fraction} of a measure), or ``as_trained`` (see the module's docstring); ``align``: kept counts
    in multiples of it. A model without gates (e.g. a fine-tuned one) is refused unless ``allow_no_gates`` (a
    dense copy). Returns the slim spec, the masks, the budget fit (None: as trained) and a line saying which."""
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
    masks, fitted, note = export_masks(state, model, gated_path, budget, align, as_trained, latency_table)
    out, spec, masks = slim_checkpoint(state, model, gated_path, masks)
    write_atomically(slim_path, lambda tmp: torch.save(out, tmp))
    return {"spec": spec, "masks": masks, "budget": fitted, "note": note}


def slim_checkpoint(state: Dict[str, Any], model: HJPruneModel, path: str,
                    masks: Optional[GateMasks] = None) -> Tuple[Dict[str, Any], EncoderSpec, GateMasks]:
    """The slim checkpoint (the dict ``torch.save`` writes), its spec and the masks applied, of ``model``:
    a gated model rebuilt from the checkpoint ``state`` read from ``path``, with ``masks`` (default: those of
    :func:`export_masks` at the run's budget; every unit kept where it has no gates: a dense copy in the slim
    format)."""
    arch = registry.get(arch_of(state))
    if masks is None:
        masks = export_masks(state, model, path)[0]
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
    model (its masks at the run's budget folded in by removing the pruned units); any other as it is."""
    state = load_state(path)
    model = model_from_state(state, path)
    arch = registry.get(arch_of(state))
    if model.gates is not None:
        slim = slim_checkpoint(state, model, path)[0]
        slim["cfg"] = OmegaConf.create(slim["cfg"])  # as fairseq's loader gives it
        model, arch = model_from_state(slim, path), arch.slim
    return model, arch
