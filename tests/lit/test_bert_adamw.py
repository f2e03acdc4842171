"""BertAdamW (SPEC §3: AdamW without bias correction, per-tensor clipping at 1.0) as
multi-tensor `_foreach` operations: the same parameters as the former per-parameter loop,
and a hand-computed step."""

from __future__ import annotations

import math

import pytest
import torch

from lit_support import bert_adamw
from partial_relevance.lit.optim import BertAdamW, parameter_groups


def loop_step(params: list[torch.Tensor], state: dict, lr, betas, eps, wd, max_norm) -> None:
    """The former `BertAdamW.step` for one group: a Python loop over parameters."""
    beta1, beta2 = betas
    for param in params:
        if param.grad is None:
            continue
        grad = param.grad
        if max_norm > 0:
            norm = grad.norm()
            if norm > max_norm:
                grad = grad * (max_norm / (norm + 1e-6))
        s = state.setdefault(param, {})
        if not s:
            s["exp_avg"] = torch.zeros_like(param)
            s["exp_avg_sq"] = torch.zeros_like(param)
        s["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        update = s["exp_avg"] / (s["exp_avg_sq"].sqrt() + eps)
        if wd > 0:
            update = update + wd * param
        param.add_(update, alpha=-lr)


def test_foreach_step_equals_the_loop_over_five_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3), torch.nn.Linear(3, 2)
    )
    model[3].weight.requires_grad_(False)  # never has a gradient
    reference = [p.detach().clone() for p in model.parameters()]
    groups = parameter_groups(model, 0.01)
    optimizer = bert_adamw(lr=1e-2, eps=1e-6, max_grad_norm=1.0)(groups)
    ref_params = [p.clone() for p in reference]
    by_id = {id(p): r for p, r in zip(model.parameters(), ref_params, strict=True)}
    ref_groups = [[by_id[id(p)] for p in g["params"]] for g in groups]
    ref_state: dict = {}
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        optimizer.zero_grad()
        for p, r in zip(model.parameters(), ref_params, strict=True):
            if not p.requires_grad:
                r.grad = None
                continue
            # Some gradients far above the clipping norm, some below; one tensor skips a step.
            grad = torch.randn(p.shape, generator=gen) * (5.0 if p.ndim == 2 else 0.1)
            if step == 2 and p.ndim == 1 and p.shape[0] == 3:
                grad = None
            p.grad = None if grad is None else grad.clone()
            r.grad = None if grad is None else grad.clone()
        optimizer.step()
        for params, group in zip(ref_groups, groups, strict=True):
            loop_step(params, ref_state, 1e-2, (0.9, 0.999), 1e-6, group["weight_decay"], 1.0)
        for p, r in zip(model.parameters(), ref_params, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)
    assert not torch.equal(model[0].weight.detach(), reference[0])  # it did move
    torch.testing.assert_close(model[3].weight.detach(), reference[6])  # no gradient: kept


def test_one_hand_computed_step_with_clipping_and_decay():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.tensor([3.0, 4.0])  # norm 5 > 1: clipped to [0.6, 0.8] (up to 1e-6)
    BertAdamW(
        [p], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0
    ).step()
    g = torch.tensor([3.0, 4.0]) / (5.0 + 1e-6)
    m, v = 0.1 * g, 0.001 * g * g  # no bias correction
    update = m / (v.sqrt() + 1e-6) + 0.01 * torch.tensor([1.0, 2.0])
    expected = torch.tensor([1.0, 2.0]) - 0.1 * update
    torch.testing.assert_close(p.detach(), expected)
    # m / √v = 0.1 g / (√0.001 |g|) = √10 per coordinate (ε moves it by ~2e-5).
    assert p[0].item() == pytest.approx(1.0 - 0.1 * (math.sqrt(10) + 0.01), abs=1e-4)
