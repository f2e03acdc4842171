"""Optimisers and schedules shared by the LightningModules.

`BertAdamW` is the optimiser MS-SL and GMMFormer train with (SPEC §3 Training [decision]):
AdamW without bias correction, decoupled weight decay, and gradient clipping per parameter
tensor at norm 1.0 inside the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class BertAdamW(Optimizer):
    """Adam with decoupled weight decay, no bias correction, per-tensor grad clipping.

    Every hyperparameter is required: the values live in `conf/model/optimizer/bert_adamw.yaml`
    (lr 2.5e-4: PRVR §4.1.3; the rest MS-SL's, SPEC §3).
    """

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        max_grad_norm: float,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"optimizer.lr must be positive, got {lr}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        """One step over every parameter with a gradient, as multi-tensor (`torch._foreach_*`)
        operations per group instead of a Python loop over parameters (issue #19):

        g ← g · c / (‖g‖ + 1e-6) where ‖g‖ > c (per tensor, c = `max_grad_norm`);
        m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;
        p ← p − lr · (m / (√v + ε) + wd · p)   (no bias correction).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            beta1, beta2 = group["betas"]
            max_norm = group["max_grad_norm"]
            if max_norm > 0:
                norms = torch.stack(torch._foreach_norm(grads))  # [P] per-tensor L2 norms
                scale = torch.where(norms > max_norm, max_norm / (norms + 1e-6), 1.0)
                grads = torch._foreach_mul(grads, list(scale.to(grads[0].dtype).unbind()))
            for param in params:
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            updates = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(updates, group["eps"])
            updates = torch._foreach_div(exp_avgs, updates)
            if group["weight_decay"] > 0:
                torch._foreach_add_(updates, torch._foreach_mul(params, group["weight_decay"]))
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay on weight matrices, none on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "norm" in name or "position" in name or "embedding" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_linear_schedule(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.01
) -> LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then linear decay to 0."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def optimizer_with_warmup(
    module: nn.Module,
    optimizer_factory: Callable[..., Optimizer],
    warmup_fraction: float,
    total_steps: int,
) -> Any:
    """`configure_optimizers` of the PREM modules (SPEC §4-§5): the partial optimizer config
    (its `weight_decay` keyword, no decay on biases, norms and embeddings), with a linear
    warm-up / decay schedule over `total_steps` when `warmup_fraction` is set."""
    weight_decay = getattr(optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
    optimizer = optimizer_factory(parameter_groups(module, weight_decay))
    if not warmup_fraction:
        return optimizer
    scheduler = warmup_linear_schedule(optimizer, max(1, total_steps), warmup_fraction)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
    }
