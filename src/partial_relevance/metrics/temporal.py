"""Temporal IoU in seconds (TVR's official definition) and in inclusive clip counts.

Two IoUs live in the suite and must not be confused:

- `temporal_iou`: the one every VCMR/SVMR metric and the span NMS use (SPEC §7). It is the
  TVR evaluation script's `compute_temporal_iou_batch`: intersection divided by the *hull*
  `max(ed) - min(st)` (the script's own comment: "not the correct union though"), and 0 when
  that hull has zero length. For overlapping spans the hull is the union; for disjoint ones
  the intersection is 0 anyway, so the difference never changes a value.
- `inclusive_clip_iou`: the IoU of integer clip spans `[i, j]` counted in clips, both ends
  included, used to pick the adversarial positives of the localizer (SPEC §5).
"""

from __future__ import annotations

import numpy as np

__all__ = ["inclusive_clip_iou", "temporal_iou"]


def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Temporal IoU of `[st, ed]` spans in seconds, broadcasting over leading dims.

    Args:
        pred: `[..., 2]` spans `(st, ed)`.
        gt: `[..., 2]` spans, broadcastable against `pred`.

    Returns:
        `[...]` IoU = `max(0, min(ed) - max(st)) / (max(ed) - min(st))`, 0 where the
        denominator is 0 (SPEC §7, the official TVR script). The floating dtype of the inputs
        is kept (float32 in, float32 out, as the official script computes), integers give
        float64.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    dtype = np.result_type(pred.dtype, gt.dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    pred = pred.astype(dtype, copy=False)
    gt = gt.astype(dtype, copy=False)
    p_st, p_ed = pred[..., 0], pred[..., 1]
    g_st, g_ed = gt[..., 0], gt[..., 1]
    inter = np.maximum(0, np.minimum(p_ed, g_ed) - np.maximum(p_st, g_st))
    hull = np.maximum(p_ed, g_ed) - np.minimum(p_st, g_st)  # the official "union"
    inter, hull = np.broadcast_arrays(inter, hull)
    out = np.zeros(inter.shape, dtype=dtype)
    np.divide(inter, hull, out=out, where=hull != 0)
    return out


def inclusive_clip_iou(spans: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of inclusive integer clip spans, counted in clips (SPEC §5).

    `|[i, j] ∩ [s, e]| / |[i, j] ∪ [s, e]|` where a span `[i, j]` holds the `j - i + 1` clips
    `i..j`. Example: GT `[5, 8]` against `[4, 8]` → 4/5 = 0.8, `[5, 7]` → 3/4 = 0.75,
    `[4, 9]` → 4/6 ≈ 0.667.

    Args:
        spans: `[..., 2]` integer spans `(i, j)`, `i <= j`.
        gt: `[..., 2]` integer spans, broadcastable against `spans`.

    Returns:
        `[...]` float64 IoU in `[0, 1]`.
    """
    spans = np.asarray(spans, dtype=np.int64)
    gt = np.asarray(gt, dtype=np.int64)
    i, j = spans[..., 0], spans[..., 1]
    s, e = gt[..., 0], gt[..., 1]
    inter = np.maximum(0, np.minimum(j, e) - np.maximum(i, s) + 1)
    union = (j - i + 1) + (e - s + 1) - inter  # true union: disjoint spans add up
    return inter / np.maximum(union, 1)
