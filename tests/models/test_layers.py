"""The shared layers: TransformerLayer's attention through `scaled_dot_product_attention`
computes what `nn.MultiheadAttention` computes from the same weights, and the dropout path
(16-bit keep masks, 1/(1 - p) folded into the neighbouring Linear) keeps the law and numbers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import partial_relevance.models.layers as layers
from partial_relevance.models.layers import (
    Dropout,
    FeatureProjection,
    TransformerLayer,
    _masked_in,
    dropout_attention,
    dropout_linear,
    gelu_dropout_linear,
    keep_mask,
    mask_,
    masked,
    norm_dropout_linear,
    set_recompute_elementwise,
)


@contextlib.contextmanager
def saved_for_backward() -> Iterator[list[tuple[int, torch.dtype]]]:
    """(numel, dtype) of every tensor autograd saves for backward inside the block."""
    saved: list[tuple[int, torch.dtype]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((t.numel(), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def _reference(layer: TransformerLayer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The layer's forward with `nn.MultiheadAttention` called directly (the old path)."""
    key_padding = ~mask
    key_padding = key_padding & ~key_padding.all(dim=1, keepdim=True)
    attended, _ = layer.attention(x, x, x, key_padding_mask=key_padding, need_weights=False)
    x = layer.attn_norm(x + layer.attn_dropout(attended))
    return layer.ffn_norm(x + layer.ffn_dropout(layer.ffn(x)))


@pytest.mark.parametrize("train", [False, True])
def test_sdpa_attention_matches_multihead_attention(train: bool) -> None:
    torch.manual_seed(0)
    # Training with dropout 0 (the golden tests' setting); eval with dropout on (inactive).
    layer = TransformerLayer(16, num_heads=4, dropout=0.0 if train else 0.2).train(train)
    x = torch.randn(3, 7, 16, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False  # an all-padding row attends to everything, as before
    ours = layer(x, mask)
    expected = _reference(layer, x, mask)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    if train:
        grad_ours = torch.autograd.grad(ours.sum(), [x, layer.attention.in_proj_weight])
        grad_ref = torch.autograd.grad(expected.sum(), [x, layer.attention.in_proj_weight])
        for a, b in zip(grad_ours, grad_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_state_dict_keeps_multihead_attention_keys() -> None:
    """Checkpoints written before the SDPA path load unchanged."""
    layer = TransformerLayer(16, num_heads=4)
    keys = set(layer.state_dict())
    assert {"attention.in_proj_weight", "attention.in_proj_bias"} <= keys
    assert {"attention.out_proj.weight", "attention.out_proj.bias"} <= keys
    assert isinstance(layer.attention, nn.MultiheadAttention)


@pytest.mark.parametrize("module", ["layer", "projection"])
def test_recompute_elementwise_changes_no_number(module: str) -> None:
    """Keeping only the matmul outputs (elementwise work recomputed in backward, dropout masks
    replayed) gives the same outputs and gradients as keeping everything, with dropout on."""
    torch.manual_seed(0)
    if module == "layer":
        net: nn.Module = TransformerLayer(16, num_heads=4, dropout=0.2)
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
        inputs = (torch.randn(3, 7, 16), mask)
    else:
        net = FeatureProjection(24, 16, dropout=0.2)
        inputs = (torch.randn(3, 7, 24),)
    net.train()

    def run(enabled: bool) -> list[torch.Tensor]:
        set_recompute_elementwise(net, enabled)
        x = inputs[0].clone().requires_grad_()
        torch.manual_seed(1)
        out = net(x, *inputs[1:])
        weights = torch.linspace(-1, 1, 16)
        return [out.detach(), *torch.autograd.grad((out * weights).sum(), [x, *net.parameters()])]

    for a, b in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dropout_keeps_one_minus_p_and_saves_a_bool_mask() -> None:
    """The layers' Dropout: P(keep) = 1 - p, kept values scaled by 1/(1-p), the gradient is
    the same mask and scale, only a bool mask is saved for backward, eval is the identity."""
    torch.manual_seed(0)
    dropout = Dropout(0.15).train()
    x = torch.ones(400, 1000, requires_grad=True)
    with saved_for_backward() as saved:
        y = dropout(x)
    keep = y != 0
    assert abs(keep.float().mean().item() - 0.85) < 0.005  # 400k draws: σ ≈ 0.0006
    torch.testing.assert_close(y[keep], torch.full_like(y[keep], 1 / 0.85))
    (grad,) = torch.autograd.grad(y, x, torch.full_like(y, 2.0))
    torch.testing.assert_close(grad, keep.float() * 2 / 0.85)
    assert [dtype for _, dtype in saved] == [torch.bool]
    torch.manual_seed(3)
    first = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(dropout(x), first)  # seeded like every torch RNG op
    assert dropout.eval()(x) is x and Dropout(0.0).train()(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masking_products_equal_where_over_chunks(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`masked` / `mask_` run as products by the uint8 view of the mask over flat chunks (a
    partial last one here: 7 chunks of 1,000 for 6,144 elements): the numbers of `where`
    for finite inputs; like torch's dropout a NaN at a dropped position stays NaN."""
    monkeypatch.setattr(layers, "_MASK_CHUNK", 1000)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, 48, generator=generator).to(dtype)
    keep = torch.rand(4, 32, 48, generator=generator) > 0.3
    expected = torch.where(keep, x, torch.zeros((), dtype=dtype))
    assert torch.equal(masked(x, keep), expected)
    inplace = x.clone()
    assert mask_(inplace, keep) is inplace and torch.equal(inplace, expected)
    # Strided input / mask: the same numbers through torch's broadcasting product.
    assert torch.equal(masked(x.transpose(1, 2), keep.transpose(1, 2)), expected.transpose(1, 2))
    strided = x.clone().transpose(1, 2)
    assert torch.equal(mask_(strided, keep.transpose(1, 2)), expected.transpose(1, 2))
    poisoned = x.clone()
    poisoned[~keep] = float("nan")
    assert masked(poisoned, keep)[~keep].isnan().all()  # dropout's product semantics
    assert torch.equal(masked(poisoned, keep)[keep], x[keep])


def test_apply_keep_gradient_is_the_mask_and_saves_only_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`apply_keep`'s autograd: ∂(x·keep·s)/∂x = keep·s over several chunks, one bool mask
    saved."""
    monkeypatch.setattr(layers, "_MASK_CHUNK", 256)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 300, generator=generator, requires_grad=True)
    keep = torch.rand(10, 300, generator=generator) > 0.5
    with saved_for_backward() as saved:
        y = layers.apply_keep(x, keep, 2.0)
    torch.testing.assert_close(y, torch.where(keep, x, 0.0) * 2.0, rtol=0, atol=0)
    grad_out = torch.randn(10, 300, generator=generator)
    (grad,) = torch.autograd.grad(y, x, grad_out.t().contiguous().t())  # a strided gradient
    torch.testing.assert_close(grad, torch.where(keep, grad_out, 0.0) * 2.0, rtol=0, atol=0)
    assert saved == [(3000, torch.bool)]


def test_keep_mask_is_unbiased_at_every_int16_lane() -> None:
    """Four mask elements come from each int64 draw: every lane keeps 1 - p (the top lane too,
    which a plain `random_()` would leave with a zero sign bit), p rounded to 2⁻¹⁶."""
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([4 * 250_000]), 0.15, torch.device("cpu")).view(-1, 4)
    rates = keep.float().mean(0)
    expected = 1 - round(0.15 * 2**16) / 2**16
    assert torch.all((rates - expected).abs() < 0.004), rates  # 250k draws a lane: σ ≈ 0.0007
    assert not keep_mask(torch.Size([10]), 1.0, torch.device("cpu")).any()
    assert keep_mask(torch.Size([10]), 0.0, torch.device("cpu")).all()


@pytest.mark.parametrize("numel", [1, 7, 4 * 100_003 + 2])
def test_keep_mask_draws_the_masks_of_the_modulo_form(numel: int) -> None:
    """On CPU the draws come from the full-range `random_` with the top bit flipped: the masks
    (every pinned loss depends on them) are those of `random_(-2⁶³, 2⁶³ - 1)`, seed for seed,
    and the generator ends in the same state."""
    torch.manual_seed(3)
    keep = keep_mask(torch.Size([numel]), 0.15, torch.device("cpu"))
    after = torch.randint(0, 2**30, (4,))
    torch.manual_seed(3)
    draws = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    expected = draws.view(torch.int16)[:numel] >= round(0.15 * 2**16) - 2**15
    assert torch.equal(keep, expected)
    assert torch.equal(after, torch.randint(0, 2**30, (4,)))


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_dropout_linear_equals_the_unfused_chain(where: str) -> None:
    """`dropout_linear` folds 1/(1 - p) into the Linear: same masks (same RNG order), same
    outputs and gradients as `after(linear(before(x)))`, and the plain Linear in eval."""
    linear = torch.nn.Linear(6, 5)
    before = Dropout(0.3).train() if where in ("before", "both") else None
    after = Dropout(0.2).train() if where in ("after", "both") else None
    x = torch.randn(7, 3, 6, requires_grad=True)

    def unfused() -> torch.Tensor:
        y = linear(x if before is None else before(x))
        return y if after is None else after(y)

    results = []
    for fn in (unfused, lambda: dropout_linear(x, linear, before, after)):
        torch.manual_seed(5)
        y = fn()
        grads = torch.autograd.grad((y * torch.arange(5.0)).sum(), [x, *linear.parameters()])
        results.append([y, *grads])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (results[0][0] == 0).any() == (after is not None)
    for d in (before, after):
        if d is not None:
            d.eval()
    torch.testing.assert_close(dropout_linear(x, linear, before, after), linear(x))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gelu_dropout_linear_equals_the_unfused_chain_and_keeps_gelu_output_in_bf16(precision):
    """`gelu_dropout_linear` (the FFN's GELU -> Dropout -> Linear -> Dropout) gives the unfused
    chain's outputs and gradients (same masks), also under bf16 autocast, and keeps the
    pre-activation and bool masks for backward, plus the masked GELU output only in bf16 (2
    bytes an element): in fp32 no [.., F] float tensor beyond its input."""
    linear = torch.nn.Linear(12, 5)
    before, after = Dropout(0.3).train(), Dropout(0.2).train()
    pre = torch.randn(4, 3, 12, requires_grad=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def unfused() -> torch.Tensor:
        return after(linear(before(torch.nn.functional.gelu(pre))))

    def fused() -> torch.Tensor:
        return gelu_dropout_linear(pre, linear, before, after)

    results, saved = [], []
    for fn in (unfused, fused):
        torch.manual_seed(7)
        with saved_for_backward() as shapes, autocast:
            y = fn()
        grads = torch.autograd.grad(
            (y.float() * torch.arange(5.0)).sum(), [pre, *linear.parameters()]
        )
        results.append([y.float(), *grads])
        saved.append(shapes)
    tol = {"rtol": 1e-5, "atol": 1e-6} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **tol)

    def wide_floats(entries: list[tuple[int, torch.dtype]]) -> int:
        return sum(n == pre.numel() and dtype.is_floating_point for n, dtype in entries)

    # fp32: the pre-activation only (GELU's output is recomputed); bf16: and the masked output
    assert wide_floats(saved[1]) == (1 if precision == "fp32" else 2)
    assert wide_floats(saved[0]) >= 2  # GELU's input and the Linear's (masked) input
    before.eval(), after.eval()
    torch.testing.assert_close(fused(), linear(torch.nn.functional.gelu(pre)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gelu_masked_linear_kept_or_recomputed_gives_the_same_bits(dtype: torch.dtype) -> None:
    """Whether the masked GELU output is kept (bf16) or recomputed (fp32), the output and every
    gradient are bit for bit the formula: hidden = keep · gelu(h), y = hidden Wᵀ + b,
    ∂W = ∂yᵀ hidden, ∂b = Σ ∂y, ∂h = gelu'(h) · keep · (∂y W)."""
    torch.manual_seed(0)
    pre = torch.randn(6, 5, 16).to(dtype).requires_grad_()
    weight = torch.randn(7, 16, requires_grad=True)
    bias = torch.randn(7, requires_grad=True)
    keep = torch.rand(6, 5, 16) > 0.3
    y = layers._GeluMaskedLinear.apply(pre, keep, weight, bias, "none", dtype)
    grad_y = torch.randn(6, 5, 7).to(dtype)
    grads = torch.autograd.grad(y, [pre, weight, bias], grad_y)
    with torch.no_grad():
        hidden = torch.nn.functional.gelu(pre) * keep
        w = weight.to(dtype)
        expected_y = torch.nn.functional.linear(hidden, w, bias.to(dtype))
        flat = grad_y.reshape(-1, 7)
        grad_w = flat.t().mm(hidden.reshape(-1, 16)).to(weight.dtype)
        grad_b = flat.sum(0).to(bias.dtype)
        grad_pre = torch.ops.aten.gelu_backward(grad_y.matmul(w) * keep, pre)
    for got, want in zip((y, *grads), (expected_y, grad_pre, grad_w, grad_b), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_recomputed_gelu_output_reaches_the_linear_backward_as_a_temporary(monkeypatch):
    """In fp32 the recomputed masked GELU output is handed to `_masked_linear_backward` with no
    other reference (a caller's local name would keep one more [.., F] float alive while ∂h is
    formed: +59 MiB peak RSS in a full fp32 step, caught by `make bench`)."""
    counts: list[int] = []
    original = layers._masked_linear_backward

    def counting(grad, hidden, *rest):
        counts.append(sys.getrefcount(hidden))  # this frame's name and getrefcount's argument
        return original(grad, hidden, *rest)

    monkeypatch.setattr(layers, "_masked_linear_backward", counting)
    torch.manual_seed(0)
    pre = torch.randn(4, 3, 12, requires_grad=True)
    linear, before = torch.nn.Linear(12, 5), Dropout(0.3).train()
    gelu_dropout_linear(pre, linear, before).sum().backward()
    assert counts == [2]


@pytest.mark.parametrize("precision", ["fp64", "fp32", "bf16"])
def test_dropout_attention_equals_softmax_dropout_matmul_and_saves_no_weights(precision):
    """`dropout_attention` gives softmax(q kᵀ/√d, padded keys masked) · keep/(1 - p) · v and its
    gradients with the same keep mask (exactly in fp64, to rounding in fp32 and under bf16
    autocast), keeps no [B, h, L, L] float for backward (only the bool mask), and draws its
    mask like every torch RNG op (seeded)."""
    torch.manual_seed(0)
    B, h, L, d, p = 3, 2, 7, 5, 0.3
    dtype = torch.float64 if precision == "fp64" else torch.float32
    qkv = torch.randn(B, L, 3, h, d, dtype=dtype, requires_grad=True)
    allowed = torch.ones(B, 1, 1, L, dtype=torch.bool)
    allowed[1, ..., 5:] = False
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def reference(keep: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, h, L, d] each
        logits = (q @ k.transpose(-1, -2) / d**0.5).masked_fill(~allowed, float("-inf"))
        return torch.where(keep, torch.softmax(logits, -1), 0.0) / (1 - p) @ v

    torch.manual_seed(1)
    keep = keep_mask(torch.Size((B, h, L, L)), p, "cpu")
    expected = reference(keep)
    torch.manual_seed(1)  # the same mask
    with saved_for_backward() as saved, autocast:
        out = dropout_attention(qkv.permute(2, 0, 3, 1, 4), allowed, p)
    weights = torch.linspace(-1, 1, d, dtype=dtype)
    grads = [torch.autograd.grad((y.to(dtype) * weights).sum(), qkv)[0] for y in (out, expected)]
    tol = {
        "fp64": {"rtol": 1e-12, "atol": 1e-12},
        "fp32": {"rtol": 1e-5, "atol": 1e-6},
        "bf16": {"rtol": 3e-2, "atol": 3e-2},
    }[precision]
    torch.testing.assert_close(out.to(dtype), expected, **tol)
    torch.testing.assert_close(grads[0], grads[1], **tol)
    assert (expected == 0).sum() < expected.numel()  # the mask drops weights, not whole rows
    assert not any(n == B * h * L * L and t.is_floating_point for n, t in saved)
    assert (B * h * L * L, torch.bool) in saved
    torch.manual_seed(1)
    with autocast:
        assert torch.equal(dropout_attention(qkv.permute(2, 0, 3, 1, 4), allowed, p), out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masking_after_the_cast_gives_the_numbers_of_masking_before(dtype):
    """`_masked_in` masks and casts in one pass: bit for bit what masking in fp32 and casting
    gives (a product by 0 or 1 commutes with rounding), NaN, inf and signed zeros included,
    contiguous or strided; with `keep_input` the input is never written."""
    torch.manual_seed(0)
    x = torch.randn(3, 1 << 12) * 1e3
    x[0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])
    keep = torch.rand(x.shape) < 0.7
    keep[0, :4] = False
    expected = masked(x, keep).to(dtype)
    original = x.clone()
    out = _masked_in(x, keep, dtype, keep_input=True)

    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).view(torch.uint8)

    assert out.dtype == dtype and torch.equal(bits(x), bits(original))
    assert torch.equal(bits(out), bits(expected))
    assert torch.equal(bits(_masked_in(x.clone(), keep, dtype)), bits(expected))
    strided = _masked_in(x.t(), keep.t(), dtype)  # the unchunked path: a product, then a cast
    assert torch.equal(bits(strided.t().contiguous()), bits(expected))


def test_dropout_attention_masks_keys_as_an_additive_bias_like_sdpa():
    """Masked keys enter as a 0 / −∞ bias, as in SDPA's CPU kernels: a finite logit at a masked
    key gets weight 0 (the output ignores its value), while a NaN key at a masked position
    makes the rows NaN (a product with NaN, not hidden by a fill), in training and in SDPA's
    eval path alike."""
    torch.manual_seed(0)
    B, h, L, d = 2, 2, 6, 4
    q, k, v = torch.randn(3, B, h, L, d).unbind(0)
    allowed = torch.ones(B, 1, 1, L, dtype=torch.bool)
    allowed[0, ..., 4:] = False
    changed_v = v.clone()
    changed_v[0, :, 4:] = 1e6  # values at masked keys must not matter
    out = dropout_attention(torch.stack((q, k, v)), allowed, 0.0)
    changed = dropout_attention(torch.stack((q, k, changed_v)), allowed, 0.0)
    torch.testing.assert_close(changed, out)
    torch.testing.assert_close(out, nn.functional.scaled_dot_product_attention(q, k, v, allowed))
    nan_key = k.clone()
    nan_key[0, :, 5] = float("nan")
    trained = dropout_attention(torch.stack((q, nan_key, v)), allowed, 0.0)
    evaluated = nn.functional.scaled_dot_product_attention(q, nan_key, v, allowed)
    assert trained[0].isnan().all() and evaluated[0].isnan().all()
    torch.testing.assert_close(trained[1], out[1])  # the other video is untouched


@pytest.mark.parametrize("case", ["fp32", "bf16", "data-input", "no-dropout"])
def test_norm_dropout_linear_equals_the_unfused_chain_and_keeps_no_normed_copy(case: str):
    """`norm_dropout_linear` returns (norm(x), linear(dropout(norm(x)))) with the chain's
    numbers and gradients (x's, the norm's and the Linear's, both outputs used, same masks),
    under bf16 autocast too, and keeps no [.., D] float but x for backward: the normalised
    input is recomputed. With x a batch (no grad) only the parameters get gradients."""
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(6), nn.Linear(6, 5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    dropout = None if case == "no-dropout" else Dropout(0.3).train()
    x = torch.randn(4, 3, 6, requires_grad=case != "data-input")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16")
    inputs = [t for t in (x, *norm.parameters(), *linear.parameters()) if t.requires_grad]

    def unfused() -> tuple[torch.Tensor, torch.Tensor]:
        normed = norm(x)
        return normed, linear(normed if dropout is None else dropout(normed))

    results, saved = [], []
    for fn in (unfused, lambda: norm_dropout_linear(x, norm, linear, dropout)):
        torch.manual_seed(7)
        with saved_for_backward() as entries, autocast:
            normed, out = fn()
        loss = (normed * torch.linspace(-1, 1, 6)).sum() + (out.float() * torch.arange(5.0)).sum()
        results.append([normed, out.float(), *torch.autograd.grad(loss, inputs)])
        saved.append(entries)
    # bf16: products rounded in another order (the scale folded into W), sums of 12 terms
    tol = {"rtol": 1e-5, "atol": 1e-5} if case != "bf16" else {"rtol": 4e-2, "atol": 1e-1}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert results[1][0].dtype == torch.float32  # the normalised stream stays fp32 (residual)
    floats = [n for n, t in saved[1] if n == x.numel() and t.is_floating_point]
    assert floats == [x.numel()]  # x only (the unfused chain keeps x and the normed input)
    assert len([n for n, t in saved[0] if n == x.numel() and t.is_floating_point]) >= 2
    if dropout is not None:
        dropout.eval()
    normed, out = norm_dropout_linear(x, norm, linear, dropout)
    torch.testing.assert_close(out, linear(norm(x)))
