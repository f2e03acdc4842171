"""Hand-computed checks of the PRVR module losses: ICE (§3.3), IRM (§3.4), TCP (§3.5)."""

from __future__ import annotations

import math

import pytest
import torch

from partial_relevance.losses.prvr import (
    ice_loss,
    ice_select_pairs,
    irm_neg_loss,
    irm_red_loss,
    permute_rows,
    tcp_group_labels,
    tcp_loss,
    tcp_shuffle,
)
from support import lse

# --------------------------------------------------------------------------- ICE

# 4 moments x 3 queries. Moments m0, m1 belong to video A, m2, m3 to video B;
# q0 is a query of A, q1 of B, q2 of a third video C.
ICE_COS = torch.tensor(
    [
        # q0    q1    q2
        [0.90, 0.70, 0.10],  # m0 (A)
        [0.95, 0.20, 0.30],  # m1 (A): highest raw match of q0, but its own video
        [0.60, 0.99, 0.35],  # m2 (B): highest raw match of q1, but its own video
        [0.20, 0.50, 0.38],  # m3 (B)
    ]
)
MOMENT_VIDEO = torch.tensor([0, 0, 1, 1])
QUERY_VIDEO = torch.tensor([0, 1, 2])
SAME = MOMENT_VIDEO[:, None] == QUERY_VIDEO[None, :]
# After S = -1 on own-video entries:
#   m0: [-1, .70, .10] -> q1     m1: [-1, .20, .30] -> q2
#   m2: [.60, -1, .35] -> q0     m3: [.20, -1, .38] -> q2
#   q0 column -> m2 (.60), q1 column -> m0 (.70), q2 column -> m3 (.38)
# Mutual: (m2, q0) S=.60, (m0, q1) S=.70, (m3, q2) S=.38; m1 is in no pair.
# β_t = .4 drops (m3, q2); β_t = None keeps it; β_t = .65 keeps only (m0, q1).


def test_ice_select_threshold() -> None:
    m, q = ice_select_pairs(ICE_COS, SAME, threshold=0.4)
    assert m.tolist() == [2, 0] and q.tolist() == [0, 1]
    assert m.dtype == torch.long and q.dtype == torch.long
    m, q = ice_select_pairs(ICE_COS, SAME, threshold=0.65)
    assert m.tolist() == [0] and q.tolist() == [1]


def test_ice_select_threshold_none_keeps_every_mutual_pair() -> None:
    m, q = ice_select_pairs(ICE_COS, SAME, threshold=None)
    assert m.tolist() == [2, 0, 3] and q.tolist() == [0, 1, 2]


def test_ice_select_honours_own_video_mask() -> None:
    # Without the mask q0 would pair with m1 (.95) and q1 with m2 (.99).
    no_mask = torch.zeros_like(SAME)
    m, q = ice_select_pairs(ICE_COS, no_mask, threshold=0.4)
    assert (1, 0) in list(zip(m.tolist(), q.tolist()))
    m, q = ice_select_pairs(ICE_COS, SAME, threshold=None)
    pairs = list(zip(m.tolist(), q.tolist()))
    assert (1, 0) not in pairs and (2, 1) not in pairs
    assert not SAME[m, q].any()


def test_ice_select_ties_to_lowest_index() -> None:
    # All similarities equal: every moment's argmax is q0, q0's and q1's argmax is m0.
    S = torch.full((3, 2), 0.5)
    m, q = ice_select_pairs(S, torch.zeros(3, 2, dtype=torch.bool), threshold=None)
    assert m.tolist() == [0] and q.tolist() == [0]
    # Tie in column 1 between m1 and m2 (both .9, both with argmax q1): m1 wins.
    S = torch.tensor([[0.8, 0.1], [0.1, 0.9], [0.1, 0.9]])
    m, q = ice_select_pairs(S, torch.zeros(3, 2, dtype=torch.bool), threshold=0.4)
    assert m.tolist() == [0, 1] and q.tolist() == [0, 1]


def test_ice_select_in_bf16_mines_what_bf16_argmaxes_and_threshold_give() -> None:
    """A bf16 similarity (autocast's) is mined on its own values: ties, argmaxes and the β_t
    comparison (the threshold rounded to bf16, as a bf16 tensor compares) as in bf16 itself."""
    gen = torch.Generator().manual_seed(0)
    cos = (torch.rand(64, 24, generator=gen) * 0.5).bfloat16()  # many ties in bf16
    cos[5, 3] = cos[9, 3] = 0.5  # a tie for query 3's best moment: the lower index wins
    same = torch.rand(64, 24, generator=gen) < 0.1
    same[5, 3] = same[9, 3] = False
    threshold = 0.2  # bf16(0.2) = 0.2002: a bf16 value of 0.2002 is not above it
    cos[20, :] = cos[:, 7] = 0.0  # (m20, q7) a mutual pair at exactly bf16(0.2)
    cos[20, 7], same[20, :], same[:, 7] = threshold, False, False

    S = cos.masked_fill(same, -1.0)  # the selection spelled out in bf16
    best_query, best_moment = S.argmax(dim=1), S.argmax(dim=0)
    queries = torch.arange(24)
    keep = (best_query[best_moment] == queries) & ~same[best_moment, queries]
    keep &= S[best_moment, queries] > threshold
    m, q = ice_select_pairs(cos, same, threshold)
    assert m.tolist() == best_moment[keep].tolist() and q.tolist() == queries[keep].tolist()
    assert best_moment[3] == 5 and len(q) > 0
    assert best_moment[7] == 20 and best_query[20] == 7 and 7 not in q.tolist()


def test_ice_select_never_keeps_own_video_when_everything_is_masked() -> None:
    # One video in the batch: every entry is masked to -1, no pair survives even with None.
    m, q = ice_select_pairs(torch.rand(4, 2), torch.ones(4, 2, dtype=torch.bool), None)
    assert m.numel() == 0 and q.numel() == 0


def test_ice_loss_zero_below_two_pairs() -> None:
    for n_c in (0, 1):
        mo = torch.randn(n_c, 4, requires_grad=True)
        qu = torch.randn(n_c, 4, requires_grad=True)
        loss = ice_loss(mo, qu, 0.2, "dot", 1.0, "video", nce_weight=0.04)
        assert loss.item() == 0.0 and loss.dim() == 0


def test_ice_loss_two_pair_hand_value() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    moments = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cosine [query, moment] = [[1, .6], [0, .8]], margin .3, single negatives (deterministic):
    #   q0: T⁻=q1 on m0: .3 + 0 - 1 -> 0 ; V⁻=m1: .3 + .6 - 1 -> 0
    #   q1: T⁻=q0 on m1: .3 + .6 - .8 = .1 ; V⁻=m0: .3 + 0 - .8 -> 0      => triplet .05
    # dot / τ (τ = .5) = [[2, 1.2], [0, 1.6]]:
    #   t2v = (lse(2, 1.2) - 2 + lse(0, 1.6) - 1.6) / 2
    #   v2t = (lse(2, 0) - 2 + lse(1.2, 1.6) - 1.6) / 2
    t2v = (lse(2, 1.2) - 2 + lse(0, 1.6) - 1.6) / 2
    v2t = (lse(2, 0) - 2 + lse(1.2, 1.6) - 1.6) / 2
    # L_ice = triplet + λ₂ · InfoNCE, λ₂ = 0.04 (SPEC §3, revised)
    expected = 0.05 + 0.04 * (t2v + v2t)
    for average in ("video", "pair"):  # one positive per column: both averages agree
        loss = ice_loss(
            moments,
            queries,
            margin=0.3,
            nce_sim="dot",
            tau=0.5,
            nce_average=average,
            nce_weight=0.04,
        )
        assert loss.item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- IRM

IRM_Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
IRM_Y = torch.tensor([0, 1])
IRM_MCOS = torch.tensor([[0.5, 0.1], [0.2, 0.4]])
IRM_MNCE = torch.tensor([[1.0, 0.0], [0.5, 2.0]])


def _irm_neg(r_v: torch.Tensor, r_q: torch.Tensor) -> torch.Tensor:
    return irm_neg_loss(
        r_v,
        r_q,
        IRM_Q,
        IRM_MCOS,
        IRM_MNCE,
        IRM_Y,
        margin=0.2,
        nce_sim="dot",
        tau=1.0,
        nce_weight=0.04,
    )


def test_irm_neg_hand_value() -> None:
    r_v = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    r_q = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
    # cos(r, q): r_v0 .6, r_q0 0, r_v1 0, r_q1 .6; positives S_m: q0 .5, q1 .4
    # triplet: q0: (.2 + .6 - .5) + max(0, .2 + 0 - .5) = .3 ; q1: 0 + (.2 + .6 - .4) = .4
    #          -> (.3 + .4) / 2 = .35
    # InfoNCE (dot, τ = 1): q0 row [1.0, 0.0, .6, 0] -> lse - 1.0
    #                       q1 row [2.0, 0.5, 0, .6] -> lse - 2.0   (positive S_m(V_1, q1) = 2)
    nce = ((lse(1.0, 0.0, 0.6, 0.0) - 1.0) + (lse(2.0, 0.5, 0.0, 0.6) - 2.0)) / 2
    # L_neg = triplet + λ₂ · InfoNCE, λ₂ = 0.04 (SPEC §3, revised)
    assert _irm_neg(r_v, r_q).item() == pytest.approx(0.35 + 0.04 * nce, abs=1e-6)


def test_irm_neg_lower_when_redundancy_is_pushed_away() -> None:
    r_q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # orthogonal to the queries
    base = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # cos .6 / .8 with q0 / q1
    away = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # cos 0
    toward = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cos 1
    l_base, l_away, l_toward = (_irm_neg(r, r_q).item() for r in (base, away, toward))
    assert l_away < l_base < l_toward
    # Same with r_q moved instead.
    l_base, l_away, l_toward = (_irm_neg(away, r).item() for r in (base, away, toward))
    assert l_away < l_base < l_toward
    # And the gradient points the same way: descending it lowers cos(r, q).
    r_v = base.clone().requires_grad_(True)
    _irm_neg(r_v, r_q).backward()
    assert (r_v.grad * IRM_Q).sum(dim=1).gt(0).all()  # d loss / d (r·q) > 0


def test_irm_neg_tau_divides_every_logit() -> None:
    r_v = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    r_q = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
    a = irm_neg_loss(
        r_v, r_q, IRM_Q, IRM_MCOS, IRM_MNCE, IRM_Y, 0.2, "dot", tau=0.5, nce_weight=1.0
    )
    b = irm_neg_loss(
        r_v * 2, r_q * 2, IRM_Q, IRM_MCOS, IRM_MNCE * 2, IRM_Y, 0.2, "dot", tau=1.0, nce_weight=1.0
    )
    assert a.item() == pytest.approx(b.item(), abs=1e-6)  # cosines are scale-free


def test_irm_red_hand_value() -> None:
    r_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r_v = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # cos [r_q, r_v] = [[.8, 0], [.6, 1]], margin .3 (single negatives, deterministic):
    #   pair 0: T⁻ (row 1, col 0) .3 + .6 - .8 = .1 ; V⁻ (row 0, col 1) .3 + 0 - .8 -> 0
    #   pair 1: T⁻ (row 0, col 1) .3 + 0 - 1 -> 0  ; V⁻ (row 1, col 0) .3 + .6 - 1 -> 0
    #   => triplet .05
    # dot = cos here (unit vectors), τ = 1:
    #   t2v = (lse(.8, 0) - .8 + lse(.6, 1) - 1) / 2 ; v2t = (lse(.8, .6) - .8 + lse(0, 1) - 1) / 2
    t2v = (lse(0.8, 0.0) - 0.8 + lse(0.6, 1.0) - 1.0) / 2
    v2t = (lse(0.8, 0.6) - 0.8 + lse(0.0, 1.0) - 1.0) / 2
    loss = irm_red_loss(
        r_v, r_q, margin=0.3, nce_sim="dot", tau=1.0, nce_average="video", nce_weight=0.04
    )
    assert loss.item() == pytest.approx(0.05 + 0.04 * (t2v + v2t), abs=1e-6)  # λ₂ = 0.04


# --------------------------------------------------------------------------- TCP


def test_tcp_group_labels() -> None:
    labels = tcp_group_labels(torch.tensor([32, 10]), max_len=32, groups=8)
    assert labels.shape == (2, 32) and labels.dtype == torch.long
    assert labels[0].tolist() == [g for g in range(8) for _ in range(4)]
    # T = 10: floor(t * 8 / 10) for t < 10, then padding.
    assert labels[1].tolist() == [0, 0, 1, 2, 3, 4, 4, 5, 6, 7] + [-100] * 22
    short = tcp_group_labels(torch.tensor([10]), max_len=12, groups=8)
    assert short[0].tolist() == [0, 0, 1, 2, 3, 4, 4, 5, 6, 7, -100, -100]


def test_tcp_shuffle_moves_exactly_k_positions() -> None:
    b, T, D = 4, 12, 3
    x = torch.arange(b * T * D, dtype=torch.float32).reshape(b, T, D)  # all rows distinct
    lengths = torch.tensor([12, 10, 3, 8])
    # k = floor(.25 * T + .5): 3, 3 (2.5 rounds up), 1 (nothing moves), 2
    expected_k = [3, 3, 0, 2]
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        shuffled, index = tcp_shuffle(x, lengths, ratio=0.25, generator=g)
        assert shuffled.shape == x.shape and index.shape == (b, T) and index.dtype == torch.long
        assert torch.equal(shuffled, x.gather(1, index[:, :, None].expand(b, T, D)))
        ident = torch.arange(T)
        for r in range(b):
            L = int(lengths[r])
            moved = index[r] != ident
            assert int(moved.sum()) == expected_k[r]  # derangement: every chosen one moves
            assert not moved[L:].any()  # padding untouched
            assert sorted(index[r].tolist()) == list(range(T))  # a permutation
            assert (index[r, :L] < L).all()  # valid positions only swap among themselves
            # the rows' multiset is preserved, and moved rows really differ from the original
            assert sorted(map(tuple, shuffled[r].tolist())) == sorted(map(tuple, x[r].tolist()))
            assert (shuffled[r][moved] != x[r][moved]).any(dim=-1).all()
    # y_s = y_o.gather(1, index) stays aligned with the shuffled content.
    y_o = tcp_group_labels(lengths, T, groups=8)
    y_s = y_o.gather(1, index)
    assert (y_s[index == torch.arange(T)] == y_o[index == torch.arange(T)]).all()


def test_tcp_shuffle_full_ratio_is_derangement_and_seeded() -> None:
    x = torch.randn(2, 6, 4)
    lengths = torch.tensor([6, 5])
    s1, i1 = tcp_shuffle(x, lengths, ratio=1.0, generator=torch.Generator().manual_seed(7))
    s2, i2 = tcp_shuffle(x, lengths, ratio=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(i1, i2) and torch.equal(s1, s2)
    assert (i1[0] != torch.arange(6)).all()
    assert (i1[1, :5] != torch.arange(5)).all() and i1[1, 5] == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tcp_shuffle_gradient_is_gathers_gradient(dtype: torch.dtype) -> None:
    """`permute_rows` (index_select forward, inverse-permutation backward) gives the numbers
    of `gather` with the expanded index and its scatter_add backward, in both precisions."""
    b, T, D = 3, 9, 5
    x = torch.randn(b, T, D, generator=torch.Generator().manual_seed(0)).to(dtype)
    x.requires_grad_(True)
    shuffled, index = tcp_shuffle(
        x, torch.tensor([9, 7, 2]), ratio=0.5, generator=torch.Generator().manual_seed(3)
    )
    weights = torch.randn(b, T, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    (grad,) = torch.autograd.grad((shuffled * weights).sum(), x)
    reference_x = x.detach().clone().requires_grad_(True)
    reference = reference_x.gather(1, index[:, :, None].expand(b, T, D))
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), reference_x)
    assert torch.equal(shuffled, reference)
    assert grad.dtype == dtype and torch.equal(grad, reference_grad)
    # Without grad the same rows, no autograd node.
    with torch.no_grad():
        plain, plain_index = tcp_shuffle(
            x, torch.tensor([9, 7, 2]), ratio=0.5, generator=torch.Generator().manual_seed(3)
        )
    assert torch.equal(plain_index, index) and torch.equal(plain, reference)
    assert plain.grad_fn is None


def test_permute_rows_backward_is_the_inverse_permutation() -> None:
    permutation = torch.tensor([2, 0, 3, 1])
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]], requires_grad=True)
    y = permute_rows(x, permutation)
    assert y.squeeze(1).tolist() == [3.0, 1.0, 4.0, 2.0]
    y.backward(torch.tensor([[10.0], [20.0], [30.0], [40.0]]))
    # x row 0 went to y row 1, row 1 to 3, row 2 to 0, row 3 to 2.
    assert x.grad.squeeze(1).tolist() == [20.0, 40.0, 10.0, 30.0]


def test_tcp_loss_ignores_padding_uniform_logits() -> None:
    g = 8
    labels = tcp_group_labels(torch.tensor([10, 4]), max_len=12, groups=g)
    logits = torch.zeros(2, 12, g)
    logits[labels == -100] = torch.randn(int((labels == -100).sum()), g) * 50  # garbage
    shuffled_labels = labels.flip(1).masked_fill(labels == -100, -100)
    loss = tcp_loss(logits, labels, logits.clone(), shuffled_labels)
    assert loss.item() == pytest.approx(2 * math.log(g), abs=1e-5)
    # All-padding input gives 0, not NaN.
    pad = torch.full((1, 3), -100)
    assert tcp_loss(torch.zeros(1, 3, g), pad, torch.zeros(1, 3, g), pad).item() == 0.0


def test_tcp_loss_hand_value_peaked() -> None:
    # One valid position with logits (log 3, 0) and label 0: CE = -log(3 / 4); the other
    # branch: label 1 on the same logits: -log(1 / 4).
    logits = torch.tensor([[[math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[0, -100]])
    loss = tcp_loss(logits, labels, logits, torch.tensor([[1, -100]]))
    assert loss.item() == pytest.approx(-math.log(0.75) - math.log(0.25), abs=1e-6)


# --------------------------------------------------------------------------- gradients


def test_all_prvr_losses_backpropagate() -> None:
    gen = torch.Generator().manual_seed(0)
    n, D = 5, 6

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).requires_grad_(True)

    mo, qu = leaf(n, D), leaf(n, D)
    ice_loss(
        mo, qu, 2.0, "dot", 1.0, "video", torch.Generator().manual_seed(1), nce_weight=0.04
    ).backward()
    assert mo.grad.abs().sum() > 0 and qu.grad.abs().sum() > 0

    r_v, r_q, q = leaf(n, D), leaf(n, D), leaf(n, D)
    mcos, mnce = leaf(n, 3), leaf(n, 3)
    y = torch.tensor([0, 0, 1, 2, 2])
    irm_neg_loss(r_v, r_q, q, mcos, mnce, y, 5.0, "dot", 1.0, nce_weight=0.04).backward()
    for t in (r_v, r_q, q, mcos, mnce):
        assert t.grad is not None and t.grad.abs().sum() > 0

    r_v, r_q = leaf(n, D), leaf(n, D)
    irm_red_loss(
        r_v, r_q, 2.0, "dot", 1.0, "video", torch.Generator().manual_seed(2), nce_weight=0.04
    ).backward()
    assert r_v.grad.abs().sum() > 0 and r_q.grad.abs().sum() > 0

    x = leaf(2, 8, D)
    shuffled, _ = tcp_shuffle(x, torch.tensor([8, 6]), ratio=0.5, generator=gen)
    (shuffled * torch.randn(2, 8, D, generator=gen)).sum().backward()
    assert (x.grad[0] != 0).all()

    lo, ls = leaf(2, 8, 4), leaf(2, 8, 4)
    labels = tcp_group_labels(torch.tensor([8, 6]), 8, groups=4)
    tcp_loss(lo, labels, ls, labels.flip(1).clamp(min=0)).backward()
    assert lo.grad.abs().sum() > 0 and ls.grad.abs().sum() > 0
    assert (lo.grad[1, 6:] == 0).all()  # padded positions get no gradient
