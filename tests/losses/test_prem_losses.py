"""Tests of the PREM losses (PREM Eq. 7-8, 11-12; SPEC §4-§5), with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from partial_relevance.losses.prem import (
    adversarial_bce,
    in_batch_negative_mask,
    localizer_loss,
    relevant_content_nce,
    retriever_loss,
    shared_norm_ce,
    strong_weak_masks,
    video_to_query_nce,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def as_bool(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_strong_weak_masks_start_end_and_whole_video():
    clip_mask = as_bool([[1, 1, 1, 1, 1, 0]] * 3)  # 5 real clips + padding
    spans = torch.tensor([[0, 1], [3, 4], [0, 4]])
    strong, weak, weak_valid = strong_weak_masks(spans, clip_mask)
    assert torch.equal(
        strong, as_bool([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    )
    assert torch.equal(weak, as_bool([[0, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0] * 6]))
    assert torch.equal(weak_valid, as_bool([1, 1, 0]))


def three_query_case():
    """Queries 0 and 1 share video 0, query 2 has video 1 (V = 2 batch videos)."""
    strong = torch.tensor([0.5, 0.2, 0.9])
    weak = torch.tensor([0.1, 0.0, 0.3])
    weak_valid = as_bool([1, 0, 1])
    negatives = torch.tensor([[0.3, 0.1], [0.4, -0.2], [0.0, 0.6]])
    positive_video = torch.tensor([0, 0, 1])
    return strong, weak, weak_valid, negatives, positive_video


def test_relevant_content_nce_by_hand():
    strong, weak, weak_valid, negatives, positive_video = three_query_case()
    negative_mask = in_batch_negative_mask(positive_video, torch.tensor([0, 1]))
    assert torch.equal(negative_mask, as_bool([[0, 1], [0, 1], [1, 0]]))
    out = relevant_content_nce(
        strong, weak, weak_valid, negatives, negative_mask, tau=1.0, weak_weight=0.5
    )
    # −log(e^p / (e^p + e^n)) = softplus(n − p), one usable negative per query.
    l_s = (softplus(0.1 - 0.5) + softplus(-0.2 - 0.2) + softplus(0.0 - 0.9)) / 3
    l_w = (softplus(0.1 - 0.1) + softplus(0.0 - 0.3)) / 2  # query 1 has no weak positive
    assert out["L_S"].item() == pytest.approx(l_s, rel=1e-6)
    assert out["L_W"].item() == pytest.approx(l_w, rel=1e-6)
    assert out["L_q2v"].item() == pytest.approx(l_s + 0.5 * l_w, rel=1e-6)


def test_same_video_negatives_are_masked():
    strong, weak, weak_valid, negatives, positive_video = three_query_case()
    negative_mask = in_batch_negative_mask(positive_video, torch.tensor([0, 1]))
    out = relevant_content_nce(strong, weak, weak_valid, negatives, negative_mask, 0.01, 0.5)
    changed = negatives.clone()
    changed[~negative_mask] = 5.0  # the queries' own video: must not matter
    out2 = relevant_content_nce(strong, weak, weak_valid, changed, negative_mask, 0.01, 0.5)
    for key in ("L_S", "L_W", "L_q2v"):
        torch.testing.assert_close(out[key], out2[key])


def test_relevant_content_nce_paper_tau_and_no_weak():
    strong = torch.tensor([0.50, 0.20, 0.90])
    weak = torch.zeros(3)
    negatives = torch.tensor([[0.3, 0.52], [0.4, 0.19], [0.87, 0.6]])
    negative_mask = in_batch_negative_mask(torch.tensor([0, 0, 1]), torch.tensor([0, 1]))
    none_valid = torch.zeros(3, dtype=torch.bool)
    out = relevant_content_nce(strong, weak, none_valid, negatives, negative_mask, 0.01, 0.5)
    assert out["L_W"].item() == 0.0
    # τ = 0.01 (the paper's, SPEC §4): softplus((n − p) / τ).
    l_s = (softplus(2.0) + softplus(-1.0) + softplus(-3.0)) / 3
    assert out["L_S"].item() == pytest.approx(l_s, rel=1e-4)
    torch.testing.assert_close(out["L_q2v"], out["L_S"])
    # Far-apart scores at τ = 0.01 stay finite.
    far = relevant_content_nce(
        torch.tensor([1.0, -1.0, 0.0]), weak, none_valid, -negatives, negative_mask, 0.01, 0.5
    )
    assert torch.isfinite(far["L_q2v"])


def test_video_to_query_by_hand():
    strong = torch.tensor([0.5, 0.2, 0.9])
    scores = torch.tensor([[0.7, 0.1], [0.6, -0.3], [0.4, 0.2]])  # [B queries, V videos]
    positive_video = torch.tensor([0, 0, 1])
    loss = video_to_query_nce(strong, scores, positive_video, tau=1.0)
    # Video 0 (queries 0, 1): the only other query is 2, score 0.4 with video 0.
    # Video 1 (query 2): queries 0 and 1 against video 1: 0.1 and -0.3.
    l0 = math.log(math.exp(0.5) + math.exp(0.4)) - 0.5
    l1 = math.log(math.exp(0.2) + math.exp(0.4)) - 0.2
    l2 = math.log(math.exp(0.9) + math.exp(0.1) + math.exp(-0.3)) - 0.9
    assert loss.item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-6)
    # Scores of queries of the same video never enter: changing them changes nothing.
    changed = scores.clone()
    changed[0, 0] = changed[1, 0] = changed[2, 1] = 9.0
    torch.testing.assert_close(video_to_query_nce(strong, changed, positive_video, 1.0), loss)


def test_retriever_loss_sums_terms():
    strong, weak, weak_valid, negatives, positive_video = three_query_case()
    inputs = (strong, weak, weak_valid, negatives, positive_video)
    out = retriever_loss(*inputs, tau=0.1, weak_weight=0.5, video_to_query=True)
    mask = in_batch_negative_mask(positive_video, torch.tensor([0, 1]))
    q2v = relevant_content_nce(strong, weak, weak_valid, negatives, mask, tau=0.1, weak_weight=0.5)
    v2q = video_to_query_nce(strong, negatives, positive_video, tau=0.1)
    torch.testing.assert_close(out["L_q2v"], q2v["L_q2v"])
    torch.testing.assert_close(out["L_v2q"], v2q)
    torch.testing.assert_close(out["loss"], q2v["L_q2v"] + v2q)
    assert set(out) == {"L_S", "L_W", "L_q2v", "L_v2q", "loss"}
    no_v2q = retriever_loss(*inputs, tau=0.1, weak_weight=0.5, video_to_query=False)
    torch.testing.assert_close(no_v2q["loss"], q2v["L_q2v"])


def test_shared_norm_vs_per_video_by_hand():
    # One query, K = 2 videos (0: GT, 1: negative), L = 3; video 0's clip 2 is padding.
    start = torch.tensor([[[1.0, 0.0, 100.0], [0.5, 2.0, 0.0]]])
    end = torch.tensor([[[0.0, 1.5, 100.0], [1.0, 0.0, -1.0]]])
    clip_mask = as_bool([[[1, 1, 0], [1, 1, 1]]])
    gt_start, gt_end = torch.tensor([0]), torch.tensor([1])
    shared = shared_norm_ce(start, end, clip_mask, gt_start, gt_end, shared=True)
    per_video = shared_norm_ce(start, end, clip_mask, gt_start, gt_end, shared=False)
    e = math.exp
    st_shared = -math.log(e(1.0) / (e(1.0) + e(0.0) + e(0.5) + e(2.0) + e(0.0)))
    ed_shared = -math.log(e(1.5) / (e(0.0) + e(1.5) + e(1.0) + e(0.0) + e(-1.0)))
    st_video = -math.log(e(1.0) / (e(1.0) + e(0.0)))
    ed_video = -math.log(e(1.5) / (e(0.0) + e(1.5)))
    assert shared.item() == pytest.approx(st_shared + ed_shared, rel=1e-6)
    assert per_video.item() == pytest.approx(st_video + ed_video, rel=1e-6)
    assert shared.item() > per_video.item()


def test_shared_norm_geq_per_video_random():
    torch.manual_seed(0)
    start, end = torch.randn(4, 3, 7), torch.randn(4, 3, 7)
    clip_mask = torch.rand(4, 3, 7) > 0.2
    clip_mask[:, 0, :3] = True
    gt_start, gt_end = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 1, 2, 1])
    shared = shared_norm_ce(start, end, clip_mask, gt_start, gt_end)
    per_video = shared_norm_ce(start, end, clip_mask, gt_start, gt_end, shared=False)
    assert shared.item() >= per_video.item()
    assert torch.isfinite(shared)


def test_adversarial_bce_average_over_spans():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(logits, labels)
    torch.testing.assert_close(adversarial_bce(logits, labels), expected)
    mask = as_bool([[1, 1, 0], [1, 0, 0]])
    by_hand = (softplus(-2.0) + softplus(-1.0) + softplus(0.0)) / 3
    assert adversarial_bce(logits, labels, mask).item() == pytest.approx(by_hand, rel=1e-6)


def test_localizer_loss_eq12():
    out = localizer_loss(torch.tensor(2.0), torch.tensor(0.5), adv_weight=0.8)
    assert out["loss"].item() == pytest.approx(2.4)
    assert localizer_loss(torch.tensor(2.0), None, 0.8)["loss"].item() == pytest.approx(2.0)
