"""Tests of the PREM video retriever (PREM §3.3, SPEC §4)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_support import net_arguments
from partial_relevance.models.prem_retriever import (
    PremRetriever,
    eq6_score,
    index_encoding,
)
from prem_support import padded_video_inputs, prem_video_inputs

R = 1 / math.sqrt(2)


def small_retriever(**kwargs) -> PremRetriever:
    torch.manual_seed(0)
    args = dict(visual_dim=12, subtitle_dim=10, query_dim=8, hidden_dim=16, ffn_dim=32)
    args.update(kwargs)
    return PremRetriever(**net_arguments("prem_retriever", **args)).eval()


def hand_case():
    """Two queries, two videos of L=3 clips, D=2 (values chosen for exact cosines).

    Video 0: clip 2 is padding (its features would win both maxima if it counted); clip 0 has
    no subtitle. Video 1: three real clips, no subtitle at all (DiDeMo-like).
    """
    q_vis = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    q_sub = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    h_vis = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]],
            [[-1.0, 0.0], [3.0, 4.0], [0.0, -2.0]],
        ]
    )
    h_sub = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
            [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
        ]
    )
    clip_mask = torch.tensor([[True, True, False], [True, True, True]])
    sub_mask = torch.tensor([[False, True, True], [False, False, False]])
    return q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask


def test_eq6_hand_values_with_masks_and_missing_subtitles():
    q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask = hand_case()
    scores = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask)
    # q0/v0: vis cos (0, 1/√2, [1 masked]) -> 1/√2; sub only clip 1 valid: cos([0,1],[1,0]) = 0.
    # q0/v1: vis cos (-1, 0.6, 0) -> 0.6; no subtitle -> visual term alone (not averaged with 0).
    # q1/v0: vis cos (1, 1/√2) -> 1; sub clip 1: cos([3,0],[1,0]) = 1 -> (1 + 1) / 2.
    # q1/v1: vis cos (0, 0.8, -1) -> 0.8 alone.
    expected = torch.tensor([[0.5 * (R + 0.0), 0.6], [1.0, 0.8]])
    torch.testing.assert_close(scores, expected)


def test_eq6_single_stream_ablations():
    q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask = hand_case()
    vis_only = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, use_sub=False)
    torch.testing.assert_close(vis_only, torch.tensor([[R, 0.6], [1.0, 0.8]]))
    sub_only = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, use_vis=False)
    # No subtitle in video 1: nothing valid -> 0.
    torch.testing.assert_close(sub_only, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError):
        eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, use_vis=False, use_sub=False)


def test_eq6_restrict_limits_both_maxima():
    q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask = hand_case()
    restrict = torch.zeros(2, 2, 3, dtype=torch.bool)
    restrict[0, 0, 0] = True  # q0/v0: clip 0 only (no subtitle) -> vis cos 0 alone
    restrict[0, 1, 1:] = True  # q0/v1: clips 1-2 -> 0.6
    restrict[1, 0, 1] = True  # q1/v0: clip 1 -> vis 1/√2, sub 1
    restrict[1, 1, 2] = True  # q1/v1: clip 2 -> vis -1
    scores = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, restrict)
    expected = torch.tensor([[0.0, 0.6], [0.5 * (R + 1.0), -1.0]])
    torch.testing.assert_close(scores, expected)
    # A pair with nothing valid under the restriction scores 0 and stays finite.
    empty = eq6_score(
        q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, torch.zeros(2, 2, 3, dtype=torch.bool)
    )
    torch.testing.assert_close(empty, torch.zeros(2, 2))


def test_eq6_aligned_score_matches_full_matrix_diagonal():
    q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask = hand_case()
    full = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask)
    pairs = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, aligned=True)
    torch.testing.assert_close(pairs, full.diagonal())
    restrict = torch.tensor([[True, False, False], [False, True, True]])
    pairs_r = eq6_score(q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, restrict, aligned=True)
    full_r = eq6_score(
        q_vis, q_sub, h_vis, h_sub, clip_mask, sub_mask, restrict[None].expand(2, -1, -1)
    )
    torch.testing.assert_close(pairs_r, full_r.diagonal())


def test_modality_pooling_weights_sum_to_one_over_words():
    model = small_retriever()
    tokens = torch.randn(3, 6, 8)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=torch.bool)
    out = model.encode_queries(tokens, mask)
    assert out["vis"].shape == (3, 16) and out["sub"].shape == (3, 16)
    weights = out["weights"]
    assert weights.shape == (3, 2, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
    assert torch.all(weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0)
    assert not torch.allclose(out["vis"], out["sub"])  # two different heads


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_mean_and_max_pooling_give_one_vector(pooling):
    model = small_retriever(pooling=pooling)
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = model.encode_queries(tokens, mask)
    assert out["weights"] is None
    torch.testing.assert_close(out["vis"], out["sub"])
    # Padding words do not change the pooled vector.
    tokens2 = tokens.clone()
    tokens2[0, 3:] = 100.0
    torch.testing.assert_close(model.encode_queries(tokens2, mask)["vis"], out["vis"])


def test_unknown_pooling_rejected():
    with pytest.raises(ValueError):
        small_retriever(pooling="attention")


def video_inputs(V: int = 3, L: int = 5):
    return prem_video_inputs(V, L, short_len=3)


def test_encode_videos_shapes_and_query_independence():
    model = small_retriever()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    out = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    assert out["vis"].shape == (3, 5, 16) and out["sub"].shape == (3, 5, 16)
    torch.testing.assert_close(out["sub_mask"], sub_mask & clip_mask)
    # Each video is encoded on its own: encoding a single video gives the same features.
    alone = model.encode_videos(visual[1:2], subtitle[1:2], clip_mask[1:2], sub_mask[1:2])
    torch.testing.assert_close(alone["vis"], out["vis"][1:2])
    # Scoring through the model equals eq6 on the encodings.
    queries = model.encode_queries(torch.randn(4, 6, 8), torch.ones(4, 6, dtype=torch.bool))
    scores = model.score(queries, out)
    assert scores.shape == (4, 3)
    expected = eq6_score(
        queries["vis"], queries["sub"], out["vis"], out["sub"], out["clip_mask"], out["sub_mask"]
    )
    torch.testing.assert_close(scores, expected)
    # Video 2 has no subtitle: its score is the visual term alone.
    vis_only = eq6_score(
        queries["vis"],
        queries["sub"],
        out["vis"],
        out["sub"],
        out["clip_mask"],
        out["sub_mask"],
        use_sub=False,
    )
    torch.testing.assert_close(scores[:, 2], vis_only[:, 2])
    # score_pairs on indexed videos = the matching entries of the full matrix.
    pair_video = torch.tensor([0, 2, 1, 1])
    pairs = model.score_pairs(queries, index_encoding(out, pair_video))
    torch.testing.assert_close(pairs, scores[torch.arange(4), pair_video])


def test_masked_subtitles_do_not_leak():
    model = small_retriever()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    out = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    subtitle2 = subtitle.clone()
    subtitle2[~sub_mask] = 50.0
    out2 = model.encode_videos(visual, subtitle2, clip_mask, sub_mask)
    torch.testing.assert_close(out2["vis"], out["vis"])
    valid = sub_mask & clip_mask
    torch.testing.assert_close(out2["sub"][valid], out["sub"][valid])


def test_empty_subtitle_zeros_mode_counts_every_clip():
    model = small_retriever(empty_subtitle="zeros")
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    out = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    torch.testing.assert_close(out["sub_mask"], clip_mask)
    subtitle2 = subtitle.clone()
    subtitle2[~sub_mask] = 50.0  # replaced by zeros inside: no effect
    torch.testing.assert_close(
        model.encode_videos(visual, subtitle2, clip_mask, sub_mask)["vis"], out["vis"]
    )
    with pytest.raises(ValueError):
        small_retriever(empty_subtitle="drop")


@pytest.mark.parametrize(("use_vis", "use_sub"), [(True, False), (False, True)])
def test_single_stream_models(use_vis, use_sub):
    model = small_retriever(use_vis=use_vis, use_sub=use_sub)
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    videos = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    disabled = "sub" if use_vis else "vis"
    assert torch.all(videos[disabled] == 0)
    queries = model.encode_queries(torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool))
    scores = model.score(queries, videos)
    # One stream: its maximum cosine over its valid clips (subtitles: clips with one), 0 for a
    # video without any.
    stream = "vis" if use_vis else "sub"
    valid = videos["clip_mask"].bool()
    if stream == "sub":
        valid = valid & videos["sub_mask"].bool()
    q = torch.nn.functional.normalize(queries[stream], dim=-1)
    h = torch.nn.functional.normalize(videos[stream], dim=-1)
    cos = torch.einsum("bd,vld->bvl", q, h).masked_fill(~valid[None], float("-inf"))
    expected = torch.where(valid.any(-1)[None], cos.amax(-1), torch.zeros(()))
    torch.testing.assert_close(scores, expected)
    assert torch.isfinite(scores).all()


def test_score_is_differentiable_and_finite_with_masks():
    model = small_retriever().train()
    visual, subtitle, clip_mask, sub_mask = video_inputs()
    videos = model.encode_videos(visual, subtitle, clip_mask, sub_mask)
    queries = model.encode_queries(torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool))
    restrict = torch.zeros(2, 3, 5, dtype=torch.bool)
    restrict[:, :, :2] = True
    total = model.score(queries, videos).sum() + model.score(queries, videos, restrict).sum()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_padding_does_not_change_scores():
    model = small_retriever()
    short_inputs, padded_inputs = padded_video_inputs()
    queries = model.encode_queries(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    short = model.score(queries, model.encode_videos(*short_inputs))
    padded = model.encode_videos(*padded_inputs)
    torch.testing.assert_close(model.score(queries, padded), short, atol=1e-6, rtol=1e-5)
