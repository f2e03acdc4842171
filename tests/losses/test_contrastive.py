"""Hand-computed checks of the shared ranking losses (PRVR §3.2.3 Eq. 5-6, SPEC §3)."""

from __future__ import annotations

import math

import pytest
import torch

from partial_relevance.losses.contrastive import (
    multi_positive_infonce,
    pair_similarity,
    triplet_ranking_loss,
)

# 3 queries x 2 videos; q0, q1 on video 0, q2 on video 1.
Y = torch.tensor([0, 0, 1])
SCORES = torch.tensor(
    [
        [0.60, 0.50],
        [0.50, 0.40],
        [0.35, 0.45],
    ]
)
# margin m = 0.2. b = 2, so V⁻ is forced (the other video); T⁻ of q0, q1 is forced (q2).
# q0 (V=0, pos .60): T⁻=q2: .2 + .35 - .60 = -.05 -> 0 ;  V⁻=1: .2 + .50 - .60 = .10
# q1 (V=0, pos .50): T⁻=q2: .2 + .35 - .50 = .05        ;  V⁻=1: .2 + .40 - .50 = .10
# q2 (V=1, pos .45): T⁻=q0: .2 + .50 - .45 = .25  or  T⁻=q1: .2 + .40 - .45 = .15
#                    V⁻=0:  .2 + .35 - .45 = .10
# hard (T⁻ of q2 = q0, the highest in column 1 among other-video queries):
#   (.10 + .15 + .35) / 3 = .20
# random: q2 uses q0 -> .20, or q1 -> (.10 + .15 + .25) / 3 = .5 / 3
HARD_VALUE = 0.20
RANDOM_VALUES = (0.20, 0.5 / 3)


def test_triplet_hard_hand_value() -> None:
    loss = triplet_ranking_loss(SCORES, Y, margin=0.2, hard_negatives=True, hard_topk=20)
    assert loss.item() == pytest.approx(HARD_VALUE, abs=1e-6)


def test_triplet_random_only_valid_negatives() -> None:
    # Any same-video T⁻ or V⁻ = V would produce a value outside RANDOM_VALUES
    # (e.g. q0 with T⁻ = q1: .2 + .5 - .6 = .1 > 0).
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        value = triplet_ranking_loss(SCORES, Y, margin=0.2, generator=g).item()
        match = [v for v in RANDOM_VALUES if abs(v - value) < 1e-6]
        assert match, value
        seen.add(match[0])
    assert seen == set(RANDOM_VALUES)  # both negatives of q2 get drawn


def test_triplet_random_is_deterministic_with_generator() -> None:
    scores = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 2, 2, 3, 3])
    a = triplet_ranking_loss(scores, y, margin=1.0, generator=torch.Generator().manual_seed(3))
    b = triplet_ranking_loss(scores, y, margin=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_triplet_hard_topk_samples_only_hardest_videos() -> None:
    # One query, 4 videos, positive 0. No other query -> the T⁻ term is 0.
    # hard_topk = 2: V⁻ ∈ {1 (.45), 3 (.40)}, never video 2 (.10).
    #   V⁻=1: .2 + .45 - .5 = .15 ; V⁻=3: .2 + .40 - .5 = .10 ; (video 2 would give 0)
    scores = torch.tensor([[0.5, 0.45, 0.10, 0.40]])
    y = torch.tensor([0])
    seen = set()
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        value = triplet_ranking_loss(scores, y, 0.2, hard_negatives=True, hard_topk=2, generator=g)
        value = round(value.item(), 6)
        assert value in (0.15, 0.10)
        seen.add(value)
    assert seen == {0.15, 0.10}
    # hard_topk larger than the number of other videos: all 3 candidates possible, no error.
    values = {
        round(
            triplet_ranking_loss(
                scores,
                y,
                0.2,
                hard_negatives=True,
                hard_topk=20,
                generator=torch.Generator().manual_seed(s),
            ).item(),
            6,
        )
        for s in range(40)
    }
    assert values == {0.15, 0.10, 0.0}


@pytest.mark.parametrize("hard", [False, True])
def test_triplet_no_valid_negative_is_zero(hard: bool) -> None:
    # b == 1: no V⁻ and (all queries on one video) no T⁻.
    scores = torch.tensor([[0.1], [0.3]], requires_grad=True)
    loss = triplet_ranking_loss(scores, torch.tensor([0, 0]), 5.0, hard, hard_topk=20)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    # All queries on one video but b = 2: only the V⁻ term: mean(5 + .2 - .1, 5 + .2 - .3).
    scores2 = torch.tensor([[0.1, 0.2], [0.3, 0.2]])
    loss2 = triplet_ranking_loss(scores2, torch.tensor([0, 0]), 5.0, hard, hard_topk=20)
    assert loss2.item() == pytest.approx((5.1 + 4.9) / 2, abs=1e-5)


@pytest.mark.parametrize("hard", [False, True])
def test_triplet_gradients_reach_positive_and_negatives(hard: bool) -> None:
    scores = SCORES.clone().requires_grad_(True)
    loss = triplet_ranking_loss(scores, Y, margin=2.0, hard_negatives=hard, hard_topk=20)
    loss.backward()
    # With margin 2 every term is active: every positive gets −(2 terms)/3.
    assert scores.grad[0, 0].item() < 0 and scores.grad[2, 1].item() < 0
    # Negatives: S[0,1] is V⁻ of q0, S[2,0] is T⁻ of q0/q1 and V⁻ of q2.
    assert scores.grad[0, 1].item() > 0 and scores.grad[2, 0].item() > 0


# Multi-positive InfoNCE, same y, scores already / τ:
#   s = [[1, 0], [0, 0], [0, 1]]
# t2v: row0 log(e + 1) - 1 ; row1 log 2 - 0 ; row2 log(1 + e) - 1
# v2t "video": video 0 column (1, 0, 0), positives q0, q1: log(e + 2) - log(e + 1)
#              video 1 column (0, 0, 1), positive q2:      log(e + 2) - 1      -> mean of 2
# v2t "pair":  q0: log(e + 2) - 1 ; q1: log(e + 2) - 0 ; q2: log(e + 2) - 1 -> mean of 3
E = math.e
NCE_S = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
T2V = (2 * (math.log(E + 1) - 1) + math.log(2)) / 3
V2T_VIDEO = ((math.log(E + 2) - math.log(E + 1)) + (math.log(E + 2) - 1)) / 2
V2T_PAIR = math.log(E + 2) - 2 / 3


def test_infonce_video_average_hand_value() -> None:
    loss = multi_positive_infonce(NCE_S, Y, average="video")
    assert loss.item() == pytest.approx(T2V + V2T_VIDEO, abs=1e-6)


def test_infonce_pair_average_hand_value() -> None:
    loss = multi_positive_infonce(NCE_S, Y, average="pair")
    assert loss.item() == pytest.approx(T2V + V2T_PAIR, abs=1e-6)
    assert abs(V2T_PAIR - V2T_VIDEO) > 0.1  # the two averages really differ here


def test_infonce_one_positive_per_video_averages_agree() -> None:
    s = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    d = torch.arange(5)
    a = multi_positive_infonce(s, d, average="video")
    b = multi_positive_infonce(s, d, average="pair")
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    # and both equal the symmetric cross-entropy
    ref = torch.nn.functional.cross_entropy(s, d) + torch.nn.functional.cross_entropy(s.t(), d)
    assert a.item() == pytest.approx(ref.item(), abs=1e-6)


def test_infonce_video_without_query_is_skipped_and_grad_finite() -> None:
    # Video 2 has no query in the batch: it only appears as a t2v negative.
    s = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.2], [0.0, 1.0, -0.3]], requires_grad=True)
    loss = multi_positive_infonce(s, Y, average="video")
    lse = torch.logsumexp(s.detach(), dim=1)
    t2v = (lse - s.detach()[[0, 1, 2], [0, 0, 1]]).mean()
    col = torch.logsumexp(s.detach(), dim=0)
    v2t = ((col[0] - torch.logsumexp(s.detach()[:2, 0], 0)) + (col[1] - s.detach()[2, 1])) / 2
    assert loss.item() == pytest.approx((t2v + v2t).item(), abs=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_infonce_unknown_average_raises() -> None:
    with pytest.raises(ValueError, match="average"):
        multi_positive_infonce(NCE_S, Y, average="query")


def test_pair_similarity() -> None:
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])
    dot = pair_similarity(a, b, "dot")
    assert torch.allclose(dot, torch.tensor([[8.0, 7.0, 6.0], [0.0, 1.0, 2.0]]))
    cos = pair_similarity(a, b, "cos")
    r2 = 1 / math.sqrt(2)
    expected = torch.tensor([[0.8, 7 / 5 * r2, 0.6], [0.0, r2, 1.0]])
    assert torch.allclose(cos, expected, atol=1e-6)
    with pytest.raises(ValueError, match="similarity"):
        pair_similarity(a, b, "l2")


def test_infonce_gradients() -> None:
    s = NCE_S.clone().requires_grad_(True)
    for average in ("video", "pair"):
        s.grad = None
        multi_positive_infonce(s, Y, average=average).backward()
        assert (s.grad != 0).all()
