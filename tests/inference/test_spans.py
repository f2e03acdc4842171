"""Span enumeration, Eq. 13 scores, NMS, decoding (SPEC §6) and adversarial positives (§5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partial_relevance.data.vcmr_localizer import adversarial_span_positives
from partial_relevance.inference.spans import (
    decode_top_spans,
    decode_top_spans_batch,
    enumerate_spans,
    nms_spans,
    span_scores,
    span_validity_mask,
    top_span_indices,
    top_spans,
)
from partial_relevance.metrics.temporal import temporal_iou

NEG = float("-inf")


def test_enumerate_spans_respects_the_length_window() -> None:
    spans = enumerate_spans(5, 2, 3)
    expected = {(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (1, 3), (2, 4)}
    assert {tuple(s) for s in spans.tolist()} == expected
    assert len(spans) == len(expected)
    assert len(enumerate_spans(100, 1, 24)) == sum(100 - n + 1 for n in range(1, 25))
    mask = span_validity_mask(7, 2, 4)
    lengths = enumerate_spans(7, 2, 4)
    spans_len = lengths[:, 1] - lengths[:, 0] + 1
    assert spans_len.min() == 2 and spans_len.max() == 4
    assert int(mask.sum()) == len(lengths)
    with pytest.raises(ValueError):
        span_validity_mask(5, 3, 2)


def test_span_scores_eq13_and_minus_inf_outside() -> None:
    torch.manual_seed(0)
    k, L = 2, 5
    log_st = torch.randn(k, L).log_softmax(-1)
    log_ed = torch.randn(k, L).log_softmax(-1)
    clip_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    vs = torch.tensor([0.3, -0.2])
    s = span_scores(log_st, log_ed, clip_mask, 1, 3, video_scores=vs, tau=0.1)
    assert s.shape == (k, L, L)
    assert s[0, 1, 3] == pytest.approx(float(0.3 / 0.1 + log_st[0, 1] + log_ed[0, 3]), abs=1e-5)
    assert s[1, 0, 0] == pytest.approx(float(-0.2 / 0.1 + log_st[1, 0] + log_ed[1, 0]), abs=1e-5)
    assert s[0, 3, 1] == NEG  # i > j
    assert s[0, 0, 3] == NEG  # 4 clips > max_len
    assert s[1, 1, 3] == NEG  # ends on a padded clip
    assert s[1, 2, 2] != NEG
    assert int(torch.isfinite(s[0]).sum()) == 5 + 4 + 3
    assert int(torch.isfinite(s[1]).sum()) == 3 + 2 + 1
    # SVMR: no retrieval term; the [Q, k, L] batched layout gives the same
    svmr = span_scores(log_st, log_ed, clip_mask, 1, 3)
    assert svmr[0, 1, 3] == pytest.approx(float(log_st[0, 1] + log_ed[0, 3]), abs=1e-5)
    batched = span_scores(log_st[None], log_ed[None], clip_mask[None], 1, 3, vs[None], 0.1)
    torch.testing.assert_close(batched[0], s)


def test_nms_hand_case() -> None:
    spans = np.array([[0, 10], [1, 10], [20, 30], [0, 9.5], [5, 15]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6])
    # [0,9.5] first; [0,10] (IoU 0.95) and [1,10] (0.85) go; [20,30] and [5,15] (0.3) stay
    np.testing.assert_array_equal(nms_spans(spans, scores, 0.7), [3, 2, 4])
    # IoU exactly at the threshold is kept (strict >, as TVRetrieval's NMS)
    np.testing.assert_array_equal(nms_spans(np.array([[0, 10], [0, 7]]), [1.0, 0.5], 0.7), [0, 1])
    assert len(nms_spans(np.zeros((0, 2)), np.zeros(0))) == 0


def _hand_scores() -> torch.Tensor:
    scores = torch.full((2, 4, 4), NEG)  # [k, L, L]
    # video slot 0: index 7, scale 2 (3 s a clip), duration 10 s
    scores[0, 0, 1] = 5.0  # [0, 6]
    scores[0, 0, 2] = 4.5  # [0, 9]: IoU 0.667 with [0, 6], kept
    scores[0, 0, 0] = 4.0  # [0, 3]: IoU 0.5, kept
    scores[0, 2, 3] = 3.0  # [6, 12] clipped to [6, 10]
    # video slot 1: index 3, scale 1 (1.5 s a clip), duration 5 s
    scores[1, 0, 3] = 4.8  # [0, 6] clipped to [0, 5]; IoU 0.83 with slot 0's [0, 6]: other video
    scores[1, 1, 3] = 4.7  # [1.5, 5]: IoU exactly 0.7 with [0, 5], kept
    scores[1, 0, 2] = 4.6  # [0, 4.5]: IoU 0.9 with [0, 5], suppressed
    return scores


def test_decode_top_spans_two_videos_scales_and_clipping() -> None:
    out = decode_top_spans(_hand_scores(), [7, 3], [10.0, 5.0], [2.0, 1.0])
    expected = [
        [7, 0.0, 6.0, 5.0],
        [3, 0.0, 5.0, 4.8],
        [3, 1.5, 5.0, 4.7],
        [7, 0.0, 9.0, 4.5],
        [7, 0.0, 3.0, 4.0],
        [7, 6.0, 10.0, 3.0],
    ]
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(decode_top_spans(_hand_scores(), [7, 3], [10, 5], [2, 1], out_n=2),
                               expected[:2])  # fmt: skip
    # top_n cuts before NMS: the best 4 are 5, 4.8, 4.7, 4.6 and NMS drops 4.6
    cut = decode_top_spans(_hand_scores(), [7, 3], [10, 5], [2, 1], top_n=4)
    np.testing.assert_allclose(cut, expected[:3])
    no_nms = decode_top_spans(_hand_scores(), [7, 3], [10, 5], [2, 1], nms_iou=None)
    assert len(no_nms) == 7


def test_decode_batch_matches_per_query_and_per_video_nms() -> None:
    torch.manual_seed(0)
    Q, k, L = 3, 4, 12
    log_st = torch.randn(Q, k, L).log_softmax(-1)
    log_ed = torch.randn(Q, k, L).log_softmax(-1)
    clip_mask = (torch.arange(L) < torch.randint(4, L + 1, (Q, k, 1))).long()
    scores = span_scores(log_st, log_ed, clip_mask, 1, 6, torch.randn(Q, k), tau=0.5)
    vids = np.arange(Q * k).reshape(Q, k)
    durs = np.full((Q, k), 21.5)  # the last clip ends past it
    scales = np.full((Q, k), 1.25)
    batch = decode_top_spans_batch(scores, vids, durs, scales, top_n=60, out_n=25)
    for q in range(Q):
        single = decode_top_spans(scores[q], vids[q], durs[q], scales[q], top_n=60, out_n=25)
        np.testing.assert_allclose(batch[q], single)
        assert len(single) == 25
        assert np.all(np.diff(single[:, 3]) <= 0)
        # reference: top 60 → nms_spans per video → merge → top 25
        flat = scores[q].reshape(-1)
        top = flat.topk(60).indices.numpy()
        slot, i, j = top // (L * L), (top % (L * L)) // L, top % L
        rows = np.stack(
            [vids[q][slot], np.minimum(i * 1.875, 21.5), np.minimum((j + 1) * 1.875, 21.5),
             flat[top].double().numpy()], axis=1,
        )  # fmt: skip
        kept = []
        for v in np.unique(rows[:, 0]):
            group = rows[rows[:, 0] == v]
            kept.append(group[nms_spans(group[:, 1:3], group[:, 3], 0.7)])
        ref = np.concatenate(kept)
        ref = ref[np.argsort(-ref[:, 3], kind="stable")][:25]
        np.testing.assert_allclose(single, ref)
        # no two kept spans of one video overlap by more than 0.7
        for v in np.unique(single[:, 0]):
            g = single[single[:, 0] == v, 1:3]
            iou = temporal_iou(g[:, None], g[None]) - np.eye(len(g))
            assert iou.max(initial=0) <= 0.7


def test_decode_with_fewer_valid_spans_than_top_n() -> None:
    scores = torch.full((1, 3, 3), NEG)
    scores[0, 0, 0] = 1.0
    scores[0, 2, 2] = 0.5
    out = decode_top_spans(scores, [4], [100.0], None)
    np.testing.assert_allclose(out, [[4, 0.0, 1.5, 1.0], [4, 3.0, 4.5, 0.5]])


def test_top_span_indices_per_video() -> None:
    L = 6
    log_st = torch.full((2, L), -10.0)
    log_ed = torch.full((2, L), -10.0)
    log_st[0, 2], log_ed[0, 4] = -0.1, -0.2  # best span of video 0: [2, 4]
    log_st[1, 1], log_ed[1, 1] = -0.1, -0.1  # video 1 has 2 clips: best [1, 1]
    clip_mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]])
    idx = top_span_indices(log_st, log_ed, clip_mask, 1, 3, top_n=5)
    assert idx.shape == (2, 5, 2) and idx.dtype == torch.long
    assert idx[0, 0].tolist() == [2, 4]
    assert idx[1, 0].tolist() == [1, 1]
    _, valid = top_spans(log_st, log_ed, clip_mask, 1, 3, top_n=5)
    assert valid[0].all() and valid[1].tolist() == [True, True, True, False, False]
    assert {tuple(s) for s in idx[1].tolist()} == {(0, 0), (0, 1), (1, 1)}  # best repeated
    for b in range(2):
        for i, j in idx[b].tolist():
            assert i <= j and 1 <= j - i + 1 <= 3 and clip_mask[b, j] == 1
    # brute force for video 0: the 5 best scores over the window
    cand = enumerate_spans(L, 1, 3)
    brute = (log_st[0, cand[:, 0]] + log_ed[0, cand[:, 1]]).topk(5).values
    got = log_st[0, idx[0, :, 0]] + log_ed[0, idx[0, :, 1]]
    torch.testing.assert_close(got, brute)


def test_adversarial_positives_spec_example() -> None:
    pos = adversarial_span_positives((5, 8), num_clips=20)
    assert pos[0].tolist() == [5, 8]
    assert {tuple(s) for s in pos.tolist()} == {(5, 8), (4, 8), (5, 9), (5, 7), (6, 8)}
    assert len(pos) == 5
    # at the video's edge, and a single clip (whose neighbours reach only 0.5)
    assert {tuple(s) for s in adversarial_span_positives((0, 3), 4).tolist()} == {
        (0, 3), (0, 2), (1, 3)
    }  # fmt: skip
    assert adversarial_span_positives((2, 2), 5).tolist() == [[2, 2]]
    assert (4, 9) in {tuple(s) for s in adversarial_span_positives((5, 8), 20, 0.6).tolist()}
    with pytest.raises(ValueError):
        adversarial_span_positives((5, 8), 8)


def test_decode_zero_length_spans_after_clipping_do_not_suppress() -> None:
    scores = torch.full((1, 4, 4), NEG)
    scores[0, 2, 2] = 2.0  # [3, 4.5] clipped to a 2.5 s video: [2.5, 2.5]
    scores[0, 2, 3] = 1.0  # [3, 6] -> [2.5, 2.5] too: IoU 0 (zero hull), so both stay
    scores[0, 0, 1] = 0.5  # [0, 2.5]
    out = decode_top_spans(scores, [1], [2.5], [1.0])
    np.testing.assert_allclose(out, [[1, 2.5, 2.5, 2.0], [1, 2.5, 2.5, 1.0], [1, 0.0, 2.5, 0.5]])
    keep = nms_spans(out[:, 1:3], out[:, 3], 0.7)
    np.testing.assert_array_equal(keep, [0, 1, 2])


def test_a_nan_span_score_is_the_worst_never_listed_first():
    # Issue #18: torch.topk puts NaN first; a non-finite span score ranks last, marks no span.
    log_p = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    log_p_nan = log_p.clone()
    log_p_nan[0, 0] = float("nan")  # every span starting at clip 0 scores NaN
    mask = torch.ones(1, 3, dtype=torch.bool)
    spans, valid = top_spans(log_p_nan, log_p, mask, 1, 3, top_n=3)
    assert valid[0].all()  # the three spans starting at clips 1 and 2, not the NaN ones
    assert spans[0][valid[0]][:, 0].min() >= 1
