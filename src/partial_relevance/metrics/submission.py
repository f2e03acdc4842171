"""The TVR submission file: write it, read it back, score it (SPEC §7).

Format (the TVR benchmark's): `{"video2idx": {vid_name: idx}, "VCMR": [...], "SVMR": [...],
"VR": [...]}`, each item `{"desc_id": int, "desc": str, "predictions": [[vid_idx, st, ed,
score], ...]}` sorted best first, at most 100 predictions; VR items have `st = ed = 0`.
Scoring reads the file back and runs `evaluate_all`, which implements the official script's
definitions, so what the suite reports is what the benchmark would compute from the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partial_relevance.data.annotations import read_moment_jsonl, read_video2dur_idx
from partial_relevance.data.errors import DataError
from partial_relevance.metrics.vcmr import (
    MAX_PREDICTIONS,
    GroundTruth,
    evaluate_all,
)

__all__ = [
    "TASKS",
    "ground_truth_from_tvr_jsonl",
    "queries_from_tvr_jsonl",
    "read_submission",
    "read_video2idx",
    "score_submission",
    "write_submission",
]

TASKS = ("VCMR", "SVMR", "VR")

Predictions = Mapping[int, np.ndarray]
TaskPredictions = dict[int, np.ndarray] | None  # a task read back; None when absent


def _moment_rows(pred: np.ndarray | None, max_pred: int) -> list[list[float]]:
    """`[n, 4]` (video_idx, st, ed, score) → JSON rows, first `max_pred`, video as int."""
    if pred is None:
        return []
    pred = np.asarray(pred, dtype=np.float64)
    if pred.size == 0:
        return []
    if pred.ndim != 2 or pred.shape[1] < 4:
        raise ValueError(f"moment predictions must be [n, 4], got shape {pred.shape}")
    return [[int(v), float(st), float(ed), float(s)] for v, st, ed, s in pred[:max_pred, :4]]


def _video_rows(pred: np.ndarray | None, max_pred: int) -> list[list[float]]:
    """VR list → rows `[vid_idx, 0, 0, score]`.

    `pred` is `[n]` ranked video indices (the score written is `-rank`, a placeholder that
    keeps the order; the official script ignores scores) or `[n, 2]` `(video_idx, score)` or
    `[n, 4]` rows whose last column is the score.
    """
    if pred is None:
        return []
    pred = np.asarray(pred)
    if pred.size == 0:
        return []
    pred = pred[:max_pred]
    if pred.ndim == 1:
        return [[int(v), 0.0, 0.0, -float(r)] for r, v in enumerate(pred)]
    if pred.ndim == 2 and pred.shape[1] in (2, 4):
        return [[int(row[0]), 0.0, 0.0, float(row[-1])] for row in pred]
    raise ValueError(f"VR predictions must be [n], [n, 2] or [n, 4], got shape {pred.shape}")


def write_submission(
    path: str | Path,
    video2idx: Mapping[str, int],
    queries: Sequence[tuple[int, str]],
    vcmr: Predictions | None,
    svmr: Predictions | None,
    vr: Predictions | None,
    overwrite: bool = False,
) -> Path:
    """Write a TVR submission file (SPEC §7) and return its path.

    Args:
        path: the JSON file to write; its parent folders are created.
        video2idx: vid_name → the video index used in the predictions.
        queries: `(desc_id, desc)` in the order the items are written; a query without
            predictions in a task gets an empty list there.
        vcmr, svmr: desc_id → `[n, 4]` `(video_idx, st, ed, score)` sorted best first (the
            order is kept as given, it *is* the ranking); the first 100 are written. None
            leaves the task out of the file.
        vr: desc_id → ranked videos, `[n]` indices or `[n, 2]` `(video_idx, score)`; written as
            `[vid_idx, 0, 0, score]`, first 100. None leaves the task out.
        overwrite: replace an existing file; by default an existing file is an error, so a run
            never silently clobbers another run's submission.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"submission file {path} already exists; pass overwrite=True to replace it"
        )
    submission: dict[str, object] = {"video2idx": {str(k): int(v) for k, v in video2idx.items()}}
    for task, preds in zip(TASKS, (vcmr, svmr, vr)):
        if preds is None:
            continue
        to_rows = _video_rows if task == "VR" else _moment_rows
        submission[task] = [
            {
                "desc_id": int(desc_id),
                "desc": str(desc),
                "predictions": to_rows(preds.get(desc_id), MAX_PREDICTIONS),
            }
            for desc_id, desc in queries
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w" if overwrite else "x", encoding="utf-8") as f:
        json.dump(submission, f)
    return path


def _load_submission(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "submission file not found")
    try:
        with open(path, encoding="utf-8") as f:
            submission = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err})") from err
    if not isinstance(submission, dict) or "video2idx" not in submission:
        raise DataError(path, "missing field 'video2idx'", "not a TVR submission file")
    return submission


def _parse_task(path: Path, submission: dict, task: str) -> dict[int, np.ndarray] | None:
    if task not in submission:
        return None
    out: dict[int, np.ndarray] = {}
    for n, item in enumerate(submission[task]):
        try:
            desc_id = int(item["desc_id"])
            rows = np.asarray(item["predictions"], dtype=np.float64).reshape(-1, 4)  # [n, 4]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(path, f"{task} item {n} is malformed ({err!r})") from err
        out[desc_id] = rows[:, 0].astype(np.int64) if task == "VR" else rows
    return out


def read_submission(path: str | Path) -> tuple[TaskPredictions, TaskPredictions, TaskPredictions]:
    """Read a submission file back into `(vcmr, svmr, vr)` prediction dicts.

    VCMR and SVMR: desc_id → `[n, 4]` float64 rows; VR: desc_id → `[n]` int64 video indices.
    A task absent from the file comes back as None.
    """
    path = Path(path)
    submission = _load_submission(path)
    vcmr, svmr, vr = (_parse_task(path, submission, task) for task in TASKS)
    return vcmr, svmr, vr


def score_submission(
    path: str | Path,
    ground_truth: Mapping[int, GroundTruth] | str | Path,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Score a submission file: `evaluate_all` on what `read_submission` gives back.

    Args:
        path: the submission file.
        ground_truth: desc_id → GroundTruth (video indices in the file's `video2idx`), or the
            path of a TVR-style annotation jsonl, which is then read with the file's own
            `video2idx`, exactly as the official script does.
        options: `evaluate_all`'s keywords (`ks`, `ious`, `min_windows`, `by_type`), its
            defaults where left out (one source for them).
    """
    path = Path(path)
    submission = _load_submission(path)
    if isinstance(ground_truth, str | Path):
        ground_truth = ground_truth_from_tvr_jsonl(ground_truth, submission["video2idx"])
    vcmr, svmr, vr = (_parse_task(path, submission, task) for task in TASKS)
    return evaluate_all(vcmr, svmr, vr, ground_truth, **options)


def ground_truth_from_tvr_jsonl(
    path: str | Path, video2idx: Mapping[str, int]
) -> dict[int, GroundTruth]:
    """Read the labels of a TVR-style annotation jsonl (SPEC §1.2) as desc_id → GroundTruth.

    Each line needs `desc_id`, `vid_name` and `ts` (`[st, ed]`, or for DiDeMo a list of ≥ 4
    `[st, ed]` windows); `type` ("v" | "t" | "vt") is optional. Parsed by the data layer's
    one jsonl reader (`read_moment_jsonl`). Video indices come from `video2idx` (e.g.
    `read_video2idx(tvr_video2dur_idx.json, "val")`).

    Raises:
        DataError (a ValueError): a malformed line, a missing field or an unknown `vid_name`,
            naming the file and the line number.
    """
    path = Path(path)
    out: dict[int, GroundTruth] = {}
    for query in read_moment_jsonl(path, labels="required"):
        if query.video_id not in video2idx:
            raise DataError(
                path, f"line {query.line}: vid_name {query.video_id!r} not in video2idx"
            )
        assert query.span is not None  # labelled
        desc_id = int(query.query_id)
        out[desc_id] = GroundTruth(
            desc_id=desc_id,
            video_idx=int(video2idx[query.video_id]),
            windows=np.asarray(query.windows or (query.span,), dtype=np.float64),
            query_type=query.query_type,
        )
    return out


def queries_from_tvr_jsonl(path: str | Path) -> list[tuple[int, str]]:
    """`(desc_id, desc)` of every line of a TVR-style jsonl, in file order (for the writer)."""
    return [(int(q.query_id), q.text) for q in read_moment_jsonl(path)]


def read_video2idx(path: str | Path, split: str) -> dict[str, int]:
    """vid_name → global index of one split of `tvr_video2dur_idx.json`
    (`{split: {vid_name: [duration, global_idx]}}`, SPEC §1.2)."""
    index = read_video2dur_idx(path)
    if split not in index:
        raise DataError(path, f"split {split!r} not found", f"splits: {sorted(index)}")
    return {name: idx for name, (_, idx) in index[split].items()}
