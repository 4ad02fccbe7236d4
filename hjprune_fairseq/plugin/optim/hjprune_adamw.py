"""``hjprune_adamw``: torch AdamW with the four parameter groups HJ-Pruning needs.

- weights: every model parameter; the learning rate follows fairseq's lr scheduler;
- gates: HardConcrete ``log_alpha`` (tag ``hjprune_gate``): constant ``gate_lr``, no weight decay;
- lambda1 and lambda2: the criterion's Lagrange multipliers (tags ``hjprune_lambda`` and
  ``hjprune_lambda2``), each in its own group: constant ``lambda_lr`` (times ``lambda2_lr_scale`` for
  lambda2), no weight decay, gradient ASCENT through AdamW's ``maximize`` (a negative lr would be
  overwritten by fairseq's ``set_lr``, which writes every group).

Why lambda2 may get a faster rate: AdamW moves each multiplier by about its lr per update whatever
the size of its gradient, so after n updates lambda2 is about n * lr2 while one update of lambda1
shifts the sparsity the gates settle at by about lr1 / (2 * lambda2) = lr1 / (2 * n * lr2). With
lr1 = lr2 (the paper) that is 1 / (2n): negligible after the paper's tens of thousands of updates,
a limit cycle of several points of sparsity in a run of a few hundred. A larger lambda2 rate
shrinks it by that factor (see "Short pruning runs" in the README).

The scheduler drives the weights' lr. With ``fixed_lrs_follow_schedule`` (default) the gate and
multiplier lrs follow the schedule's DECAY once it has passed its peak: ``gate_lr * lr / peak_lr``
(as a torch scheduler scales every group, DPHuBERT's recipe), so the min-max game settles on the
target instead of oscillating around it. "Past the peak" is the lr having reached its peak or having
fallen since the previous update (after ``--reset-optimizer`` in the decay, from the second update). They are not slowed during the lr warm-up, when the target
sparsity rises and the gates must keep up with it.

Only the weights are clipped, in every precision: in fp32 and under ``common.amp`` by ``clip_grad_norm``; under
``common.fp16`` / ``bf16`` fairseq's ``FP16Optimizer`` clips, and hands its factor to ``multiply_clipped_grads``
(compat quirk 17). In distributed runs gradients are averaged in their own dtype (``all_reduce_grads``, compat
quirk 16): the fp32 gates and fp64 multipliers never travel in 16 bits.
"""


import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from ...core.hard_concrete import GATE_GROUP
from ...core.sparsity import LAMBDA2_GROUP, LAMBDA_GROUP
from .. import compat

logger = logging.getLogger(__name__)
compat.clip_only_what_the_optimizer_clips()  # FP16Optimizer would clip gates and multipliers too (quirk 17)
ROLE = "hjprune_role"
PAST_PEAK = "hjprune_past_peak"  # kept in the weights group, so it is saved with the optimizer state
LAST_LR = "hjprune_last_lr"  # the lr of the previous set_lr call (same group)


@dataclass
class HJPruneAdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.98), metadata={"help": "betas of AdamW (all groups)"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon of AdamW (all groups)"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay of the model weights only"})
    gate_lr: float = field(default=0.02, metadata={"help": "constant lr of the gates' log_alpha (paper: 0.02 or 0.05)"})
    lambda_lr: float = field(default=0.02, metadata={"help": "constant lr of the Lagrange multipliers, by gradient ascent (paper: 0.02 or 0.05)"})
    lambda2_lr_scale: float = field(
        default=1.0, metadata={"help": "lambda2's lr is lambda_lr times this (paper: 1); > 1 damps the swing of the sparsity "
                                       "around its target in short runs (tiny configs: 10)"}
    )
    fixed_lrs_follow_schedule: bool = field(
        default=True, metadata={"help": "once the lr schedule has passed its peak, scale gate_lr and lambda_lr by "
                                        "lr / peak lr (false: keep them constant)"}
    )
    lr: List[float] = II("optimization.lr")
    memory_efficient_fp16: bool = II("common.memory_efficient_fp16")
    memory_efficient_bf16: bool = II("common.memory_efficient_bf16")
    ddp_backend: Optional[str] = field(
        default=II("distributed_training.ddp_backend"), metadata={"help": "read to refuse the backends that would "
                                                                          "reduce gates and multipliers in 16 bits"}
    )
    ddp_comm_hook: Optional[str] = field(
        default=II("distributed_training.ddp_comm_hook"), metadata={"help": "read to refuse the fp16 hook"}
    )


def split_params(params: List[torch.nn.Parameter]) -> Dict[str, List[torch.nn.Parameter]]:
    groups: Dict[str, List[torch.nn.Parameter]] = {"weights": [], "gates": [], "lambda1": [], "lambda2": []}
    role = {GATE_GROUP: "gates", LAMBDA_GROUP: "lambda1", LAMBDA2_GROUP: "lambda2"}
    for p in params:
        groups[role.get(getattr(p, "param_group", None), "weights")].append(p)
    return groups


@register_optimizer("hjprune_adamw", dataclass=HJPruneAdamWConfig)
class HJPruneAdamW(FairseqOptimizer):
    @compat.one_line_errors
    def __init__(self, cfg: HJPruneAdamWConfig, params):
        super().__init__(cfg)
        params = list(params)
        compat.check_not_flattened(params)
        for mode in ("memory_efficient_fp16", "memory_efficient_bf16"):
            if OmegaConf.select(cfg, mode, throw_on_resolution_failure=False):  # None outside a full config
                raise ValueError(f"common.{mode}=true is not supported by hjprune_adamw (torch AdamW would step the "
                                 "16-bit weights with 16-bit moments); use common.fp16 or common.bf16 with "
                                 "common.fp16_no_flatten_grads=true, or common.amp")
        compat.check_ddp_reduces_in_own_dtype(OmegaConf.select(cfg, "ddp_backend", throw_on_resolution_failure=False),
                                              OmegaConf.select(cfg, "ddp_comm_hook", throw_on_resolution_failure=False))
        if cfg.gate_lr <= 0 or cfg.lambda_lr <= 0 or cfg.lambda2_lr_scale <= 0:
            raise ValueError(f"optimizer.gate_lr, optimizer.lambda_lr and optimizer.lambda2_lr_scale must be positive, "
                             f"got {cfg.gate_lr}, {cfg.lambda_lr}, {cfg.lambda2_lr_scale}")
        groups = split_params(params)
        self.weight_params = groups["weights"]
        self.constraint_params = groups["gates"] + groups["lambda1"] + groups["lambda2"]
        betas = eval(cfg.adam_betas) if isinstance(cfg.adam_betas, str) else tuple(cfg.adam_betas)
        param_groups = [{"params": groups["weights"], "lr": cfg.lr[0], "weight_decay": cfg.weight_decay, ROLE: "weights",
                         PAST_PEAK: False}]
        param_groups += [
            dict(g, params=groups[g[ROLE]]) for g in self._fixed_groups() if groups[g[ROLE]]
        ]
        # foreach: one multi-tensor update per group (torch's per-tensor loop is the CPU default).
        self._optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr[0], betas=betas, eps=cfg.adam_eps, foreach=True)
        logger.info(
            "hjprune_adamw: %d weight tensors, %d gate tensors (lr %g), multipliers by ascent: lambda1 (lr %g), lambda2 (lr %g)",
            len(groups["weights"]), len(groups["gates"]), cfg.gate_lr, cfg.lambda_lr, cfg.lambda_lr * cfg.lambda2_lr_scale,
        )

    def _fixed_groups(self) -> List[Dict[str, Any]]:
        """Settings of the groups the scheduler does not drive (re-applied after loading a state)."""
        return [
            {ROLE: "gates", "lr": self.cfg.gate_lr, "weight_decay": 0.0, "maximize": False},
            {ROLE: "lambda1", "lr": self.cfg.lambda_lr, "weight_decay": 0.0, "maximize": True},
            {ROLE: "lambda2", "lr": self.cfg.lambda_lr * self.cfg.lambda2_lr_scale, "weight_decay": 0.0, "maximize": True},
        ]

    @property
    def optimizer_config(self) -> Dict[str, Any]:
        return {"lr": self.cfg.lr[0], "weight_decay": self.cfg.weight_decay, "eps": self.cfg.adam_eps}

    def get_lr(self) -> float:
        return self.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        peak = self.cfg.lr[0]
        weights = self.param_groups[0]
        # Past the peak once the lr reached it, or once it fell: a schedule only falls after its peak.
        # The second rule finds the decay after --reset-optimizer, where the peak is never seen again.
        previous = weights.get(LAST_LR)
        fell = previous is not None and lr < previous * (1 - 1e-9)
        weights[PAST_PEAK] = weights.get(PAST_PEAK, False) or lr >= peak * (1 - 1e-6) or fell
        weights[LAST_LR] = lr
        scale = lr / peak if self.cfg.fixed_lrs_follow_schedule and weights[PAST_PEAK] else 1.0
        fixed = {g[ROLE]: g["lr"] for g in self._fixed_groups()}
        for group in self.param_groups:
            group["lr"] = lr if group[ROLE] == "weights" else fixed[group[ROLE]] * scale

    def load_state_dict(self, state_dict, optimizer_overrides=None) -> None:
        super().load_state_dict(state_dict, optimizer_overrides)
        # The current config wins over the checkpoint for the fixed groups (fairseq's convention);
        # the lr scheduler then sets every group's lr for the current update.
        fixed = {g[ROLE]: g for g in self._fixed_groups()}
        for group in self.param_groups:
            if group[ROLE] in fixed:
                group.update(fixed[group[ROLE]])
        self.set_lr(self.param_groups[0]["lr"])

    def all_reduce_grads(self, module) -> None:
        """Average the gradients of ``module`` (the trainer's model or criterion) over the data-parallel
        group, each dtype in its own (compat quirk 16); pytorch_ddp reduced them during backward."""
        if not compat.all_reduce_grads_by_dtype(module):
            super().all_reduce_grads(module)

    def multiply_clipped_grads(self, c) -> None:
        """Apply the clip factor ``c`` that ``FP16Optimizer.clip_grad_norm`` computed from the weights'
        norm to the weights' fp32 masters only (compat quirk 17)."""
        for p in self.weight_params:
            if p.grad is not None:
                p.grad.mul_(c.to(p.grad.device) if torch.is_tensor(c) else c)

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        """Clip (and report the norm of) the model weights only; gates and multipliers are untouched, but
        a non-finite gradient among them makes the reported norm inf (an overflow to the fp16 scaler)."""
        norm = utils.clip_grad_norm_(self.weight_params, max_norm, aggregate_norm_fn)
        grads = [p.grad for p in self.constraint_params if p.grad is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            logger.info("non-finite gradient in a gate or multiplier: reported as an overflow")
            return torch.full_like(torch.as_tensor(norm, dtype=torch.float32), float("inf"))
        return norm
