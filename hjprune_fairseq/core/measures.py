"""The registry of sparsity measures: what the constrained ``s`` of HJ-Pruning measures (Sec. 3).

A measure is a function of the expected cost and the dense cost (``cost_model.Cost``) returning
{constrained quantity: fraction removed}; each quantity gets its own target and its own multiplier
pair. Adding a measure is one decorated function here plus one ``mode/NAME.yaml`` per config set
(docs/ARCHITECTURE.md); the criteria's ``sparsity_mode`` choices, the target fields they read and
the check of the model's CNN gates all follow from the entry. A measure that needs more than the two
costs names it (``needs``, e.g. the ``latency_table``): the constraint passes it as a keyword argument.

"Transformer" is everything but the CNN (see cost_model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

Fractions = Dict[str, Any]  # {quantity: fraction removed}, tensors when differentiable


@dataclass(frozen=True)
class SparsityMeasure:
    """``quantities``: the names of what it constrains (one target each; a measure of one quantity
    is named after it). ``cnn_gates``: True if the model's CNN must be gated, False if it must not
    be, None if either; ``why`` completes the error message when it is not. ``budget_groups``: for a
    measure of several quantities, the gate groups that fit each quantity's budget at export
    (``core/budget.py``), fitted in the order of ``quantities``; empty: every group."""

    name: str
    fn: Callable[[Any, Any], Fractions]
    quantities: Tuple[str, ...]
    cnn_gates: Optional[bool] = None
    why: str = ""
    budget_groups: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    needs: Tuple[str, ...] = ()

    def __call__(self, expected, dense, **resources) -> Fractions:
        missing = [n for n in self.needs if resources.get(n) is None]
        if missing:
            raise ValueError(f"sparsity_mode={self.name} needs criterion.{' and criterion.'.join(missing)}")
        return self.fn(expected, dense, **{n: resources[n] for n in self.needs})

    def check_cnn_gates(self, cnn_gated: bool) -> None:
        if self.cnn_gates is not None and cnn_gated != self.cnn_gates:
            raise ValueError(f"sparsity_mode={self.name} {self.why}")


MEASURES: Dict[str, SparsityMeasure] = {}


def sparsity_measure(name: str, quantities: Optional[Tuple[str, ...]] = None, cnn_gates: Optional[bool] = None,
                     why: str = "", budget_groups: Optional[Dict[str, Tuple[str, ...]]] = None,
                     needs: Tuple[str, ...] = ()) -> Callable:
    """Register ``fn(expected, dense, **needs) -> {quantity: fraction removed}`` as the measure ``name``."""
    def register(fn: Callable[..., Fractions]) -> Callable:
        if name in MEASURES:
            raise ValueError(f"sparsity measure {name!r} is registered twice")
        MEASURES[name] = SparsityMeasure(name, fn, tuple(quantities or (name,)), cnn_gates, why,
                                         dict(budget_groups or {}), tuple(needs))
        return fn
    return register


def removed(kept, dense):
    return 1 - kept / dense


@sparsity_measure("size")
def size(expected, dense) -> Fractions:
    """Encoder parameters, CNN and Transformer together."""
    return {"size": removed(expected.encoder_params, dense.encoder_params)}


@sparsity_measure("macs")
def macs(expected, dense) -> Fractions:
    """Encoder multiply-accumulates at the virtual input length."""
    return {"macs": removed(expected.encoder_macs, dense.encoder_macs)}


@sparsity_measure("sep_size", quantities=("cnn", "transformer"), cnn_gates=True,
                  why="constrains the CNN: set model.prune_conv=true",
                  budget_groups={"cnn": ("conv",), "transformer": ("heads", "ffn", "hidden", "qk", "vo")})
def sep_size(expected, dense) -> Fractions:
    """CNN and Transformer parameters, each with its own target (Eq. 9)."""
    return {"cnn": removed(expected.params["cnn"], dense.params["cnn"]),
            "transformer": removed(expected.transformer_params, dense.transformer_params)}


@sparsity_measure("transformer_only", cnn_gates=False,
                  why="is the baseline that keeps the CNN: set model.prune_conv=false")
def transformer_only(expected, dense) -> Fractions:
    """The paper's baseline: the CNN is not gated, ``s`` is the Transformer's parameter sparsity."""
    return {"transformer_only": removed(expected.transformer_params, dense.transformer_params)}


@sparsity_measure("latency", needs=("latency_table",))
def latency(expected, dense, latency_table) -> Fractions:
    """Predicted latency from a measured table (``core/latency_table.LatencyTable``) at the expected kept counts."""
    return {"latency": removed(latency_table.predict(expected.counts), latency_table.predict(dense.counts))}
