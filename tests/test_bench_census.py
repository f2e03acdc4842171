"""`benchmarks/common.OpCensus` and `projected_share_of_peak`: the per-op census of a training
step (matmul family apart) and the bf16 share of peak projected from it (issue #19)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common


def test_census_counts_every_op_once_and_keeps_the_matmul_family_apart():
    torch.manual_seed(0)
    a = torch.randn(8, 6, requires_grad=True)
    b = torch.randn(6, 4)
    census = common.OpCensus()
    with census:
        y = torch.relu(a @ b + 1.0)  # mm, add, relu
        y.sum().backward()  # sum, then the backward ops (mm for ∂a among them)
    assert census.calls["mm"] == 2  # forward a @ b and ∂a = g @ bᵀ
    assert census.calls["add"] == 1 and census.calls["relu"] == 1
    matmul, other, ops = census.totals()
    assert matmul == pytest.approx(census.seconds["mm"])
    assert other == pytest.approx(sum(census.seconds.values()) - census.seconds["mm"])
    assert ops == sum(census.calls.values())
    top = census.top(2)
    assert len(top) == 2 and "mm" not in top
    assert all(text.endswith(f"({census.calls[name]})") for name, text in top.items())
    assert census.proxied == 0


def test_bf16_proxy_runs_products_in_fp32_and_rounds_back():
    """A proxied bf16 product equals the fp32 product of the same bf16 inputs rounded to bf16,
    keeps bf16 outputs (autocast's dtypes unchanged) and counts as a matmul; fp32 products and
    the non-matmul ops are not proxied."""
    torch.manual_seed(0)
    a = torch.randn(16, 32).bfloat16()
    b = torch.randn(32, 8).bfloat16()
    bias = torch.randn(8).bfloat16()
    census = common.OpCensus(proxy_bf16_matmuls=True)
    with census:
        product = torch.addmm(bias, a, b)
        batched = torch.bmm(a[None], b[None])
        summed = product + 1
        fp32 = a.float() @ b.float()
    assert product.dtype == batched.dtype == summed.dtype == torch.bfloat16
    expected = torch.addmm(bias.float(), a.float(), b.float()).bfloat16()
    assert torch.equal(product, expected)
    assert torch.equal(batched[0], (a.float() @ b.float()).bfloat16())
    assert fp32.dtype == torch.float32
    assert census.proxied == 2  # addmm and bmm; the fp32 mm runs as it is
    assert {"addmm", "bmm", "mm", "add"} <= set(census.calls)


def test_bf16_proxy_under_autocast_keeps_gradients():
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 5)
    x = torch.randn(7, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = linear(x)
    expected.float().sum().backward()
    expected_grad = linear.weight.grad.clone()
    linear.weight.grad = None
    census = common.OpCensus(proxy_bf16_matmuls=True)
    with census:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(linear.weight.grad, expected_grad, rtol=1e-2, atol=1e-2)
    assert census.proxied >= 2  # the forward addmm and the weight-gradient mm


def test_projected_share_of_peak_hand_case():
    """100 GFLOP whose products took 1 s here at 125 GFLOP/s (efficiency 0.8), 0.5 s of the
    rest: at a 250 GFLOP/s reference the products take 100 / (250 · 0.8) = 0.5 s, the step
    1.0 s, 100 GFLOP/s = 40 % of 250."""
    projected = common.projected_share_of_peak(100e9, 1.0, 0.5, 125.0, 250.0)
    assert projected == {
        "matmul efficiency": 0.8,
        "projected step s": 1.0,
        "projected % of peak": 40.0,
    }
    # Products measured faster than the yardstick count at 100 % efficiency, never above.
    capped = common.projected_share_of_peak(100e9, 0.5, 0.0, 125.0, 250.0)
    assert capped["matmul efficiency"] == 1.0
    assert capped["projected % of peak"] == 100.0


def test_bf16_proxy_writes_an_out_buffer():
    """`matmul(out=)` (a bmm.out under the mode) fills the caller's bf16 buffer with the proxied
    product, as the training attention's backward relies on."""
    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, 5).bfloat16()
    b = torch.randn(2, 3, 5, 6).bfloat16()
    out = torch.zeros(2, 3, 4, 6, dtype=torch.bfloat16)
    census = common.OpCensus(proxy_bf16_matmuls=True)
    with census:
        returned = torch.matmul(a, b, out=out)
    assert census.proxied == 1
    assert torch.equal(out, (a.float() @ b.float()).bfloat16())
    assert returned.data_ptr() == out.data_ptr()


def test_a_benchmark_step_with_a_non_finite_loss_is_an_error():
    """bench_prvr_train's step refuses a NaN loss instead of timing garbage (the census's proxy
    once left a gradient buffer unwritten: NaN weights a step later, still timed)."""
    import bench_prvr_train

    class NanLosses:
        def training_losses(self, batch):
            return {"loss": torch.tensor(float("nan"), requires_grad=True)}

    with pytest.raises(RuntimeError, match="non-finite training loss nan"):
        bench_prvr_train.training_step(NanLosses(), None, {}, "fp32", update=True)


@pytest.mark.parametrize(
    "a_shape, b_shape, along",
    [((300, 40), (40, 8), "M"), ((8, 40), (40, 300), "N"), ((8, 300), (300, 6), "K")],
)
def test_lean_proxy_mm_in_blocks_gives_the_proxys_product(monkeypatch, a_shape, b_shape, along):
    """A lean proxy's mm, blocked along M, N or K (whichever leaves the smallest operand
    whole; K's blocks summed in fp32), equals the whole fp32 product rounded to bf16 (to one
    bf16 rounding step) and never upcasts more than one block of the blocked operands."""
    monkeypatch.setattr(common, "LEAN_BLOCK_BYTES", 4 * 64)  # 64 fp32 elements a block
    torch.manual_seed(0)
    a, b = torch.randn(a_shape).bfloat16(), torch.randn(b_shape).bfloat16()
    largest: list[int] = []
    original_float = torch.Tensor.float

    def recording_float(t: torch.Tensor) -> torch.Tensor:
        largest.append(t.numel())
        return original_float(t)

    monkeypatch.setattr(torch.Tensor, "float", recording_float)
    census = common.OpCensus(proxy_bf16_matmuls=True, lean=True)
    with census:
        product = a @ b
    monkeypatch.setattr(torch.Tensor, "float", original_float)
    expected = (a.float() @ b.float()).bfloat16()
    assert census.proxied == census.blocked == 1 and product.dtype == torch.bfloat16
    torch.testing.assert_close(product, expected, rtol=8e-3, atol=1e-2)
    whole = {"M": b.numel(), "N": a.numel(), "K": 0}[along]  # the operand left whole
    blocked = [n for n in largest if n != whole]
    assert len(blocked) >= 2 and max(blocked) <= 64  # blocks of at most 64 elements each


def test_lean_proxy_addmm_bmm_baddbmm_and_out_buffers():
    """addmm (broadcast bias, beta and alpha), bmm, baddbmm and a bmm.out through a lean proxy
    give the unblocked proxy's numbers and bf16 outputs; `out=` is filled and returned."""
    torch.manual_seed(0)
    a, w, bias = torch.randn(50, 16).bfloat16(), torch.randn(16, 7).bfloat16(), torch.randn(7)
    x, y = torch.randn(6, 5, 4).bfloat16(), torch.randn(6, 4, 3).bfloat16()
    base = torch.randn(1, 5, 3).bfloat16()
    out = torch.zeros(6, 5, 3, dtype=torch.bfloat16)
    original = common.LEAN_BLOCK_BYTES
    common.LEAN_BLOCK_BYTES = 4 * 40  # blocks of a few rows
    try:
        with common.OpCensus(proxy_bf16_matmuls=True, lean=True) as census:
            linear = torch.addmm(bias.bfloat16(), a, w)
            scaled = torch.addmm(bias.bfloat16(), a, w, beta=0.5, alpha=2.0)
            batched = torch.bmm(x, y)
            added = torch.baddbmm(base, x, y)
            returned = torch.bmm(x, y, out=out)
    finally:
        common.LEAN_BLOCK_BYTES = original
    a32, w32, x32, y32 = a.float(), w.float(), x.float(), y.float()
    b32 = bias.bfloat16().float()
    assert census.proxied == 5 and census.blocked == 5  # beta and alpha too
    assert torch.equal(linear, torch.addmm(b32, a32, w32).bfloat16())
    torch.testing.assert_close(scaled, (0.5 * b32 + 2.0 * (a32 @ w32)).bfloat16())
    assert torch.equal(batched, torch.bmm(x32, y32).bfloat16())
    assert torch.equal(added, torch.baddbmm(base.float(), x32, y32).bfloat16())
    assert returned.data_ptr() == out.data_ptr() and torch.equal(out, batched)
    assert {t.dtype for t in (linear, scaled, batched, added)} == {torch.bfloat16}


def test_tvr_scale_projection_of_an_evaluation_census_hand_case():
    """Stages measured on all 2,179 videos and a fifth of the queries (factors: videos 1,
    queries 5, scoring 5): 100 + 5·60 + 5·8 = 440 GFLOP; products 2 + 5·1 + 5·0.2 = 8 s here
    at 110 GFLOP/s (efficiency 0.5); the rest (wall − products) 1 + 5·0.5 + 5·0.3 and the
    loaders 5·0.1 = 5.5 s. At 220 GFLOP/s the products take 440 / (220 · 0.5) = 4 s, the
    evaluation 9.5 s, 440 / 9.5 = 46.3 GFLOP/s = 21.1 % of 220."""
    import bench_prvr_eval

    stages = {
        "video": {"wall": 3.0, "matmul": 2.0, "gflop": 100.0},
        "query": {"wall": 1.5, "matmul": 1.0, "gflop": 60.0},
        "scoring": {"wall": 0.5, "matmul": 0.2, "gflop": 8.0},
    }
    queries = bench_prvr_eval.TVR_QUERIES // 5
    projected = bench_prvr_eval.tvr_scale_projection(
        stages, 0.1, bench_prvr_eval.TVR_VIDEOS, queries, 110.0, 220.0
    )
    assert projected["TVR-scale GFLOP"] == 440.0
    assert projected["matmul efficiency"] == 0.5
    assert projected["projected step s"] == pytest.approx(9.5)
    assert projected["projected % of peak"] == 21.1
    assert bench_prvr_eval.known_config("bf16-fp16index-census")
    assert not bench_prvr_eval.known_config("bf16-census")


def test_bf16_proxy_runs_multihead_attentions_fast_path_in_fp32():
    """nn.MultiheadAttention's inference fast path (`_native_multi_head_attention`, the PREM
    localizer's cross-modal attention) is proxied like a product: fp32 inside, bf16 out."""
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 16).bfloat16()
    reference = attention(x.float(), x.float(), x.float(), need_weights=False)[0]
    attention.bfloat16()
    census = common.OpCensus(proxy_bf16_matmuls=True)
    with torch.no_grad(), census:
        out = attention(x, x, x, need_weights=False)[0]
    assert census.calls.get("_native_multi_head_attention") == 1 and census.proxied == 1
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=3e-2, atol=3e-2)


def test_corrected_to_eager_hand_case():
    """`corrected_to_eager`: encode wall 3 s (products 2) less the census's 0.4 s excess over
    eager -> 2.6; localize wall 10 s (products 9) less 1.5 s would go under its products -> 9;
    a negative excess (the eager run slower) adds time: 1.0 + 0.2 -> 1.2. Projected with
    factors 2, 10 and 1: 2·110 + 10·495 + 27.5 = 5,197.5 GFLOP, products 2·2 + 10·9 + 0.5 =
    94.5 s here at 110 GFLOP/s (efficiency 0.5), so 5,197.5 / (220 · 0.5) = 47.25 s at 220;
    the rest 2·1 + 10·1 + 0.5 = 12.5 s as measured, 2·0.6 + 10·0 + 0.7 = 1.9 s corrected."""
    stages = {
        "encode": {"wall": 3.0, "matmul": 2.0, "gflop": 110.0},
        "localize": {"wall": 10.0, "matmul": 9.0, "gflop": 495.0},
        "other": {"wall": 1.0, "matmul": 0.5, "gflop": 27.5},
    }
    excess = {"encode": 0.4, "localize": 1.5, "other": -0.2}
    eager = common.corrected_to_eager(stages, excess)
    assert eager["encode"] == {"wall": pytest.approx(2.6), "matmul": 2.0, "gflop": 110.0}
    assert eager["localize"]["wall"] == 9.0
    assert eager["other"]["wall"] == pytest.approx(1.2)
    assert common.corrected_to_eager(stages, {})["other"] == stages["other"]
    assert stages["encode"]["wall"] == 3.0  # the measured stages are left as they were
    factors = {"encode": 2.0, "localize": 10.0, "other": 1.0}
    full = common.projected_from_stages(stages, factors, 0.0, 110.0, 220.0)
    less = common.projected_from_stages(eager, factors, 0.0, 110.0, 220.0)
    assert full["matmul efficiency"] == less["matmul efficiency"] == 0.5
    assert full["projected step s"] == pytest.approx(47.25 + 12.5)
    assert less["projected step s"] == pytest.approx(47.25 + 1.9)


def test_bf16_proxy_upcasts_a_tensor_passed_twice_once():
    """A bf16 tensor passed as several arguments (self-attention's query, key and value)
    reaches the fp32 op as one upcast tensor, as the bf16 call passes one tensor; distinct
    tensors stay distinct, non-bf16 arguments pass as they are, the result is rounded back."""
    seen: list[torch.Tensor] = []

    def op(*args: torch.Tensor) -> torch.Tensor:
        seen.extend(args)
        return args[0] * args[1] + args[2] + args[3]

    x = torch.randn(4).bfloat16()
    y = torch.randn(4).bfloat16()
    z = torch.randn(4)
    out = common._proxied_in_fp32(op, (x, x, y, z), {})
    assert [t.dtype for t in seen] == [torch.float32] * 4
    assert seen[0] is seen[1] and seen[2] is not seen[0] and seen[3] is z
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (x.float() * x.float() + y.float() + z).bfloat16())


def test_census_minus_eager_alternates_and_keeps_the_faster_of_each():
    """Eager and census runs alternate (eager first); each part's faster census run less its
    faster eager run, signed: video 1.3 − 1.0, query 0.4 − 0.5."""
    order: list[str] = []
    eager_runs = iter([{"video": 1.1, "query": 0.5}, {"video": 1.0, "query": 0.6}])
    census_runs = iter([{"video": 1.4, "query": 0.4}, {"video": 1.3, "query": 0.45}])

    def eager() -> dict[str, float]:
        order.append("eager")
        return next(eager_runs)

    def census() -> dict[str, float]:
        order.append("census")
        return next(census_runs)

    excess = common.census_minus_eager(eager, census)
    assert order == ["eager", "census", "eager", "census"]
    assert excess == {"video": pytest.approx(0.3), "query": pytest.approx(-0.1)}


def test_bf16_gelu_is_timed_by_a_onednn_fp32_stand_in_where_onednn_runs_no_bf16(monkeypatch):
    """Where torch's oneDNN bf16 check fails, a proxying census runs exact bf16 GELU and its
    backward as this CPU does (the same numbers) and times them on fp32 copies (what oneDNN
    runs here): counted under the op's own name, their extra wall kept in `stand_in_excess`.
    A tanh GELU, an fp32 one, a lean census and a census without proxies stand nothing in."""
    monkeypatch.setattr(common, "onednn_fp32_only", lambda: True)
    torch.manual_seed(0)
    x = torch.randn(64, 96).bfloat16().requires_grad_()
    plain = torch.nn.functional.gelu(x)
    (plain_grad,) = torch.autograd.grad(plain.float().square().sum(), x)

    census = common.OpCensus(proxy_bf16_matmuls=True)
    with census:
        y = torch.nn.functional.gelu(x)
        (grad,) = torch.autograd.grad(y.float().square().sum(), x)
        torch.nn.functional.gelu(x, approximate="tanh")  # ATen's kernel everywhere
        torch.nn.functional.gelu(x.float())  # fp32: oneDNN everywhere
    assert torch.equal(y, plain) and torch.equal(grad, plain_grad)
    assert census.onednn_stand_in and census.stood_in == 2
    assert census.calls["gelu"] == 3 and census.calls["gelu_backward"] == 1
    assert census.seconds["gelu_backward"] > 0 and census.stand_in_excess > 0
    assert census.stand_in_own > 0 and 0 < census.stand_in_counted <= sum(census.seconds.values())
    note = common.census_stand_ins([census], per=2)
    own, counted = (float(v) for v in note["bf16 GELU s (ATen here -> counted)"].split(" -> "))
    assert own == pytest.approx(census.stand_in_own / 2, abs=1e-3)
    assert counted == pytest.approx(census.stand_in_counted / 2, abs=1e-3)
    assert not common.census_stand_ins([common.OpCensus()])

    for quiet in (common.OpCensus(proxy_bf16_matmuls=True, lean=True), common.OpCensus()):
        with quiet:
            torch.nn.functional.gelu(x)
        assert not quiet.onednn_stand_in and quiet.stood_in == 0
        assert quiet.stand_in_excess == 0.0


def test_onednn_would_run_follows_atens_use_mkldnn():
    """Exact GELU (or its backward) of contiguous bf16 tensors of over one element, as ATen's
    `use_mkldnn` sends to oneDNN where the bf16 check passes; anything else is not stood in."""
    x = torch.randn(4, 6).bfloat16()
    gelu, backward = torch.ops.aten.gelu.default, torch.ops.aten.gelu_backward.default
    would = common._onednn_would_run
    assert would("gelu", (x,), {}) and would("gelu", (x,), {"approximate": "none"})
    assert would("gelu_backward", (x, x), {"approximate": "none"})
    assert not would("gelu", (x,), {"approximate": "tanh"})
    assert not would("gelu", (x.t(),), {})  # not contiguous
    assert not would("gelu", (x[:1, :1],), {})  # one element
    assert not would("gelu", (x.float(),), {})
    assert not would("gelu_backward", (x.float(), x), {})  # an fp32 gradient
    assert not would("relu", (x,), {})
    assert gelu.overloadpacket.__name__ == "gelu" and backward.overloadpacket.__name__ == (
        "gelu_backward"
    )
