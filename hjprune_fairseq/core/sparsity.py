"""The sparsity constraint of HJ-Pruning, shared by every hjprune criterion.

Augmented Lagrangian (Eq. 5-6, CoFiPruning): the criterion adds

    g = lambda1 * (s - t) + lambda2 * (s - t)^2            (one pair per constrained quantity)

minimised over weights and log_alpha and MAXIMISED over the multipliers (gradient ascent, done by the
``hjprune_adamw`` optimizer). ``s`` is an expected sparsity from the one cost model, ``t`` rises
linearly from 0 to its final value over ``warmup_updates`` and then holds.

What ``s`` measures is a mode of the registry in ``measures.py`` (size, sep_size, macs,
transformer_only, latency). Sparsity is measured against the dense structure of the model being pruned (its
``spec``).
The criteria's config (``criterions/sparsity_config.py``) builds a :class:`SparsityConstraint`.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import cost_model
from .hard_concrete import KeepsParameterDtype
from .latency_table import LatencyTable, check_family
from .measures import MEASURES

LAMBDA_GROUP = "hjprune_lambda"  # lambda1: rate optimizer.lambda_lr
LAMBDA2_GROUP = "hjprune_lambda2"  # lambda2: rate optimizer.lambda_lr * optimizer.lambda2_lr_scale


class SparsityConstraint(KeepsParameterDtype):
    """Holds the Lagrange multipliers and computes the penalty and its log values for a gated model.
    The multipliers stay float64 under fp16/bf16 training: their gradient, gap * sample_size * loss
    scale, accumulated over update_freq micro-batches, overflows 16 bits."""

    def __init__(self, mode: str, targets: Dict[str, float], warmup_updates: int, seconds: float,
                 latency_table: Optional[LatencyTable] = None, target_latency_ms: Optional[float] = None):
        """mode: a measure of :data:`measures.MEASURES`; targets: {constrained quantity: final target}
        (the measure's quantities); warmup_updates: updates over which the targets rise from 0;
        seconds: the virtual input length at which MACs are counted. latency_table: the measured table of
        the ``latency`` measure (with any mode, the log shows predicted latency); target_latency_ms: the
        latency target in ms instead of a fraction (``targets`` then omits it): converted to the fraction
        of the model's dense predicted latency when the model is first seen."""
        super().__init__()
        if mode not in MEASURES:
            raise ValueError(f"unknown sparsity mode {mode!r} (expected one of {sorted(MEASURES)})")
        self.latency_table = latency_table
        self.target_latency_ms = target_latency_ms
        if target_latency_ms is not None:
            if mode != "latency":
                raise ValueError(f"a latency target in ms needs sparsity_mode=latency, got {mode}")
            targets = {**targets, "latency": 0.0}  # set by check_model, from the model's dense latency
        if set(targets) != set(MEASURES[mode].quantities):
            raise ValueError(f"sparsity_mode={mode} constrains {list(MEASURES[mode].quantities)}, got targets for {sorted(targets)}")
        self.mode = mode
        self.measure = MEASURES[mode]
        self.names: List[str] = list(targets)
        # Plain floats: fairseq's .half() under fp16 would round a tensor target (0.4 -> 0.39990).
        self.final_targets: List[float] = [targets[n] for n in self.names]
        self.warmup_updates = warmup_updates
        self.seconds = seconds
        # lambda1, lambda2 per constrained quantity; both start at 0 (Sec. 2.2).
        self.lambda1 = nn.Parameter(torch.zeros(len(self.names), dtype=torch.float64))
        self.lambda2 = nn.Parameter(torch.zeros(len(self.names), dtype=torch.float64))
        self.lambda1.param_group = LAMBDA_GROUP
        self.lambda2.param_group = LAMBDA2_GROUP

    def check_model(self, model) -> None:
        gates = getattr(model, "gates", None)
        if gates is None:
            raise ValueError("the hjprune criteria need a gated model (model._name=hjprune_wav2vec_ctc with a prune_* group on)")
        self.measure.check_cnn_gates(gates.conv is not None)
        if self.latency_table is not None:
            check_family(self.latency_table, model.spec)
        if self.target_latency_ms is not None:
            dense_ms = 1000 * float(self.latency_table.predict(cost_model.counts(model.spec)))
            if not 0 < self.target_latency_ms < dense_ms:
                raise ValueError(f"criterion.target_latency_ms={self.target_latency_ms:g} must be positive and below "
                                 f"the dense model's predicted {dense_ms:.1f} ms ({self.latency_table.describe()})")
            self.final_targets[self.names.index("latency")] = 1 - self.target_latency_ms / dense_ms
            self.target_latency_ms = None  # converted once

    def target(self, num_updates: int) -> torch.Tensor:
        """Linear warm-up from 0 to the final targets over ``warmup_updates``, then constant."""
        ramp = 1.0 if self.warmup_updates <= 0 else min(1.0, num_updates / self.warmup_updates)
        return torch.tensor([t * ramp for t in self.final_targets], dtype=torch.float64)

    def forward(self, model, num_updates: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(penalty, values to log). The penalty is differentiable in log_alpha and the multipliers."""
        self.check_model(model)
        dense = cost_model.cost(model.spec, None, self.seconds)
        expected = cost_model.cost(model.spec, model.gates.keep_probs(), self.seconds)
        kept = expected.counts
        resources = {"latency_table": self.latency_table}
        s_all = self.measure(expected, dense, **resources)
        s = torch.stack([torch.as_tensor(s_all[n], dtype=torch.float64) for n in self.names])
        t = self.target(num_updates).to(s.device)
        gap = s - t
        penalty = (self.lambda1 * gap + self.lambda2 * gap * gap).sum()

        with torch.no_grad():
            masks = model.gates.deterministic()
            fixed = cost_model.cost(model.spec, masks, self.seconds)
            s_fixed = self.measure(fixed, dense, **resources)
        logs: Dict[str, float] = {"penalty": float(penalty.detach())}
        for i, n in enumerate(self.names):
            suffix = "" if len(self.names) == 1 else f"_{n}"
            logs[f"sparsity{suffix}"] = float(s[i].detach())
            logs[f"target{suffix}"] = float(t[i])
            logs[f"mask_sparsity{suffix}"] = float(s_fixed[n])
            logs[f"lambda1{suffix}"] = float(self.lambda1[i].detach())
            logs[f"lambda2{suffix}"] = float(self.lambda2[i].detach())
        logs["exp_mparams"] = cost_model.to_float(expected.encoder_params) / 1e6
        logs["exp_gmacs"] = cost_model.to_float(expected.encoder_macs) / 1e9
        if self.latency_table is not None:  # predicted at the table's input length, beside the MACs
            logs["exp_latency_ms"] = 1000 * float(self.latency_table.predict(kept).detach())
            logs["mask_latency_ms"] = 1000 * float(self.latency_table.predict(fixed.counts))
        logs["kept_conv"] = sum(cost_model.to_float(c) for c in kept.conv)
        logs["kept_heads"] = sum(cost_model.to_float(h) for h in kept.heads)
        logs["kept_ffn"] = sum(cost_model.to_float(f) for f in kept.ffn)
        logs["kept_hidden"] = cost_model.to_float(kept.hidden)
        if model.gates.qk is not None:  # fine-grained attention: dims summed over heads and layers
            logs["kept_qk_dims"] = sum(cost_model.to_float(q) for q in kept.qk)
            logs["kept_vo_dims"] = sum(cost_model.to_float(v) for v in kept.vo)
        return penalty, logs


LOG_PREFIX = "hjprune_"
LOG_COUNT = LOG_PREFIX + "n"


def add_to_logging_output(logging_output: Dict, logs: Dict[str, float]) -> None:
    """Values are stored summable (fairseq sums logging outputs across batches and workers)."""
    for k, v in logs.items():
        logging_output[LOG_PREFIX + k] = v
    logging_output[LOG_COUNT] = 1


def reduce_logged(logging_outputs: List[Dict]) -> Dict[str, float]:
    """Mean of every hjprune value over the batches (and workers) that logged one."""
    n = sum(log.get(LOG_COUNT, 0) for log in logging_outputs)
    if not n:
        return {}
    keys = {k for log in logging_outputs for k in log if k.startswith(LOG_PREFIX) and k != LOG_COUNT}
    return {k[len(LOG_PREFIX):]: sum(log.get(k, 0.0) for log in logging_outputs) / n for k in sorted(keys)}
