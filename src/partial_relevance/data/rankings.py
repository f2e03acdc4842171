"""The retriever's ranking file (SPEC §6.1): what the moment localizer reads.

The retriever (`lit.retriever`, through `inference.ranking.rank_corpus`) ranks every split's
queries once; the moment localizer's datamodule (`data.vcmr_localizer`) reads the lists back:
its training negatives are drawn from the top-100 of each training query (SPEC §5) and VCMR
inference runs the localizer on each query's top 10 videos (SPEC §6.2). The file is data on
disk, so its reader and writer live in the data layer (DESIGN: `data` depends on nothing
above it); `inference.ranking` re-exports them.

Layout (HDF5, one group per split `<split>`):

- `query_id` `[Q]` utf-8 (the annotation's id), `desc_id` `[Q]` int64 (−1 if not numeric);
- `video_names` `[V]` utf-8: the split's candidate videos; `video_idx` indexes this list;
- `video_idx` `[Q, k]` int64 and `scores` `[Q, k]` float32, best first (`k = min(100, V)`);
- `gt_video_idx` `[Q]` int64, the GT video's index in `video_names` (−1 when unlabelled);
- attributes `k`, `num_queries`, `num_videos`; the root has `format_version`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from partial_relevance.data.errors import DataError, require_exists

__all__ = [
    "RANKING_FORMAT_VERSION",
    "SplitRanking",
    "ranking_splits",
    "read_rankings",
    "write_rankings",
]

RANKING_FORMAT_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")


def _desc_ids(query_ids: list[str]) -> np.ndarray:
    return np.array([int(q) if q.lstrip("-").isdigit() else -1 for q in query_ids], dtype=np.int64)


@dataclass
class SplitRanking:
    """One split's VR lists (see the module docstring for the on-disk layout)."""

    split: str
    query_ids: list[str]
    video_names: list[str]
    video_idx: np.ndarray  # [Q, k] int64, into video_names
    scores: np.ndarray  # [Q, k] float32
    gt_video_idx: np.ndarray  # [Q] int64, −1 unlabelled

    def __post_init__(self) -> None:
        self.video_idx = np.asarray(self.video_idx, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.gt_video_idx = np.asarray(self.gt_video_idx, dtype=np.int64)
        q = len(self.query_ids)
        if self.video_idx.shape[0] != q or self.scores.shape != self.video_idx.shape:
            raise ValueError(
                f"split {self.split!r}: {q} queries but video_idx {self.video_idx.shape}, "
                f"scores {self.scores.shape}"
            )
        self._row = {query_id: i for i, query_id in enumerate(self.query_ids)}

    @property
    def desc_ids(self) -> np.ndarray:
        return _desc_ids(self.query_ids)

    @property
    def k(self) -> int:
        return int(self.video_idx.shape[1])

    def row(self, query_id: str | int) -> int:
        """Row of a query (by its id), KeyError if absent."""
        return self._row[str(query_id)]

    def top_videos(self, query_id: str | int, k: int | None = None) -> list[str]:
        """The query's ranked video names, best first (the first `k`)."""
        return [self.video_names[i] for i in self.video_idx[self.row(query_id), :k]]


def write_rankings(
    path: str | Path, rankings: Mapping[str, SplitRanking], attrs: Mapping | None = None
) -> Path:
    """Write every split's lists into one HDF5 file, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["format_version"] = RANKING_FORMAT_VERSION
            for key, value in (attrs or {}).items():
                handle.attrs[key] = value
            for split, ranking in rankings.items():
                group = handle.create_group(split)
                group.create_dataset("query_id", data=ranking.query_ids, dtype=_STR)
                group.create_dataset("desc_id", data=ranking.desc_ids)
                group.create_dataset("video_names", data=ranking.video_names, dtype=_STR)
                group.create_dataset("video_idx", data=ranking.video_idx)
                group.create_dataset("scores", data=ranking.scores)
                group.create_dataset("gt_video_idx", data=ranking.gt_video_idx)
                group.attrs["k"] = ranking.k
                group.attrs["num_queries"] = len(ranking.query_ids)
                group.attrs["num_videos"] = len(ranking.video_names)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def ranking_splits(path: str | Path) -> list[str]:
    """The splits a ranking file holds."""
    path = require_exists(path, "ranking file")
    with h5py.File(path, "r") as handle:
        return list(handle.keys())


def read_rankings(path: str | Path, split: str) -> SplitRanking:
    """One split of a ranking file; DataError naming the file and the missing split / field."""
    path = require_exists(path, "ranking file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(path, f"cannot be opened as HDF5: {error}") from None
    with handle:
        if split not in handle:
            raise DataError(path, f"split {split!r} not found (splits: {list(handle.keys())})")
        group = handle[split]
        for name in ("query_id", "video_names", "video_idx", "scores", "gt_video_idx"):
            if name not in group:
                raise DataError(path, f"split {split!r}: missing dataset {name!r}")
        try:
            ranking = SplitRanking(
                split,
                [s.decode() if isinstance(s, bytes) else str(s) for s in group["query_id"][()]],
                [s.decode() if isinstance(s, bytes) else str(s) for s in group["video_names"][()]],
                group["video_idx"][()],
                group["scores"][()],
                group["gt_video_idx"][()],
            )
        except ValueError as error:
            raise DataError(path, str(error)) from None
    check_ranking(path, ranking)
    return ranking


def check_ranking(path: Path, ranking: SplitRanking) -> None:
    """DataError naming the file, split, query row and field for an index out of range or a
    non-finite score (a NaN score would otherwise rank anywhere)."""
    num_videos = len(ranking.video_names)
    where = f"split {ranking.split!r}"
    for name, values, low in (
        ("video_idx", ranking.video_idx, 0),
        ("gt_video_idx", ranking.gt_video_idx, -1),
    ):
        bad = (values < low) | (values >= num_videos)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(
                path,
                f"{where}, query row {row} ({ranking.query_ids[row]!r}): {name} out of range "
                f"[{low}, {num_videos})",
            )
    finite = np.isfinite(ranking.scores)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise DataError(
            path,
            f"{where}, query row {row} ({ranking.query_ids[row]!r}): non-finite score",
        )
