"""VCMR / SVMR / VR recall (SPEC §7) on hand-computed cases, the DiDeMo two-window rule, the
per-type breakdown, and agreement with a per-query loop written after the official script."""

from __future__ import annotations

import numpy as np
import pytest

from partial_relevance.metrics.temporal import temporal_iou
from partial_relevance.metrics.vcmr import (
    GroundTruth,
    evaluate_all,
    metric_key,
    svmr_recall,
    vcmr_recall,
    vcmr_selection_score,
    vr_recall,
)


def _rows(*rows: tuple[int, float, float]) -> np.ndarray:
    """Prediction rows with decreasing scores: [n, 4]."""
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return np.concatenate([arr, -np.arange(len(arr), dtype=np.float64)[:, None]], axis=1)


@pytest.fixture
def case() -> tuple[dict, dict, dict]:
    """Four queries (q4 has no moment predictions); expected first-hit ranks in the comments."""
    gt = {
        1: GroundTruth(1, 0, np.array([[10.0, 20.0]]), "v"),
        2: GroundTruth(2, 1, np.array([0.0, 6.0]), "t"),  # a flat [st, ed] is accepted
        3: GroundTruth(3, 2, np.array([[30.0, 40.0]]), "vt"),
        4: GroundTruth(4, 3, np.array([[0.0, 5.0]]), "v"),
    }
    q1 = [(3, 10, 20), (0, 15, 20)] + [(7, 0, 1)] * 98 + [(0, 10, 20)] * 50  # 150 rows
    # q1: pos 0 wrong video with IoU 1 (VCMR miss); pos 1 IoU exactly 0.5; the perfect
    # prediction at pos 100 is beyond the first 100 and must not count (not even for SVMR).
    q2 = [(1, 0, 6), (1, 0, 6)]  # duplicates, a hit at pos 0
    q3 = [(4, 30, 40)] * 10 + [(2, 31, 40)]  # IoU 0.9 at pos 10; first in the GT video
    moments = {1: _rows(*q1), 2: _rows(*q2), 3: _rows(*q3), 99: _rows((0, 0, 1))}
    videos = {
        1: np.array([5, 0, 9]),  # rank 1
        2: np.array([1]),  # rank 0
        3: np.concatenate([np.arange(100, 220), [2]]),  # GT beyond 100: miss
        4: np.array([9, 8, 7, 6, 5, 3]),  # rank 5
    }
    return gt, moments, videos


def test_vcmr_recall_hand_case(case: tuple[dict, dict, dict]) -> None:
    gt, moments, _ = case
    r = vcmr_recall(moments, gt)
    # IoU 0.5 first hits: q1 1, q2 0, q3 10, q4 none
    assert [r[metric_key(k, 0.5)] for k in (1, 5, 10, 100)] == [25.0, 50.0, 50.0, 75.0]
    # IoU 0.7: q1 none (its perfect row is past 100), q2 0, q3 10, q4 none
    assert [r[metric_key(k, 0.7)] for k in (1, 5, 10, 100)] == [25.0, 25.0, 25.0, 50.0]
    assert set(r) == {metric_key(k, t) for k in (1, 5, 10, 100) for t in (0.5, 0.7)}


def test_svmr_recall_filters_to_gt_video_after_the_100_cut(case: tuple[dict, dict, dict]) -> None:
    gt, moments, _ = case
    r = svmr_recall(moments, gt)
    # IoU 0.5: q1 (its pos-1 row is first in video 0), q2, q3 hit at rank 0; q4 has nothing
    assert [r[metric_key(k, 0.5)] for k in (1, 5, 10, 100)] == [75.0] * 4
    # IoU 0.7: q1's perfect row was cut at 100 before filtering
    assert [r[metric_key(k, 0.7)] for k in (1, 5, 10, 100)] == [50.0] * 4


def test_vr_recall_hand_case(case: tuple[dict, dict, dict]) -> None:
    gt, _, videos = case
    assert vr_recall(videos, gt) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "R@100": 75.0}
    rows = {d: np.stack([v, np.zeros(len(v))], axis=1) for d, v in videos.items()}  # [n, 2]
    assert vr_recall(rows, gt) == vr_recall(videos, gt)


def test_threshold_is_inclusive() -> None:
    gt = {0: GroundTruth(0, 0, np.array([[10.0, 20.0]]))}
    r = vcmr_recall({0: _rows((0, 15, 20))}, gt, ks=(1,), ious=(0.5, 0.51))
    assert r == {"R@1 IoU0.5": 100.0, "R@1 IoU0.51": 0.0}


def test_didemo_needs_two_of_four_windows() -> None:
    windows = np.array([[0, 5], [5, 10], [10, 15], [0, 10]], dtype=np.float64)
    gt = {0: GroundTruth(0, 4, windows)}
    two = {0: _rows((4, 0, 5))}  # IoU 1.0 with window 0, 0.5 with window 3, 0 with the others
    one = {0: _rows((4, 10, 15))}  # IoU 1.0 with window 2 only
    # default: the official rule (>= 4 windows -> 2 needed); explicit min_windows=2 the same
    for kwargs in ({}, {"min_windows": 2}):
        assert vcmr_recall(two, gt, ks=(1,), **kwargs) == {"R@1 IoU0.5": 100.0, "R@1 IoU0.7": 0.0}
        assert vcmr_recall(one, gt, ks=(1,), **kwargs) == {"R@1 IoU0.5": 0.0, "R@1 IoU0.7": 0.0}
    assert vcmr_recall(one, gt, ks=(1,), min_windows=1)["R@1 IoU0.7"] == 100.0
    # a one-window query needs min(2, 1) = 1 window
    tvr = {1: GroundTruth(1, 0, np.array([[0.0, 5.0]]))}
    assert vcmr_recall({1: _rows((0, 0, 5))}, tvr, ks=(1,), min_windows=2)["R@1 IoU0.7"] == 100.0


def test_evaluate_all_nesting_and_per_type(case: tuple[dict, dict, dict]) -> None:
    gt, moments, videos = case
    res = evaluate_all(moments, moments, videos, gt)
    assert res["VCMR"] == vcmr_recall(moments, gt)
    assert res["SVMR"] == svmr_recall(moments, gt)
    assert res["VR"] == vr_recall(videos, gt)
    assert list(res) == [
        "VCMR", "SVMR", "VR",
        "VCMR_v", "VCMR_t", "VCMR_vt", "SVMR_v", "SVMR_t", "SVMR_vt", "VR_v", "VR_t", "VR_vt",
    ]  # fmt: skip
    # type v = {q1, q4}: VCMR IoU0.5 ranks 1 and none; VR ranks 1 and 5
    assert res["VCMR_v"]["R@1 IoU0.5"] == 0.0
    assert res["VCMR_v"]["R@5 IoU0.5"] == 50.0
    assert res["VR_v"] == {"R@1": 0.0, "R@5": 50.0, "R@10": 100.0, "R@100": 100.0}
    assert res["VCMR_t"]["R@1 IoU0.7"] == 100.0
    assert res["VCMR_vt"]["R@10 IoU0.5"] == 0.0
    assert res["VCMR_vt"]["R@100 IoU0.5"] == 100.0
    assert res["SVMR_vt"]["R@1 IoU0.7"] == 100.0
    assert vcmr_selection_score(res) == 25.0 + 25.0
    # a task passed as None is left out; no types -> no breakdown
    only_vr = evaluate_all(None, None, videos, gt, by_type=False)
    assert list(only_vr) == ["VR"]


def _official_like(moments, gt, ious=(0.5, 0.7), ks=(1, 5, 10, 100), svmr=False):
    """A per-query loop following the official script's steps (float32, 100 cut, `>=`)."""
    out = {metric_key(k, t): [] for t in ious for k in ks}
    for desc_id, g in gt.items():
        pred = np.asarray(moments.get(desc_id, np.zeros((0, 4))), dtype=np.float32)[:100]
        pred = pred.reshape(-1, 4)[:, :3]
        matched = pred[:, 0] == np.float32(g.video_idx)
        for t in ious:
            n_ok = sum(
                (temporal_iou(pred[:, 1:3], w.astype(np.float32)) * matched) >= t for w in g.windows
            )
            correct = np.asarray(n_ok) >= (2 if len(g.windows) >= 4 else 1)
            if svmr:
                correct = correct[matched]
            for k in ks:
                out[metric_key(k, t)].append(bool(np.sum(correct[:k]) >= 1))
    return {key: 100.0 * float(np.mean(v)) for key, v in out.items()}


def test_matches_a_per_query_reference_on_random_predictions() -> None:
    rng = np.random.default_rng(0)
    gt, moments = {}, {}
    for q in range(60):
        n_win = 4 if q % 3 == 0 else 1
        st = np.round(rng.uniform(0, 30, n_win), 2)
        windows = np.stack([st, st + np.round(rng.uniform(1, 10, n_win), 2)], axis=1)
        gt[q] = GroundTruth(q, int(rng.integers(0, 5)), windows)
        n = int(rng.integers(0, 130))
        p_st = np.round(rng.uniform(0, 30, n), 2)
        preds = np.stack(
            [rng.integers(0, 5, n), p_st, p_st + np.round(rng.uniform(0.5, 10, n), 2)], axis=1
        )
        # snap some predictions onto a window so that hits at 0.7 happen
        snap = rng.random(n) < 0.3
        preds[snap, 1:3] = windows[0] + np.round(rng.normal(0, 0.5, (snap.sum(), 2)), 2)
        if n:
            moments[q] = np.concatenate([preds, -np.arange(n)[:, None]], axis=1)
    assert vcmr_recall(moments, gt) == pytest.approx(_official_like(moments, gt))
    assert svmr_recall(moments, gt) == pytest.approx(_official_like(moments, gt, svmr=True))
    assert 0 < vcmr_recall(moments, gt)["R@100 IoU0.7"] < 100


def test_ground_truth_validates_and_compares_by_value() -> None:
    a = GroundTruth(1, 2, np.array([[0.0, 1.0]]), "v")
    assert a == GroundTruth(1, 2, [0.0, 1.0], "v")
    assert a != GroundTruth(1, 2, [0.0, 2.0], "v")
    with pytest.raises(ValueError, match="desc_id 7"):
        GroundTruth(7, 0, np.zeros((2, 3)))
