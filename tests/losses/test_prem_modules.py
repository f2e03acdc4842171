"""ICE / IRM / TCP on PREM's retriever (losses.prem_modules), each against a hand-computed case
on tensors laid out as the retriever produces them (per-stream queries `[B, D]`, clips
`[V, L, D]`, masks `[V, L]`)."""

from __future__ import annotations

import math

import pytest
import torch

from partial_relevance.losses.prem_modules import (
    prem_ice_loss,
    prem_ice_pairs,
    prem_irm_loss,
    prem_modules_total,
    prem_tcp_loss,
    stream_moment_scores,
    tcp_stream_labels,
)
from support import lse


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# Two videos of two clips; video 1's second clip is padding and would otherwise be q0's best.
CLIPS = t([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])  # [V=2, L=2, D=2]
VALID = torch.tensor([[True, True], [True, False]])
QUERIES = t([[0.8, 0.6], [1.0, 0.0]])  # q0 of video 0, q1 of video 1
QUERY_VIDEO = torch.tensor([0, 1])


def test_ice_mines_mutual_best_clip_query_pairs_across_videos():
    # cos (own video and padding excluded): c00-q1 1.0, c01-q1 0.0, c10-q0 0.96, c11 padding.
    clip_idx, query_idx, cos = prem_ice_pairs(QUERIES, CLIPS, VALID, QUERY_VIDEO, 0.4)
    assert clip_idx.tolist() == [2, 0] and query_idx.tolist() == [0, 1]  # (c10, q0), (c00, q1)
    assert cos[3].tolist() == [-1.0, -1.0]  # the padded clip never pairs
    # Above β_t = 0.97 only (c00, q1) survives: n_c = 1 < 2 gives L_ice = 0.
    assert prem_ice_pairs(QUERIES, CLIPS, VALID, QUERY_VIDEO, 0.97)[1].tolist() == [1]


def test_ice_loss_by_hand():
    # Pairs (m, q): ((0.6, 0.8), q0), ((1, 0), q1); cos[q_j, m_k] = [[0.96, 0.8], [0.6, 1.0]].
    # Triplet (margin 0.2, one negative each): q0: max(0, .2+.6-.96) + max(0, .2+.8-.96) = .04;
    # q1: max(0, .2+.8-1) + max(0, .2+.6-1) = 0 -> mean 0.02.
    trip = 0.02
    # InfoNCE on dot products (= cos, unit vectors), τ = 1, each pair its own video.
    t2v = ((lse(0.96, 0.8) - 0.96) + (lse(0.6, 1.0) - 1.0)) / 2
    v2t = ((lse(0.96, 0.6) - 0.96) + (lse(0.8, 1.0) - 1.0)) / 2
    expected = trip + 0.04 * (t2v + v2t)
    out = prem_ice_loss(
        {"vis": (QUERIES, CLIPS, VALID)}, QUERY_VIDEO, 0.4, 0.2, "dot", 1.0, nce_weight=0.04
    )
    assert out["L_ice"].item() == pytest.approx(expected, abs=1e-6)
    assert out["n_c_vis"].item() == 2
    # Two streams: the mean of the per-stream losses (here one stream has no pair: 0).
    none = VALID & False
    both = prem_ice_loss(
        {"vis": (QUERIES, CLIPS, VALID), "sub": (QUERIES, CLIPS, none)},
        QUERY_VIDEO,
        nce_weight=0.04,
    )
    assert both["L_ice"].item() == pytest.approx(expected / 2, abs=1e-6)
    assert both["L_ice_sub"].item() == 0.0


def test_stream_moment_scores_mask_padding_and_clipless_videos():
    clips = CLIPS.clone()
    valid = torch.tensor([[True, True], [False, False]])  # video 1: no clip of this stream
    cos, nce, ok = stream_moment_scores(t([[0.6, 0.8]]), clips, valid, "dot")
    assert cos[0, 0].item() == pytest.approx(0.8) and nce[0, 0].item() == pytest.approx(0.8)
    assert nce[0, 1].item() == float("-inf") and ok.tolist() == [True, False]


def test_irm_neg_loss_by_hand():
    # Query q0 = (0.6, 0.8) of video 0 (clips (1,0), (0,1): S_m = 0.8); video 1 has no clip of
    # the stream (-inf in InfoNCE); query q1's GT video has none either: it is left out.
    clips = CLIPS.clone()
    valid = torch.tensor([[True, True], [False, False]])
    q = t([[0.6, 0.8], [1.0, 0.0]])
    cos, nce, _ = stream_moment_scores(q, clips, valid, "dot")
    r_v = t([[0.8, 0.6], [5.0, 5.0]])
    r_q = t([[0.0, 1.0], [5.0, 5.0]])
    stream = {
        "q": q,
        "r_v": r_v,
        "r_q": r_q,
        "target_valid": torch.tensor([True, False]),
        "moment_cos": cos,
        "moment_nce": nce,
    }
    # Triplet: max(0, .2 + cos(r_v, q) - .8) + max(0, .2 + cos(r_q, q) - .8) = .36 + .2.
    # InfoNCE row [S_m(V0) = .8, S_m(V1) = -inf, r_v·q = .96, r_q·q = .8], CE on the first.
    expected = 0.56 + 0.04 * (lse(0.8, 0.96, 0.8) - 0.8)
    out = prem_irm_loss(
        {"sub": stream},
        QUERY_VIDEO,
        0.2,
        "dot",
        1.0,
        red=False,
        neg_nce_weight=0.04,
        red_nce_weight=0.04,
    )
    assert out["L_neg"].item() == pytest.approx(expected, abs=1e-6)
    assert out["L_irm"].item() == pytest.approx(expected, abs=1e-6)
    assert out["L_red"].item() == 0.0


def test_irm_red_loss_by_hand():
    # cos(r_q[i], r_v[k]) = [[.6, .8], [.8, .6]]: every triplet term is max(0, .2 + .8 - .6).
    r_v = t([[1.0, 0.0], [0.0, 1.0]])
    r_q = t([[0.6, 0.8], [0.8, 0.6]])
    q = t([[1.0, 0.0], [0.0, 1.0]])
    stream = {
        "q": q,
        "r_v": r_v,
        "r_q": r_q,
        "target_valid": torch.tensor([True, True]),
        "moment_cos": torch.zeros(2, 2),
        "moment_nce": torch.zeros(2, 2),
    }
    trip = 0.4 + 0.4
    nce = 2 * (lse(0.6, 0.8) - 0.6)
    out = prem_irm_loss(
        {"vis": stream},
        QUERY_VIDEO,
        0.2,
        "dot",
        1.0,
        neg=False,
        neg_nce_weight=0.04,
        red_nce_weight=0.5,
    )
    assert out["L_red"].item() == pytest.approx(trip + 0.5 * nce, abs=1e-6)
    assert out["L_irm"].item() == pytest.approx(trip + 0.5 * nce, abs=1e-6)


def test_tcp_stream_labels_and_loss_by_hand():
    # Subtitle stream of a 4-clip and a 2-clip video; clip 1 of video 0 has no subtitle.
    valid = torch.tensor([[True, False, True, True], [True, True, False, False]])
    lengths = torch.tensor([4, 2])
    labels = tcp_stream_labels(valid, lengths, groups=2)  # floor(t * 2 / T)
    assert labels.tolist() == [[0, -100, 1, 1], [0, 1, -100, -100]]
    # Uniform logits: CE = log 2 at every valid position, for p_o and p_s: 2 log 2 a stream.
    logits = torch.zeros(2, 4, 2)
    out = prem_tcp_loss(
        {"vis": (logits, labels, logits, labels), "sub": (logits, labels, logits, labels)}
    )
    assert out["L_tcp_sub"].item() == pytest.approx(2 * math.log(2))
    assert out["L_tcp"].item() == pytest.approx(4 * math.log(2))  # summed over the streams
    # Logits that pick the right group everywhere: accuracy 1.
    exact = torch.nn.functional.one_hot(labels.clamp(min=0), 2).float() * 50
    assert prem_tcp_loss({"sub": (exact, labels, exact, labels)})["tcp_acc_sub"].item() == 1.0


def test_total_adds_the_enabled_modules_with_their_weights():
    terms = {"loss": torch.tensor(1.0), "L_ice": torch.tensor(2.0), "L_tcp": torch.tensor(3.0)}
    total = prem_modules_total(terms, {"ice": 0.1, "irm": 1.0, "tcp": 1.0})
    assert total.item() == pytest.approx(1.0 + 0.2 + 3.0)
    assert prem_modules_total({"loss": torch.tensor(1.5)}, {}).item() == 1.5
