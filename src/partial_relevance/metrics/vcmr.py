"""VCMR, SVMR and VR recall with the TVR benchmark's official definitions (SPEC §7).

A moment prediction is a row `(video_idx, st, ed, score)`; a query's predictions are sorted best
first and only the first 100 count (`max_pred_per_query` of the official script). A prediction
*hits* at IoU threshold θ when its video is the GT video and `temporal_iou >= θ` (`>=` as the
official script; the paper's prose says "exceeds") with at least `required` of the query's GT
windows: one for TVR, two of the ≥ 4 annotator windows for DiDeMo.

- VCMR `R@k IoU=θ`: % of queries with ≥ 1 hit among their first k predictions.
- SVMR: the same after keeping only the predictions in the GT video (the first 100 predictions
  are cut *before* that filter, as the official script does).
- VR `R@k`: % of queries whose GT video is among their first k predicted videos.

Everything is computed on padded `[Q, 100]` arrays, in float32 like the official script (so an
IoU that sits exactly on a threshold is decided the same way), and returned unrounded in
percent; the official script rounds to 2 decimals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from partial_relevance.metrics.retrieval import DEFAULT_KS, recall_at_k
from partial_relevance.metrics.temporal import temporal_iou

__all__ = [
    "DEFAULT_IOUS",
    "MAX_PREDICTIONS",
    "QUERY_TYPES",
    "GroundTruth",
    "evaluate_all",
    "metric_key",
    "svmr_recall",
    "vcmr_recall",
    "vcmr_selection_score",
    "vr_metrics",
    "vr_recall",
]

MAX_PREDICTIONS = 100  # predictions a query may submit (official `max_pred_per_query`)
DEFAULT_IOUS = (0.5, 0.7)
QUERY_TYPES = ("v", "t", "vt")  # TVR query types, in the official order
_NO_HIT = np.iinfo(np.int64).max  # "rank" of a query without any hit


@dataclass(eq=False)
class GroundTruth:
    """The label of one query: its video and its GT window(s) in seconds.

    Attributes:
        desc_id: the query id.
        video_idx: the GT video's index in the submission's `video2idx`.
        windows: `[w, 2]` `(st, ed)` seconds; one window for TVR, ≥ 4 annotator windows for
            DiDeMo. A flat `[st, ed]` is accepted and becomes `[1, 2]`.
        query_type: "v" | "t" | "vt" for TVR, None where the dataset has no types.
    """

    desc_id: int
    video_idx: int
    windows: np.ndarray
    query_type: str | None = None

    def __post_init__(self) -> None:
        windows = np.asarray(self.windows, dtype=np.float64)
        if windows.ndim == 1:
            windows = windows[None]
        if windows.ndim != 2 or windows.shape[1] != 2 or len(windows) == 0:
            raise ValueError(
                f"desc_id {self.desc_id}: windows must be [w, 2] with w >= 1, "
                f"got shape {np.shape(self.windows)}"
            )
        self.windows = windows
        self.desc_id = int(self.desc_id)
        self.video_idx = int(self.video_idx)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroundTruth):
            return NotImplemented
        return (
            self.desc_id == other.desc_id
            and self.video_idx == other.video_idx
            and self.query_type == other.query_type
            and self.windows.shape == other.windows.shape
            and bool(np.all(self.windows == other.windows))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


def metric_key(k: int, iou: float) -> str:
    """The key of a moment recall, e.g. `metric_key(1, 0.5) == "R@1 IoU0.5"`."""
    return f"R@{k} IoU{iou:g}"


def _pad_predictions(
    predictions: Mapping[int, np.ndarray], desc_ids: Sequence[int], max_pred: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stack each query's first `max_pred` rows into `[Q, P, 3]` float32 `(video, st, ed)`.

    Returns the padded array and its validity mask `[Q, P]`; a query without predictions (or
    absent from `predictions`) gets an all-False row, i.e. counts as a miss.
    """
    rows = []
    for desc_id in desc_ids:
        pred = predictions.get(desc_id)
        if pred is None:
            rows.append(np.zeros((0, 3), dtype=np.float32))
            continue
        pred = np.asarray(pred, dtype=np.float32)
        if pred.size == 0:
            rows.append(np.zeros((0, 3), dtype=np.float32))
            continue
        if pred.ndim != 2 or pred.shape[1] < 3:
            raise ValueError(
                f"desc_id {desc_id}: predictions must be [n, 4] (video_idx, st, ed, score), "
                f"got shape {pred.shape}"
            )
        rows.append(pred[:max_pred, :3])
    width = max([len(r) for r in rows], default=0)
    width = max(width, 1)
    padded = np.zeros((len(rows), width, 3), dtype=np.float32)  # [Q, P, 3]
    valid = np.zeros((len(rows), width), dtype=bool)  # [Q, P]
    for q, r in enumerate(rows):
        padded[q, : len(r)] = r
        valid[q, : len(r)] = True
    return padded, valid


def _pad_ground_truth(
    ground_truth: Mapping[int, GroundTruth], desc_ids: Sequence[int], min_windows: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GT as arrays: video `[Q]`, windows `[Q, W, 2]` float32, window mask `[Q, W]`, and the
    number of windows a hit must match `[Q]`."""
    gts = [ground_truth[d] for d in desc_ids]
    n_win = np.array([len(g.windows) for g in gts], dtype=np.int64)  # [Q]
    width = int(n_win.max(initial=1))
    windows = np.zeros((len(gts), width, 2), dtype=np.float32)  # [Q, W, 2]
    mask = np.zeros((len(gts), width), dtype=bool)  # [Q, W]
    for q, g in enumerate(gts):
        windows[q, : len(g.windows)] = g.windows
        mask[q, : len(g.windows)] = True
    video = np.array([g.video_idx for g in gts], dtype=np.float32)  # float32, as the script
    # None: the official rule, DiDeMo queries (>= 4 annotator windows) need 2 of them
    official = np.where(n_win >= 4, 2, 1)
    required = official if min_windows is None else np.minimum(min_windows, n_win)
    return video, windows, mask, required


def _first_hit_ranks(
    predictions: Mapping[int, np.ndarray],
    ground_truth: Mapping[int, GroundTruth],
    desc_ids: Sequence[int],
    ious: Sequence[float],
    min_windows: int | None,
    within_gt_video: bool,
) -> np.ndarray:
    """0-based rank of each query's first hit for each threshold: `[T, Q]` int64.

    `_NO_HIT` where there is none. With `within_gt_video` (SVMR) the rank counts only the
    predictions in the GT video, after the cut to the first 100 predictions.
    """
    pred, valid = _pad_predictions(predictions, desc_ids, MAX_PREDICTIONS)  # [Q, P, 3], [Q, P]
    gt_video, windows, win_mask, required = _pad_ground_truth(ground_truth, desc_ids, min_windows)
    same_video = valid & (pred[:, :, 0] == gt_video[:, None])  # [Q, P]
    iou = temporal_iou(pred[:, :, None, 1:3], windows[:, None, :, :])  # [Q, P, W] float32
    if within_gt_video:
        position = np.cumsum(same_video, axis=1) - 1  # rank among the GT video's predictions
    else:
        position = np.broadcast_to(np.arange(pred.shape[1]), same_video.shape)  # [Q, P]
    ranks = np.empty((len(ious), len(desc_ids)), dtype=np.int64)
    for t, theta in enumerate(ious):
        matched = (iou >= np.float32(theta)) & win_mask[:, None, :]  # [Q, P, W]
        hit = same_video & (matched.sum(axis=2) >= required[:, None])  # [Q, P]
        ranks[t] = np.where(hit, position, _NO_HIT).min(axis=1, initial=_NO_HIT)
    return ranks


def _moment_recalls(
    ranks: np.ndarray, ks: Sequence[int], ious: Sequence[float], subset: np.ndarray | None = None
) -> dict[str, float]:
    """`{"R@k IoUθ": 100 · mean(rank < k)}` from first-hit ranks `[T, Q]`."""
    if subset is not None:
        ranks = ranks[:, subset]
    out: dict[str, float] = {}
    for t, theta in enumerate(ious):
        for k in ks:
            out[metric_key(k, theta)] = _percent(ranks[t] < k)
    return out


def _percent(hits: np.ndarray) -> float:
    return float(100.0 * hits.mean()) if hits.size else float("nan")


def _desc_ids(ground_truth: Mapping[int, GroundTruth]) -> list[int]:
    if not ground_truth:
        raise ValueError("ground_truth is empty: nothing to evaluate")
    return list(ground_truth.keys())


def vcmr_recall(
    predictions: Mapping[int, np.ndarray],
    ground_truth: Mapping[int, GroundTruth],
    ks: Sequence[int] = DEFAULT_KS,
    ious: Sequence[float] = DEFAULT_IOUS,
    min_windows: int | None = None,
) -> dict[str, float]:
    """VCMR `R@k IoU=θ` in percent over all queries of `ground_truth` (SPEC §7).

    Args:
        predictions: desc_id → `[n, 4]` `(video_idx, st, ed, score)` sorted best first; only
            the first 100 rows count, duplicates count as they are. A query of
            `ground_truth` missing here counts as a miss; extra desc_ids are ignored.
        ground_truth: desc_id → GroundTruth.
        ks: recall cut-offs.
        ious: IoU thresholds θ (a hit needs IoU ≥ θ).
        min_windows: GT windows a prediction must match, capped at the query's window count
            (`required = min(min_windows, len(windows))`). None (default) is the official
            rule: 2 for queries with ≥ 4 windows (DiDeMo), else 1.

    Returns:
        `{"R@1 IoU0.5": ..., ...}`, unrounded percentages.
    """
    desc_ids = _desc_ids(ground_truth)
    ranks = _first_hit_ranks(predictions, ground_truth, desc_ids, ious, min_windows, False)
    return _moment_recalls(ranks, ks, ious)


def svmr_recall(
    predictions: Mapping[int, np.ndarray],
    ground_truth: Mapping[int, GroundTruth],
    ks: Sequence[int] = DEFAULT_KS,
    ious: Sequence[float] = DEFAULT_IOUS,
    min_windows: int | None = None,
) -> dict[str, float]:
    """SVMR `R@k IoU=θ` in percent: as `vcmr_recall`, but among the predictions in the GT video.

    The first 100 predictions are kept, then those in other videos are dropped and `k` counts
    what is left (the official script's order of the two steps).
    """
    desc_ids = _desc_ids(ground_truth)
    ranks = _first_hit_ranks(predictions, ground_truth, desc_ids, ious, min_windows, True)
    return _moment_recalls(ranks, ks, ious)


def _vr_ranks(
    predictions: Mapping[int, np.ndarray],
    ground_truth: Mapping[int, GroundTruth],
    desc_ids: Sequence[int],
) -> np.ndarray:
    """0-based position of the GT video in each query's first 100 predicted videos `[Q]`."""
    lists = []
    for desc_id in desc_ids:
        pred = predictions.get(desc_id)
        pred = np.zeros(0) if pred is None else np.asarray(pred)
        if pred.ndim == 2:  # [n, 2|4] rows (video_idx, ...): the video is the first column
            pred = pred[:, 0]
        lists.append(pred[:MAX_PREDICTIONS])
    width = max(max([len(v) for v in lists], default=0), 1)
    videos = np.full((len(lists), width), np.nan, dtype=np.float64)  # [Q, P]; NaN pads
    for q, v in enumerate(lists):
        videos[q, : len(v)] = v
    gt_video = np.array([ground_truth[d].video_idx for d in desc_ids], dtype=np.float64)
    match = videos == gt_video[:, None]  # [Q, P]
    position = np.broadcast_to(np.arange(width), match.shape)
    return np.where(match, position, _NO_HIT).min(axis=1, initial=_NO_HIT)


def vr_recall(
    predictions: Mapping[int, np.ndarray],
    ground_truth: Mapping[int, GroundTruth],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """VR `R@k` in percent: queries whose GT video is among their first k predicted videos.

    Args:
        predictions: desc_id → ranked video indices `[n]` (or rows `[n, 2|4]` whose first
            column is the video index), best first; the first 100 count. A VR list is a list
            of distinct videos; as in the official script, a duplicate is not skipped.
        ground_truth: desc_id → GroundTruth.
        ks: recall cut-offs.

    Returns:
        `{"R@1": ..., "R@5": ..., ...}`.
    """
    desc_ids = _desc_ids(ground_truth)
    ranks = _vr_ranks(predictions, ground_truth, desc_ids)
    return {f"R@{k}": _percent(ranks < k) for k in ks}


def _type_subsets(
    ground_truth: Mapping[int, GroundTruth], desc_ids: Sequence[int]
) -> dict[str, np.ndarray]:
    """Query type → boolean mask `[Q]`, "v", "t", "vt" first, for the types present."""
    types = np.array([ground_truth[d].query_type for d in desc_ids], dtype=object)
    present = {t for t in types if t is not None}
    order = [t for t in QUERY_TYPES if t in present] + sorted(present - set(QUERY_TYPES))
    return {t: types == t for t in order}


def evaluate_all(
    vcmr: Mapping[int, np.ndarray] | None,
    svmr: Mapping[int, np.ndarray] | None,
    vr: Mapping[int, np.ndarray] | None,
    ground_truth: Mapping[int, GroundTruth],
    ks: Sequence[int] = DEFAULT_KS,
    ious: Sequence[float] = DEFAULT_IOUS,
    min_windows: int | None = None,
    by_type: bool = True,
) -> dict[str, dict[str, float]]:
    """All three tasks, overall and per query type, in percent (SPEC §7).

    Args:
        vcmr, svmr, vr: predictions as for `vcmr_recall`, `svmr_recall`, `vr_recall`; a task
            given as None is left out of the result.
        ground_truth: desc_id → GroundTruth; every query in it is evaluated.
        ks, ious, min_windows: as for `vcmr_recall`.
        by_type: add `"VCMR_v"`, `"VCMR_t"`, `"VCMR_vt"`, ... for the query types present.

    Returns:
        `{"VCMR": {"R@1 IoU0.5": ...}, "SVMR": {...}, "VR": {"R@1": ...},
        "VCMR_v": {...}, "SVMR_v": {...}, "VR_v": {...}, ...}` (each per-type entry is the
        recall over the queries of that type).
    """
    desc_ids = _desc_ids(ground_truth)
    subsets = _type_subsets(ground_truth, desc_ids) if by_type else {}
    results: dict[str, dict[str, float]] = {}
    per_type: dict[str, dict[str, float]] = {}
    for task, preds in (("VCMR", vcmr), ("SVMR", svmr)):
        if preds is None:
            continue
        ranks = _first_hit_ranks(preds, ground_truth, desc_ids, ious, min_windows, task == "SVMR")
        results[task] = _moment_recalls(ranks, ks, ious)
        for qtype, subset in subsets.items():
            per_type[f"{task}_{qtype}"] = _moment_recalls(ranks, ks, ious, subset)
    if vr is not None:
        vr_ranks = _vr_ranks(vr, ground_truth, desc_ids)
        results["VR"] = {f"R@{k}": _percent(vr_ranks < k) for k in ks}
        for qtype, subset in subsets.items():
            per_type[f"VR_{qtype}"] = {f"R@{k}": _percent(vr_ranks[subset] < k) for k in ks}
    results.update(per_type)
    return results


def vcmr_selection_score(results: Mapping[str, Mapping[str, float]]) -> float:
    """The model-selection number of SPEC §5/§7: `VCMR R@1 IoU0.5 + VCMR R@1 IoU0.7`."""
    vcmr = results["VCMR"]
    return float(vcmr[metric_key(1, 0.5)] + vcmr[metric_key(1, 0.7)])


def vr_metrics(
    ranks: Tensor, query_types: Tensor | None = None, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """VR `R@k` (and per query type) from GT ranks (SPEC §7): keys `VR_R@k`, `VR_SumR`,
    `VR_R@k_<type>`, `VR_SumR_<type>`; `query_types` [Q] holds each query's code, the index
    of its type in `QUERY_TYPES` (−1: none)."""
    out = {f"VR_{name}": value for name, value in recall_at_k(ranks, ks).items()}
    if query_types is not None:
        for code, name in enumerate(QUERY_TYPES):
            subset = ranks[query_types == code]
            if subset.numel():
                for metric, value in recall_at_k(subset, ks).items():
                    out[f"VR_{metric}_{name}"] = value
    return out
