"""Building blocks shared by every model of the suite (SPEC §2).

`FeatureProjection`, `TransformerLayer`, `TransformerEncoder` (learned positions + layers),
`AdditivePooling` (PRVR Eq. 1-2), `ModalityPooling` (PREM Eq. 5) and the masked reductions
that never let padding win.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

aten = torch.ops.aten
# The ops whose outputs `recompute_elementwise` keeps for backward: matrix products and fused
# attention. Everything between them (LayerNorm, dropout, GELU, ReLU, softmax, adds) is run
# again in backward from these, dropout masks replayed from the saved RNG state.
_KEPT_OPS = frozenset(
    {
        aten.mm.default,
        aten.addmm.default,
        aten.bmm.default,
        aten.baddbmm.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
    }
)


def _keep_matmuls(_ctx: object, op: object, *_args: object, **_kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_elementwise(function: Callable[..., Tensor], *args: Tensor | None) -> Tensor:
    """`function(*args)` keeping only its matmul outputs for backward (selective activation
    checkpointing): the elementwise work between them is recomputed, the same numbers (RNG
    state replayed) for less saved memory and a little more compute.

    Under autocast the region runs with autocast's weight-cast cache off: a cached cast is
    skipped in the forward but redone in the recomputation, which selective checkpointing
    refuses (the ops must replay one to one)."""
    device = next((a.device.type for a in args if a is not None), "cpu")
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        function = _without_cast_cache(function, device, dtype)
    return checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=functools.partial(create_selective_checkpoint_contexts, _keep_matmuls),
    )


def _without_cast_cache(
    function: Callable[..., Tensor], device: str, dtype: torch.dtype
) -> Callable[..., Tensor]:
    """`function` run under autocast to `dtype` with the weight-cast cache disabled."""

    @functools.wraps(function)
    def run(*args: Tensor | None) -> Tensor:
        with torch.autocast(device, dtype=dtype, cache_enabled=False):
            return function(*args)

    return run


# Dropout keep masks come from 16 random bits an element: p is applied as the nearest multiple
# of 2⁻¹⁶ (0.15 -> 0.149994), four mask elements per int64 draw.
_MASK_LEVELS = 2**16


def keep_mask(shape: torch.Size, p: float, device: torch.device | str) -> Tensor:
    """Bernoulli(1 - p) keep mask (bool), p rounded to a multiple of 2⁻¹⁶.

    One `random_` over the full int64 range viewed as four uniform int16 per draw, then one
    comparison: on CPU ~4× less time than `bernoulli_` into a float tensor, and a 1-byte mask.
    """
    numel = shape.numel()
    threshold = round(p * _MASK_LEVELS) - _MASK_LEVELS // 2  # keep int16 values >= this
    if threshold >= _MASK_LEVELS // 2:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    draws = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    if draws.device.type == "cpu":
        # The draws of random_(-2⁶³, 2⁶³ - 1) without its 64-bit modulo (a fifth of the CPU
        # time): that call returns the generator's 64 bits u as (u mod (2⁶⁴ - 1)) - 2⁶³, the
        # full-range call returns u itself, and u - 2⁶³ flips only the top bit. The masks are
        # those of the modulo form, except when u = 2⁶⁴ - 1 (probability 2⁻⁶⁴ a draw).
        draws.random_(-(2**63), None).bitwise_xor_(-(2**63))
    else:
        draws.random_(-(2**63), 2**63 - 1)  # every bit uniform (plain random_() leaves sign 0)
    return (draws.view(torch.int16)[:numel] >= threshold).view(shape)


# Elements a masking product takes at once. CPU `torch.where(keep, x, 0)` is not vectorised
# (20.6 ms for a [128, 128, 1536] fp32 tensor on a 2-core EPYC), a product by the bool mask
# viewed as uint8 is (8.7 ms; 5.2 ms in place; bf16 20.4 -> 6.4 ms), but torch first casts the
# mask to x's dtype: in chunks that copy stays 4 MiB (fp32) instead of 4 bytes an element.
_MASK_CHUNK = 1 << 20
# True while torch.compile traces (torch >= 2.3; older torch: traced like eager code).
_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)


def _chunked(x: Tensor, keep: Tensor) -> bool:
    """Whether x · keep can run as products over flat chunks (same shape, both contiguous,
    eager: a compiled graph fuses the one product itself)."""
    return (
        x.shape == keep.shape and x.is_contiguous() and keep.is_contiguous() and not _is_compiling()
    )


def _chunked_product(x: Tensor, keep: Tensor, out: Tensor) -> Tensor:
    """out = x · keep over flat chunks, the mask viewed as uint8 (`out` may be `x`)."""
    flat, flat_keep, flat_out = x.view(-1), keep.view(-1).view(torch.uint8), out.view(-1)
    for lo in range(0, flat.numel(), _MASK_CHUNK):
        hi = lo + _MASK_CHUNK
        torch.mul(flat[lo:hi], flat_keep[lo:hi], out=flat_out[lo:hi])
    return out


def mask_(x: Tensor, keep: Tensor) -> Tensor:
    """x · keep in place (keep: bool, x's shape) -> x. A product, as torch's own dropout: a
    NaN or inf at a dropped position stays non-finite (`where` would zero it)."""
    return _chunked_product(x, keep, x) if _chunked(x, keep) else x.mul_(keep)


def masked(x: Tensor, keep: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """x · keep as a new tensor (keep: bool, x's shape; no autograd: see `apply_keep`), in
    `dtype` when given: the product is formed in x's dtype and rounded as it is written, one
    pass instead of a cast and a product."""
    dtype = x.dtype if dtype is None else dtype
    if not _chunked(x, keep):
        return (x * keep).to(dtype)
    return _chunked_product(x, keep, torch.empty(x.shape, dtype=dtype, device=x.device))


class _KeepMask(torch.autograd.Function):
    """y = x · keep (bool) by `masked`, saving only the bool mask for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor) -> Tensor:
        ctx.save_for_backward(keep)
        return masked(x, keep)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return masked(grad.contiguous(), keep), None


def apply_keep(x: Tensor, keep: Tensor | None, scale: float = 1.0) -> Tensor:
    """`x · keep · scale` as one masking product (+ one in-place scale when `scale != 1`);
    autograd keeps only the bool mask for backward."""
    if keep is None:
        return x
    out = _KeepMask.apply(x, keep)
    return out if scale == 1.0 else out.mul_(scale)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same arguments, no parameters) with a cheaper CPU training path.

    Its mask comes from `keep_mask` (16 bits an element, p to 2⁻¹⁶) and only that bool mask is
    kept for backward (CPU `F.dropout` keeps a float copy: 4 bytes an element in fp32). The
    masks differ from `nn.Dropout`'s for the same seed (another RNG stream); eval and p = 0
    are the identity. Beside a Linear, `dropout_linear` folds its 1/(1 - p)
    into the Linear's (small) weights instead of scaling the (large) activations.
    """

    def keep(self, x: Tensor) -> Tensor | None:
        """The keep mask for `x` in training (None in eval or at p = 0)."""
        if not self.training or self.p == 0.0:
            return None
        return keep_mask(x.shape, self.p, x.device)

    @property
    def scale(self) -> float:
        """1/(1 - p) in training, 1 otherwise (what kept values are multiplied by)."""
        return 1.0 / (1.0 - self.p) if self.training and 0.0 < self.p < 1.0 else 1.0

    def forward(self, x: Tensor) -> Tensor:  # p = 1: an all-False mask, scale 1 -> zeros
        return apply_keep(x, self.keep(x), self.scale)


def _keep_of(dropout: Dropout | None, x: Tensor) -> Tensor | None:
    return None if dropout is None else dropout.keep(x)


def _folded_weights(
    linear: nn.Linear, before: Dropout | None, after: Dropout | None
) -> tuple[Tensor, Tensor | None]:
    """The Linear's weight times both dropouts' 1/(1 - p) and its bias times `after`'s (each
    scale 1 in eval, at p = 0 or p = 1, where no product is formed)."""
    weight, bias = linear.weight, linear.bias
    for dropout in (before, after):  # one product each, in this order (the numbers pinned)
        if dropout is not None and dropout.scale != 1.0:
            weight = weight * dropout.scale
    if bias is not None and after is not None and after.scale != 1.0:
        bias = bias * after.scale
    return weight, bias


def dropout_linear(
    x: Tensor, linear: nn.Linear, before: Dropout | None = None, after: Dropout | None = None
) -> Tensor:
    """`after(linear(before(x)))` with both dropouts' 1/(1 - p) folded into the Linear's weight
    (and `after`'s into its bias): the large activations are only masked, never scaled, in
    forward and backward. Same numbers as the unfused chain up to float rounding."""
    weight, bias = _folded_weights(linear, before, after)
    y = F.linear(apply_keep(x, _keep_of(before, x)), weight, bias)
    return apply_keep(y, _keep_of(after, y))


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul on `x` in (x's own dtype without autocast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _masked_linear_backward(
    grad: Tensor, hidden: Tensor, weight: Tensor, keep: Tensor | None, has_bias: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Gradients of y = hidden Wᵀ + b, hidden = keep · h recomputed by the caller, all in
    grad's dtype -> (∂W [E, F], ∂b [E] or None, ∂h [..., F] masked by `keep`). Pass `hidden`
    as a temporary: it is freed before ∂h exists, so one [..., F] temporary lives at a time."""
    flat_grad = grad.reshape(-1, grad.shape[-1])  # [N, E]
    grad_weight = flat_grad.t().mm(hidden.reshape(-1, hidden.shape[-1]))  # [E, F]
    del hidden
    grad_bias = flat_grad.sum(0) if has_bias else None
    grad_hidden = grad.matmul(weight.to(grad.dtype))  # [..., F]
    if keep is not None:  # in place, the mask's float copy a chunk at a time
        mask_(grad_hidden, keep)
    return grad_weight, grad_bias, grad_hidden


class _GeluMaskedLinear(torch.autograd.Function):
    """y = (keep · gelu(h)) Wᵀ + b saving h and the bool mask for backward, and the masked GELU
    output only in a 16-bit dtype. In fp32 that output, the FFN's widest activation, is
    recomputed in backward (one GELU and one masking pass) instead of being kept twice (by GELU
    for its gradient and by the Linear for its weight's). In bf16 it costs 2 bytes an element
    and its recompute (erf on an emulated or converted type: ~21 ms for [128, 128, 1536] on a
    2-core EPYC) more time than it saves memory: it is kept once. Same numbers either way."""

    @staticmethod
    def forward(
        ctx: Any,
        pre: Tensor,  # [..., F] the first Linear's output
        keep: Tensor | None,  # [..., F] bool, or None
        weight: Tensor,  # [D, F]
        bias: Tensor | None,  # [D]
        approximate: str,
        dtype: torch.dtype,
    ) -> Tensor:
        with torch.autocast(pre.device.type, enabled=False):
            hidden = F.gelu(pre.to(dtype), approximate=approximate)  # a new tensor
            if keep is not None:
                mask_(hidden, keep)
            out = F.linear(hidden, weight.to(dtype), None if bias is None else bias.to(dtype))
        kept = hidden if hidden.element_size() < 4 else None
        ctx.save_for_backward(pre, keep, weight, kept)
        ctx.approximate, ctx.dtype, ctx.has_bias = approximate, dtype, bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pre, keep, weight, hidden = ctx.saved_tensors
        dtype = ctx.dtype
        with torch.autocast(grad.device.type, enabled=False):
            pre_c = pre.to(dtype)
            grad_weight, grad_bias, grad_hidden = _masked_linear_backward(
                grad.to(dtype),
                # recomputed (the numbers of forward) as a temporary: no local name keeps it
                # alive while ∂h is formed
                apply_keep(F.gelu(pre_c, approximate=ctx.approximate), keep)
                if hidden is None
                else hidden,
                weight,
                keep,
                ctx.has_bias,
            )
            grad_pre = torch.ops.aten.gelu_backward(grad_hidden, pre_c, approximate=ctx.approximate)
            del grad_hidden
        return (
            grad_pre.to(pre.dtype),
            None,
            grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(weight.dtype),
            None,
            None,
        )


def gelu_dropout_linear(
    pre: Tensor,
    linear: nn.Linear,
    before: Dropout | None = None,
    after: Dropout | None = None,
    approximate: str = "none",
) -> Tensor:
    """`after(linear(before(gelu(pre))))` as `dropout_linear` computes it (1/(1 - p) folded
    into the weight, the same masks drawn in the same order), keeping only `pre`, the masks and
    (in a 16-bit dtype) the masked GELU output for backward in training (`_GeluMaskedLinear`);
    eval and no-grad take the plain path."""
    needs_grad = torch.is_grad_enabled() and (pre.requires_grad or linear.weight.requires_grad)
    if not needs_grad:
        return dropout_linear(F.gelu(pre, approximate=approximate), linear, before, after)
    weight, bias = _folded_weights(linear, before, after)
    keep = _keep_of(before, pre)  # gelu(pre) has pre's shape
    y = _GeluMaskedLinear.apply(pre, keep, weight, bias, approximate, _compute_dtype(pre))
    return apply_keep(y, _keep_of(after, y))


class _NormDropoutLinear(torch.autograd.Function):
    """(LayerNorm(x), (keep · LayerNorm(x)) Wᵀ + b) saving only x, the row statistics and the
    bool mask for backward: the normalised input, which the Linear would keep for its weight's
    gradient, is recomputed there (one elementwise pass). x is kept anyway (by the residual
    sum's producer or as the batch itself), so the pair costs one [.., D] float less."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,  # [..., D] (the residual stream or the batch features)
        norm_weight: Tensor,  # [D]
        norm_bias: Tensor,  # [D]
        eps: float,
        keep: Tensor | None,  # [..., D] bool, or None
        weight: Tensor,  # [E, D] (dropout scale folded in)
        bias: Tensor | None,  # [E]
        dtype: torch.dtype,  # the Linear's dtype (autocast's, else x's)
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        with torch.autocast(x.device.type, enabled=False):
            normed, mean, rstd = torch.native_layer_norm(
                x, norm_weight.shape, norm_weight, norm_bias, eps
            )
            hidden = _masked_in(normed, keep, dtype, keep_input=True)  # normed is an output
            out = F.linear(hidden, weight.to(dtype), None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x, norm_weight, norm_bias, mean, rstd, keep, weight)
        ctx.eps, ctx.dtype, ctx.has_bias = eps, dtype, bias is not None
        return normed, out

    @staticmethod
    def backward(
        ctx: Any, grad_normed: Tensor | None, grad: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, norm_weight, norm_bias, mean, rstd, keep, weight = ctx.saved_tensors
        dtype = ctx.dtype
        grad_weight = grad_bias = None
        with torch.autocast(x.device.type, enabled=False):
            if grad is not None:
                grad_weight, grad_bias, through = _masked_linear_backward(
                    grad.to(dtype),
                    _masked_in(  # the normalised input, recomputed: the numbers of forward
                        torch.native_layer_norm(
                            x, norm_weight.shape, norm_weight, norm_bias, ctx.eps
                        )[0],
                        keep,
                        dtype,
                    ),
                    weight,
                    keep,
                    ctx.has_bias,
                )
                through = through.to(x.dtype)  # [..., D]
                grad_normed = through if grad_normed is None else through.add_(grad_normed)
            needs = ctx.needs_input_grad[:3]
            grad_x = grad_norm_weight = grad_norm_bias = None
            if grad_normed is not None and any(needs):
                grad_x, grad_norm_weight, grad_norm_bias = (
                    torch.ops.aten.native_layer_norm_backward(
                        grad_normed.to(x.dtype),
                        x,
                        norm_weight.shape,
                        mean,
                        rstd,
                        norm_weight,
                        norm_bias,
                        list(needs),
                    )
                )
        return (
            grad_x,
            grad_norm_weight,
            grad_norm_bias,
            None,
            None,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(weight.dtype),
            None,
        )


def norm_dropout_linear(
    x: Tensor, norm: nn.LayerNorm, linear: nn.Linear, dropout: Dropout | None = None
) -> tuple[Tensor, Tensor]:
    """(`norm(x)`, `linear(dropout(norm(x)))`), the dropout's 1/(1 - p) folded into the
    Linear's weight as in `dropout_linear`; in training only x, the row statistics and the
    bool mask are kept for backward (`_NormDropoutLinear`). Eval and no-grad take the plain
    path. Returns (normed [..., D], out [..., E])."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, norm.weight, linear.weight)
    )
    if not needs_grad or norm.weight is None or norm.bias is None:
        normed = norm(x)
        return normed, dropout_linear(normed, linear, before=dropout)
    weight, bias = _folded_weights(linear, dropout, None)
    keep = _keep_of(dropout, x)  # the mask has the normed input's shape, x's
    return _NormDropoutLinear.apply(
        x, norm.weight, norm.bias, norm.eps, keep, weight, bias, _compute_dtype(x)
    )


class _DropoutAttention(torch.autograd.Function):
    """softmax(q kᵀ/√d + mask) with dropout, times v, keeping for backward only the packed q, k,
    v and the bool keep mask: the [B, h, L, L] weights are recomputed in backward (one small
    product, d = D/h, and one fused softmax) instead of kept three times (softmax output, float
    dropout mask, dropped weights) as SDPA's math path does, and the mask costs 1 byte an
    element instead of a float `bernoulli_` draw. q, k, v come packed in one contiguous
    [3, B, h, L, d] tensor and their gradients leave in one: every product reads its operands
    in place (a head view of the projection's [B, L, 3D] output is copied by each product that
    reads it) and autograd gets one gradient instead of stacking three."""

    @staticmethod
    def forward(
        ctx: Any,
        qkv: Tensor,  # [3, B, h, L, d] contiguous
        allowed: Tensor | None,  # [B, 1, 1, L] bool, True at keys that may be attended
        keep: Tensor,  # [B, h, L, L] bool dropout keep mask
        keep_scale: float,  # 1/(1 - p)
        dtype: torch.dtype,  # the products' dtype (autocast's, else q's)
    ) -> Tensor:
        q, k, v = qkv.to(dtype).unbind(0)  # [B, h, L, d] each, contiguous
        with torch.autocast(qkv.device.type, enabled=False):
            weights = _attention_weights(q, k, allowed)  # [B, h, L, L]
            out = torch.matmul(_masked_in(weights, keep, dtype), v)
        ctx.save_for_backward(qkv, allowed, keep)
        ctx.keep_scale, ctx.dtype = keep_scale, dtype
        return out * keep_scale  # [B, h, L, d] (a product stays unchanged: see above)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        qkv, allowed, keep = ctx.saved_tensors
        dtype, scale = ctx.dtype, 1.0 / math.sqrt(qkv.shape[-1])
        q, k, v = qkv.to(dtype).unbind(0)
        grad_qkv = torch.empty(qkv.shape, dtype=dtype, device=qkv.device)  # [3, B, h, L, d]
        grad_q, grad_k, grad_v = grad_qkv.unbind(0)
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.to(dtype) * ctx.keep_scale  # [B, h, L, d]
            weights = _attention_weights(q, k, allowed)  # recomputed: the same numbers
            dropped = _masked_in(weights, keep, dtype, keep_input=True)
            torch.matmul(dropped.transpose(-1, -2), grad, out=grad_v)
            del dropped
            # ∂L/∂softmax, masked in the product's dtype before widening (the same numbers)
            grad_weights = mask_(torch.matmul(grad, v.transpose(-1, -2)), keep).to(weights.dtype)
            # softmax backward, weights · (∂L/∂softmax − Σ_row weights · ∂L/∂softmax), fused
            grad_logits = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
            del weights, grad_weights
            grad_logits = grad_logits.to(dtype)
            torch.matmul(grad_logits, k, out=grad_q).mul_(scale)
            torch.matmul(grad_logits.transpose(-1, -2), q, out=grad_k).mul_(scale)
        return grad_qkv.to(qkv.dtype), None, None, None, None


def _masked_in(
    x: Tensor, keep: Tensor | None, dtype: torch.dtype, keep_input: bool = False
) -> Tensor:
    """x · keep in `dtype` (no autograd; keep None: x in `dtype`). A cast is fused into the
    masking product (`masked(x, keep, dtype)`: one pass, fp32 [128, 128, 1024] -> bf16
    7.4 -> 5.1 ms on a 2-core EPYC, against a cast and then a product); a product by 0 or 1
    commutes with rounding, so the numbers are those of masking first. Without a cast x is
    masked in place, unless `keep_input`: x itself is then never written (a new tensor)."""
    if keep is None:
        return x.to(dtype)
    if x.dtype != dtype:
        return masked(x, keep, dtype)
    return masked(x, keep) if keep_input else mask_(x, keep)


def _attention_logits(q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
    """q kᵀ/√d (in q's dtype, then fp32 or wider) with −∞ at keys not `allowed` -> [B, h, L, L].

    The mask is added as a [B, 1, 1, L] bias of 0 / −∞ (the cast to fp32 in the same pass), as
    SDPA's CPU kernels apply a bool mask: a NaN or +inf logit at a masked key makes its row
    NaN instead of being hidden (`masked_fill` took 3× as long and hid it)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.matmul(q * scale, k.transpose(-1, -2))
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 at least
    if allowed is None:
        return logits.to(softmax_dtype)
    bias = torch.zeros(allowed.shape, dtype=softmax_dtype, device=allowed.device)
    bias.masked_fill_(~allowed, float("-inf"))
    if logits.dtype == softmax_dtype:  # out of place: a cached output under recompute_elementwise
        return torch.add(logits, bias)
    # Cast, then add in place: CPU torch runs a mixed-dtype add (bf16 + fp32) unvectorised.
    return logits.to(softmax_dtype).add_(bias)


def _attention_weights(q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
    """softmax(q kᵀ/√d + mask) in fp32 or wider -> [B, h, L, L], a new tensor: under
    `recompute_elementwise` the product is a cached output that must not change, and the
    weights are masked in place."""
    return torch.softmax(_attention_logits(q, k, allowed), dim=-1)


def dropout_attention(qkv: Tensor, allowed: Tensor | None, dropout: float) -> Tensor:
    """`F.scaled_dot_product_attention(q, k, v, allowed, dropout_p=dropout)` in training, with
    a `keep_mask` on the attention weights and the weights recomputed in backward
    (`_DropoutAttention`). qkv: [3, B, h, L, d], q, k, v stacked (any strides: made contiguous
    once here); allowed: [B, 1, 1, L] bool (every row must allow at least one key)
    -> [B, h, L, d]."""
    _, B, h, L, _ = qkv.shape
    keep = keep_mask(torch.Size((B, h, L, L)), dropout, qkv.device)
    dtype = _compute_dtype(qkv)
    return _DropoutAttention.apply(qkv.contiguous(), allowed, keep, 1.0 / (1.0 - dropout), dtype)


def set_recompute_elementwise(module: nn.Module, enabled: bool) -> None:
    """Switch `recompute_elementwise` for every FeatureProjection and TransformerLayer in
    `module`."""
    for child in module.modules():
        if isinstance(child, (FeatureProjection, TransformerLayer)):
            child.recompute_elementwise = enabled


def masked_fill_min(x: Tensor, mask: Tensor) -> Tensor:
    """Fill positions where `mask` is False with the dtype's most negative value."""
    return x.masked_fill(~mask.bool(), torch.finfo(x.dtype).min)


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over `dim` ignoring masked-out positions; an all-masked row gives all zeros."""
    if mask is None:
        return torch.softmax(logits, dim=dim)
    mask = mask.bool()
    weights = torch.softmax(masked_fill_min(logits, mask), dim=dim)
    return weights * mask.to(weights.dtype)


def masked_max(x: Tensor, mask: Tensor | None, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Max over `dim` ignoring masked-out positions; returns (values, indices).

    An all-masked row returns the dtype's minimum as its value: callers decide what that means.
    """
    if mask is None:
        return x.max(dim=dim)
    return masked_fill_min(x, mask).max(dim=dim)


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """Unit-normalise along `dim` (safe on zero rows)."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


class FeatureProjection(nn.Module):
    """LayerNorm -> Dropout -> Linear -> ReLU: MS-SL's input layer (SPEC §2 [decision])."""

    # Keep only the Linear's output for backward in training (see `recompute_elementwise`).
    recompute_elementwise: bool = False

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., out_dim]
        if self.recompute_elementwise and self.training and torch.is_grad_enabled():
            return recompute_elementwise(self._forward, x)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        return F.relu(norm_dropout_linear(x, self.norm, self.linear, self.dropout)[1])


class TransformerLayer(nn.Module):
    """Post-LN encoder layer: self-attention + residual + LN, then an optional FFN block.

    `ffn=False` reproduces the attention-only blocks of MS-SL and GMMFormer.
    """

    # Keep only the matmul outputs for backward in training (see `recompute_elementwise`).
    recompute_elementwise: bool = False

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        ffn: bool = True,
    ) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.attn_dropout = Dropout(dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.use_ffn = ffn
        if ffn:
            hidden = ffn_dim or 4 * dim
            self.ffn = nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, dim)
            )
            self.ffn_dropout = Dropout(dropout)
            self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, L, D]; mask: [B, L] with True/1 at valid positions."""
        if self.recompute_elementwise and self.training and torch.is_grad_enabled():
            return recompute_elementwise(self._forward, x, mask)
        return self._forward(x, mask)

    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        key_padding = None if mask is None else ~mask.bool()
        if key_padding is not None:
            # A row with no valid position would give NaNs: let it attend to everything.
            empty = key_padding.all(dim=1, keepdim=True)
            key_padding = key_padding & ~empty
        x = x + self.self_attention(x, key_padding, self.attn_dropout)
        if not self.use_ffn:
            return self.attn_norm(x)
        # attn_norm and the FFN's first Linear as one step: its normalised input is recomputed
        # in backward instead of kept (`norm_dropout_linear`).
        x, pre = norm_dropout_linear(x, self.attn_norm, self.ffn[0])  # pre: [B, L, ffn_dim]
        return self.ffn_norm(x + self.feed_forward(pre))

    def feed_forward(self, pre: Tensor) -> Tensor:
        """`ffn_dropout(ffn[1:](pre))` (GELU, Dropout, Linear) from the first Linear's output,
        both dropouts folded into the second Linear (`dropout_linear`). pre: [B, L, ffn_dim]
        -> [B, L, D]."""
        _, activation, dropout, second = self.ffn
        if isinstance(activation, nn.GELU):  # GELU output: kept (bf16) or recomputed (fp32)
            return gelu_dropout_linear(
                pre, second, dropout, self.ffn_dropout, activation.approximate
            )
        return dropout_linear(activation(pre), second, before=dropout, after=self.ffn_dropout)

    def self_attention(
        self, x: Tensor, key_padding: Tensor | None, output_dropout: Dropout | None = None
    ) -> Tensor:
        """`output_dropout(self.attention(x, x, x))` on `nn.MultiheadAttention`'s weights.

        The weights stay in the `nn.MultiheadAttention` (same state dict, same init), without
        its transposes and its Python checks: `F.scaled_dot_product_attention` (its fused
        flash kernel) wherever attention dropout is off (eval, `dropout=0`), and
        `dropout_attention` (bool keep mask, weights recomputed in backward) in training with
        dropout. x: [B, L, D]; key_padding: [B, L], True at padding -> [B, L, D].
        """
        attention = self.attention
        B, L, D = x.shape
        heads = attention.num_heads
        qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)  # [B, L, 3D]
        qkv = qkv.view(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)  # [3, B, h, L, d]
        allowed = None if key_padding is None else ~key_padding[:, None, None, :]  # [B,1,1,L]
        if self.training and 0.0 < attention.dropout < 1.0:
            attended = dropout_attention(qkv, allowed, attention.dropout)  # [B, h, L, d]
        else:
            q, k, v = qkv
            weight_dropout = attention.dropout if self.training else 0.0
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=weight_dropout
            )  # [B, h, L, d]
        attended = attended.transpose(1, 2).reshape(B, L, D)
        return dropout_linear(attended, attention.out_proj, after=output_dropout)


class TransformerEncoder(nn.Module):
    """Learned positional embeddings added once, then `num_layers` TransformerLayers."""

    def __init__(
        self,
        dim: int,
        max_len: int,
        num_layers: int = 1,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        ffn: bool = True,
        layer_factory: Callable[[], nn.Module] | None = None,
    ) -> None:
        """`layer_factory` builds each layer instead of a TransformerLayer (other blocks with
        the same `(x, mask)` call, e.g. GMMFormer's Gaussian blocks)."""
        super().__init__()
        self.max_len = max_len
        self.position = nn.Embedding(max_len, dim)
        self.dropout = Dropout(dropout)
        if layer_factory is None:

            def layer_factory() -> nn.Module:
                return TransformerLayer(dim, num_heads, ffn_dim, dropout, ffn)

        self.layers = nn.ModuleList(layer_factory() for _ in range(num_layers))
        # Recompute each layer in the backward pass instead of keeping its activations:
        # the same numbers (dropout masks replayed) for less memory and ~1/3 more compute.
        self.checkpointing = False

    def add_positions(self, x: Tensor) -> Tensor:
        """Add learned positional embeddings to x: [B, L, D] (L <= max_len)."""
        positions = torch.arange(x.shape[1], device=x.device)
        return self.dropout(x + self.position(positions)[None])

    def encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run the layers on an input that already carries positions."""
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.encode(self.add_positions(x), mask)


class AdditivePooling(nn.Module):
    """PRVR Eq. 1-2: `α = softmax(w·Xᵀ)` over valid positions, `x = Σ αᵢ xᵢ`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, L, D], mask: [B, L] -> [B, D]."""
        weights = masked_softmax(self.score(x).squeeze(-1), mask)  # [B, L]
        return torch.einsum("bl,bld->bd", weights, x)


class ModalityPooling(nn.Module):
    """PREM Eq. 5: one scalar head per modality over the same word features.

    Returns pooled vectors `[B, M, D]` and weights `[B, M, N]` (M modalities, rows sum to 1
    over unmasked words).
    """

    def __init__(self, dim: int, num_modalities: int = 2) -> None:
        super().__init__()
        self.heads = nn.Linear(dim, num_modalities)

    def forward(self, words: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self.heads(words).transpose(1, 2)  # [B, M, N]
        weights = masked_softmax(logits, None if mask is None else mask[:, None, :])
        pooled = torch.einsum("bmn,bnd->bmd", weights, words)
        return pooled, weights
