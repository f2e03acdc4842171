"""Tests of the PREM moment localizer (PREM §3.4, SPEC §5)."""

from __future__ import annotations

import pytest
import torch

from lit_support import net_arguments
from partial_relevance.models.prem_localizer import (
    CrossModalFusionLayer,
    ModalityGate,
    PremLocalizer,
    grad_reverse,
    index_encoding,
    span_max_pool,
    span_membership,
)
from prem_support import padded_video_inputs, prem_video_inputs

DIMS = dict(visual_dim=12, subtitle_dim=10, query_dim=8, hidden_dim=16, ffn_dim=32)


def small_localizer(**kwargs) -> PremLocalizer:
    torch.manual_seed(0)
    return PremLocalizer(**net_arguments("prem_localizer", **{**DIMS, **kwargs})).eval()


def video_inputs(V: int = 3, L: int = 6):
    return prem_video_inputs(V, L, short_len=4)


def query_inputs(B: int = 2, N: int = 5):
    torch.manual_seed(2)
    tokens = torch.randn(B, N, 8)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 3:] = False
    return tokens, mask


def test_gate_shapes_and_formula():
    torch.manual_seed(0)
    gate = ModalityGate(4)
    h, q = torch.randn(2, 3, 4), torch.randn(2, 4)
    out = gate(h, q)
    assert out.shape == (2, 3, 4)
    hn = h / h.norm(dim=-1, keepdim=True)
    qn = q / q.norm(dim=-1, keepdim=True)
    expected = h * torch.sigmoid(gate.fc(hn * qn[:, None]))
    torch.testing.assert_close(out, expected)


def test_localize_shapes_and_masked_clips_never_win():
    model = small_localizer()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs(B=3)
    out = model(visual, subtitle, clip_mask, sub_mask, tokens, token_mask)
    assert out["start"].shape == (3, 6) and out["end"].shape == (3, 6)
    assert out["fused"].shape == (3, 6, 16)
    for key in ("start", "end"):
        logits = out[key]
        assert torch.isfinite(logits).all()
        assert torch.all(logits[~clip_mask] < logits[clip_mask].min() - 1e30)
        assert clip_mask[torch.arange(3), logits.argmax(-1)].all()
        # Finite even when added (Eq. 13 adds start and end log-probabilities).
        assert torch.isfinite(logits[~clip_mask] + logits[~clip_mask]).all()


def test_cached_encodings_equal_naive_per_pair():
    model = small_localizer()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs()
    videos = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    queries = model.encode_queries(tokens, token_mask)
    pair_query = torch.tensor([0, 0, 1, 1, 1])
    pair_video = torch.tensor([0, 2, 1, 2, 0])
    cached = model.localize(index_encoding(videos, pair_video), index_encoding(queries, pair_query))
    for p, (qi, vi) in enumerate(zip(pair_query.tolist(), pair_video.tolist())):
        naive = model(
            visual[vi : vi + 1],
            subtitle[vi : vi + 1],
            clip_mask[vi : vi + 1],
            sub_mask[vi : vi + 1],
            tokens[qi : qi + 1],
            token_mask[qi : qi + 1],
        )
        for key in ("start", "end", "fused"):
            torch.testing.assert_close(cached[key][p : p + 1], naive[key], atol=1e-5, rtol=1e-5)


def _cross_attention_as_multihead(layer, clips, words, word_mask):
    """The fusion layer's cross-attention as `nn.MultiheadAttention` runs it itself."""
    padding = ~word_mask
    attended, _ = layer.cross_attention(
        clips, words, words, key_padding_mask=padding, need_weights=False
    )
    return attended


@pytest.mark.parametrize("training", [False, True])
def test_word_keys_values_once_per_query_equal_multihead_attention(training):
    """The per-query key / value projections (`encode_queries`' word_kv, expanded to pairs)
    give the cross-attention `nn.MultiheadAttention` computes from the words themselves,
    dropout draws included (same seed), and the same gradients."""
    torch.manual_seed(0)
    layer = CrossModalFusionLayer(16, 4, 32, dropout=0.3).train(training)
    clips = torch.randn(5, 7, 16, requires_grad=True)
    words = torch.randn(2, 6, 16, requires_grad=True)
    word_mask = torch.ones(2, 6, dtype=torch.bool)
    word_mask[1, 4:] = False
    pair_query = torch.tensor([0, 1, 1, 0, 1])
    word_kv = layer.word_keys_values(words)[pair_query]  # [P, N, 2D], projected per query
    torch.manual_seed(1)
    ours = layer._attend_words(clips, word_kv, word_mask[pair_query])
    torch.manual_seed(1)
    reference = _cross_attention_as_multihead(
        layer, clips, words[pair_query], word_mask[pair_query]
    )
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(
        ours.square().sum(), (clips, words, layer.cross_attention.in_proj_weight)
    )
    expected = torch.autograd.grad(
        reference.square().sum(), (clips, words, layer.cross_attention.in_proj_weight)
    )
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_localize_projects_words_itself_without_word_kv():
    model = small_localizer()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs(B=3)
    videos = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    queries = model.encode_queries(tokens, token_mask)
    assert queries["word_kv"].shape == (3, len(model.fusion), 5, 32)
    with_kv = model.localize(videos, queries)
    without = model.localize(videos, {k: v for k, v in queries.items() if k != "word_kv"})
    for key in ("start", "end", "fused"):
        torch.testing.assert_close(with_kv[key], without[key], atol=1e-6, rtol=1e-6)


def test_padding_does_not_change_valid_logits():
    model = small_localizer()
    short_inputs, padded_inputs = padded_video_inputs()
    tokens, token_mask = torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool)
    short = model(*short_inputs, tokens, token_mask)
    long = model(*padded_inputs, tokens, token_mask)
    torch.testing.assert_close(long["start"][:, :4], short["start"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long["end"][:, :4], short["end"], atol=1e-5, rtol=1e-5)


def test_clips_without_subtitle_ignore_subtitle_features():
    model = small_localizer()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs(B=3)
    out = model(visual, subtitle, clip_mask, sub_mask, tokens, token_mask)
    subtitle2 = subtitle.clone()
    subtitle2[~sub_mask] = 30.0
    out2 = model(visual, subtitle2, clip_mask, sub_mask, tokens, token_mask)
    torch.testing.assert_close(out2["start"], out["start"])


@pytest.mark.parametrize(
    "kwargs",
    [dict(use_vis=False), dict(use_sub=False), dict(gates=False), dict(fusion_layers=1)],
)
def test_ablation_switches_run(kwargs):
    model = small_localizer(**kwargs)
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs(B=3)
    out = model(visual, subtitle, clip_mask, sub_mask, tokens, token_mask)
    assert out["start"].shape == (3, 6)
    assert torch.isfinite(out["start"]).all()
    if kwargs.get("gates") is False:
        assert model.vis_gate is None and model.sub_gate is None
    if kwargs.get("use_sub") is False:
        subtitle2 = torch.randn_like(subtitle)
        out2 = model(visual, subtitle2, clip_mask, sub_mask, tokens, token_mask)
        torch.testing.assert_close(out2["start"], out["start"])


def test_span_membership_and_max_pool_by_hand():
    features = torch.tensor([[[1.0, 5.0], [3.0, 0.0], [2.0, 4.0], [9.0, 9.0]]])  # [1, 4, 2]
    clip_mask = torch.tensor([[True, True, True, False]])
    spans = torch.tensor([[[0, 1], [1, 3], [2, 2], [0, 0]]])  # [1, 4, 2]
    span_mask = torch.tensor([[True, True, True, False]])
    member = span_membership(spans, clip_mask, span_mask)
    expected_member = torch.tensor(
        [[[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]], dtype=torch.bool
    )
    assert torch.equal(member, expected_member)
    pooled = span_max_pool(features, spans, clip_mask, span_mask)
    expected = torch.tensor([[[3.0, 5.0], [3.0, 4.0], [2.0, 4.0], [0.0, 0.0]]])
    torch.testing.assert_close(pooled, expected)  # padding clip 3 (9, 9) never counts
    # Changing features outside a span leaves that span's pooled feature unchanged.
    changed = features.clone()
    changed[0, 0] = 100.0
    new = span_max_pool(changed, spans, clip_mask, span_mask)
    torch.testing.assert_close(new[0, 1:3], pooled[0, 1:3])
    assert not torch.allclose(new[0, 0], pooled[0, 0])


def test_span_logits_shape_and_padding():
    model = small_localizer()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs(B=3)
    out = model(visual, subtitle, clip_mask, sub_mask, tokens, token_mask)
    spans = torch.tensor(
        [[[0, 2], [1, 1], [0, 0]], [[2, 3], [0, 3], [0, 0]], [[5, 5], [0, 5], [1, 4]]]
    )
    span_mask = torch.tensor([[True, True, False], [True, True, False], [True, True, True]])
    logits = model.span_logits(out["fused"], out["clip_mask"], spans, span_mask)
    assert logits.shape == (3, 3)
    assert torch.all(logits[~span_mask] == 0)
    assert torch.isfinite(logits).all()


def test_gradient_reversal_flips_sign():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = grad_reverse(x, 1.0)
    torch.testing.assert_close(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -w)
    x.grad = None
    (grad_reverse(x, 0.5) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)


def test_adv_grl_reverses_gradient_into_the_localizer():
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    tokens, token_mask = query_inputs(B=3)
    spans = torch.tensor([[[0, 2]], [[1, 3]], [[2, 5]]])
    span_mask = torch.ones(3, 1, dtype=torch.bool)
    grads = {}
    for grl in (False, True):
        model = small_localizer(adv_grl=grl)
        out = model(visual, subtitle, clip_mask, sub_mask, tokens, token_mask)
        model.span_logits(out["fused"], clip_mask, spans, span_mask).sum().backward()
        grads[grl] = (
            model.clip_fusion.weight.grad.clone(),
            model.adv_encoder.attn_norm.weight.grad,
        )
    torch.testing.assert_close(grads[True][0], -grads[False][0])  # before the reversal: flipped
    torch.testing.assert_close(grads[True][1], grads[False][1])  # after it: unchanged
