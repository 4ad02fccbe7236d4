"""Cost report of a preset or a checkpoint: parameters and MACs from the project's cost model
(core/cost_model.py), per component and per layer. Used by hjprune-cost, hjprune-export and the demo.

Gated checkpoints are measured with the masks hjprune-export keeps (at the run's budget, or the
deterministic masks as trained when it records none or ``as_trained``), with the expected cost under the
gates' keep probabilities alongside; slim, PARP and stock fairseq checkpoints exactly. With a latency table
(``core/latency_table.py``), the predicted latency per component at the table's input length, under the same
masks (and the gates' expected one). Gated and slim checkpoints also get their sparsity in every registered
measure (``sparsity``; latency with a table), as the criterion and export measure it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..convert.slim_export import export_masks
from ..core import cost_model
from ..core import latency_table as lt
from ..core.budget import measure_sparsity
from ..core.measures import MEASURES
from ..core.parp import zero_count
from ..core.presets import PRESETS
from ..plugin.checkpoints import arch_of, model_from_state
from ..plugin.fairseq_import import load_state, read_checkpoint
from ..plugin.models import registry

EXPECTED_KEYS = ("encoder_gmacs", "size_sparsity", "macs_sparsity", "cnn_size_sparsity", "transformer_size_sparsity")


def latency_report(table: lt.LatencyTable, spec, masks=None, probs=None) -> Dict[str, Any]:
    """Predicted ms per component of ``spec`` under ``masks`` (and under keep probabilities ``probs``)."""
    r = {"table": table.source, "backend": table.backend, "threads": table.threads, "dtype": table.data["dtype"],
         "seconds": table.seconds, "machine": table.data["machine"], "foreign": lt.foreign(table),
         "ms": lt.predicted_ms_by_component(table, spec, masks),
         "dense_ms": lt.predicted_ms_by_component(table, table.spec)["total"]}
    if probs is not None:
        r["expected_ms"] = lt.predicted_ms_by_component(table, spec, probs)["total"]
    return r


def sparsity_by_measure(spec, masks, seconds: float, reference, table: Optional[lt.LatencyTable]
                        ) -> Dict[str, Dict[str, float]]:
    """{measure: {quantity: fraction removed}} of ``spec`` under ``masks`` (None: all of it) against
    ``reference``, for every registered measure whose needs are met (latency: ``table``)."""
    resources = {"latency_table": table}
    return {name: measure_sparsity(m, spec, seconds, reference, **resources)(masks) for name, m in MEASURES.items()
            if all(resources.get(n) is not None for n in m.needs)}


def describe(source: str, seconds: float, as_trained: bool = False, latency_table: Optional[str] = None
             ) -> Dict[str, Any]:
    """Cost report of a preset name or a checkpoint path, at ``seconds`` of input (for MACs); a gated one under
    its exported masks (``as_trained``: its deterministic masks); with ``latency_table`` (a path), the predicted
    latency under ``"latency"``."""
    table = lt.load(latency_table) if latency_table else None
    if table is not None:
        lt.warn_if_foreign(table)
    if source in PRESETS:
        r = cost_model.report(PRESETS[source], None, seconds)
        r.update(source=source, kind="preset")
        if table is not None:
            r["latency"] = latency_report(table, PRESETS[source])
        return r
    state = load_state(source)
    arch = registry.find(arch_of(state))
    if arch is not None:
        model = model_from_state(state, source)
        vocab = 0 if arch.head == "distill" else model.proj.out_features  # distillation heads are training-only
        ref = model.reference_spec
        if model.gates is not None:
            masks, fitted, _ = (model.gates.deterministic(), None, "") if as_trained else export_masks(state, model, source)
            r = cost_model.report(model.spec, masks, seconds, vocab, ref, arch.per_frame)
            r["kind"] = "gated (deterministic masks)" if fitted is None else "gated (masks at the run's budget, as exported)"
            expected = cost_model.report(model.spec, model.gates.keep_probs(), seconds, vocab, ref, arch.per_frame)
            r["expected"] = {k: expected[k] for k in EXPECTED_KEYS}
            if table is not None:
                r["latency"] = latency_report(table, model.spec, masks, model.gates.keep_probs())
            r["sparsity"] = sparsity_by_measure(model.spec, masks, seconds, ref, table)
        else:
            r = cost_model.report(model.spec, None, seconds, vocab, ref, arch.per_frame)
            # slim: smaller than its reference (the dense ancestor); a dense model in the slim format (an import) is dense
            r["kind"] = "slim" if arch.kind != "gated" and model.spec != ref else "dense"
            if table is not None:
                r["latency"] = latency_report(table, model.spec)
            r["sparsity"] = sparsity_by_measure(model.spec, None, seconds, ref, table)
        if arch.kind == "parp":
            # Unstructured zeros: the structure (and so the MACs of dense kernels) is unchanged.
            zeros, _ = zero_count(model.encoder)
            r["kind"] = "dense with unstructured zeros (PARP)"
            r["zero_weights"] = zeros
            r["nonzero_encoder_params"] = r["encoder_params"] - zeros
            r["nonzero_size_sparsity"] = zeros / r["encoder_params"]
    else:
        ckpt = read_checkpoint(source)
        vocab = 0 if ckpt.head_state is None else ckpt.head_state["weight"].shape[0]
        r = cost_model.report(ckpt.spec, None, seconds, vocab)
        r["kind"] = f"fairseq {ckpt.arch}"
        if table is not None:
            r["latency"] = latency_report(table, ckpt.spec)
    r["source"] = source
    return r
