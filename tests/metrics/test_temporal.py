"""Temporal IoU (official TVR definition) and inclusive-clip IoU, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from partial_relevance.metrics.temporal import inclusive_clip_iou, temporal_iou


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ([0.0, 4.0], [2.0, 6.0], 2.0 / 6.0),  # overlap
        ([0.0, 2.0], [2.0, 4.0], 0.0),  # touching
        ([0.0, 1.0], [3.0, 5.0], 0.0),  # disjoint
        ([1.5, 7.5], [1.5, 7.5], 1.0),  # identical
        ([3.0, 3.0], [3.0, 3.0], 0.0),  # zero-length, zero hull
        ([3.0, 3.0], [2.0, 4.0], 0.0),  # zero-length inside a span
        ([1.0, 2.0], [0.0, 4.0], 0.25),  # containment
        ([0.0, 4.0], [1.0, 2.0], 0.25),  # containment, the other way
        ([15.0, 20.0], [10.0, 20.0], 0.5),  # exactly 0.5
    ],
)
def test_temporal_iou_cases(pred: list[float], gt: list[float], expected: float) -> None:
    assert temporal_iou(np.array(pred), np.array(gt)) == pytest.approx(expected)


def test_temporal_iou_broadcasts_and_keeps_float32() -> None:
    pred = np.array([[0, 4], [2, 6], [10, 12]], dtype=np.float32)[:, None, :]  # [3, 1, 2]
    gt = np.array([[0, 4], [4, 8]], dtype=np.float32)[None, :, :]  # [1, 2, 2]
    iou = temporal_iou(pred, gt)
    assert iou.shape == (3, 2)
    assert iou.dtype == np.float32
    np.testing.assert_allclose(iou, [[1.0, 0.0], [2 / 6, 2 / 6], [0.0, 0.0]], rtol=1e-6)


def test_temporal_iou_integer_inputs_give_float() -> None:
    assert temporal_iou(np.array([0, 3]), np.array([0, 6])).dtype == np.float64


def test_inclusive_clip_iou_spec_example() -> None:
    gt = np.array([5, 8])
    spans = np.array([[5, 8], [4, 8], [5, 9], [5, 7], [6, 8], [4, 9], [0, 3], [9, 12]])
    expected = [1.0, 0.8, 0.8, 0.75, 0.75, 4 / 6, 0.0, 0.0]
    np.testing.assert_allclose(inclusive_clip_iou(spans, gt), expected)


def test_inclusive_clip_iou_single_clips_and_symmetry() -> None:
    assert inclusive_clip_iou(np.array([3, 3]), np.array([3, 3])) == 1.0
    assert inclusive_clip_iou(np.array([3, 3]), np.array([4, 4])) == 0.0
    assert inclusive_clip_iou(np.array([2, 3]), np.array([3, 4])) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 20, size=(50, 2)), axis=1)
    b = np.sort(rng.integers(0, 20, size=(50, 2)), axis=1)
    np.testing.assert_allclose(inclusive_clip_iou(a, b), inclusive_clip_iou(b, a))
