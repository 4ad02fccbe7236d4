"""Cost report of a preset or a checkpoint: parameters and MACs from the project's cost model
(core/cost_model.py), per component and per layer. Used by hjprune-cost, hjprune-export and the demo.

Gated checkpoints are measured with the masks hjprune-export keeps (at the run's budget, or the
deterministic masks as trained when it records none or ``as_trained``), with the expected cost under the
gates' keep probabilities alongside; slim, PARP and stock fairseq checkpoints exactly.
"""

from __future__ import annotations

from typing import Any, Dict

from ..convert.slim_export import export_masks
from ..core import cost_model
from ..core.parp import zero_count
from ..core.presets import PRESETS
from ..plugin.checkpoints import arch_of, model_from_state
from ..plugin.fairseq_import import load_state, read_checkpoint
from ..plugin.models import registry

EXPECTED_KEYS = ("encoder_gmacs", "size_sparsity", "macs_sparsity", "cnn_size_sparsity", "transformer_size_sparsity")


def describe(source: str, seconds: float, as_trained: bool = False) -> Dict[str, Any]:
    """Cost report of a preset name or a checkpoint path, at ``seconds`` of input (for MACs); a gated one under
    its exported masks (``as_trained``: its deterministic masks)."""
    if source in PRESETS:
        r = cost_model.report(PRESETS[source], None, seconds)
        r.update(source=source, kind="preset")
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
        else:
            r = cost_model.report(model.spec, None, seconds, vocab, ref, arch.per_frame)
            # slim: smaller than its reference (the dense ancestor); a dense model in the slim format (an import) is dense
            r["kind"] = "slim" if arch.kind != "gated" and model.spec != ref else "dense"
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
    r["source"] = source
    return r
