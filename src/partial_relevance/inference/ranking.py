"""Chunked exact top-k over an encoded corpus, and the retriever's ranking file (SPEC §6.1).

VR (PREM §3.5): encode the whole corpus once, score every query against every video with the
exact Eq. 6 score, keep the top 100 videos. Eq. 6 needs a max over clips, so a score block is
`[queries, videos, clips]`: the queries are processed in chunks sized so that one block stays
under `max_elements` (never the full `[Q, V, L]` tensor of a large corpus). No approximate
index is involved.

The ranking file (HDF5, one group per split) is what the moment localizer reads: its training
negatives are drawn from the top-100 of each training query (SPEC §5) and VCMR inference runs
the localizer on each query's top 10 videos (SPEC §6.2). Layout of group `<split>`:

- `query_id` `[Q]` utf-8 (the annotation's id), `desc_id` `[Q]` int64 (−1 if not numeric);
- `video_names` `[V]` utf-8: the split's candidate videos; `video_idx` indexes this list;
- `video_idx` `[Q, k]` int64 and `scores` `[Q, k]` float32, best first (`k = min(100, V)`);
- `gt_video_idx` `[Q]` int64, the GT video's index in `video_names` (−1 when unlabelled);
- attributes `k`, `num_queries`, `num_videos`; the root has `format_version`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.metrics.retrieval import ranks_from_scores

DEFAULT_TOPK = 100  # SPEC §6.1: the VR list is the top 100 videos
DEFAULT_MAX_ELEMENTS = 1 << 26  # ≈ 67 M similarity entries per [chunk, V, L] block
RANKING_FORMAT_VERSION = 1
VIDEO_KEYS = ("vis", "sub", "clip_mask", "sub_mask")
_STR = h5py.string_dtype(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Encoded corpora
# --------------------------------------------------------------------------------------------


def pad_clips(x: Tensor, length: int) -> Tensor:
    """Zero-pad (False for bool masks) dim 1 of `x` (`[V, L, ...]`) to `length`."""
    if x.shape[1] == length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def stack_video_encodings(chunks: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate per-batch video encodings (`vis`, `sub` `[v, L_b, D]`, `clip_mask`,
    `sub_mask` `[v, L_b]`) padded to the longest batch: `[V, L, D]`, `[V, L]`. Padding clips
    are masked, so Eq. 6 scores do not change."""
    chunks = list(chunks)
    length = max(c["clip_mask"].shape[1] for c in chunks)
    return {k: torch.cat([pad_clips(c[k], length) for c in chunks]) for k in VIDEO_KEYS}


def stack_query_encodings(chunks: Iterable[Mapping[str, Tensor | None]]) -> dict[str, Tensor]:
    """Concatenate per-batch query encodings (`vis`, `sub` `[b, D]`) into `[Q, D]`."""
    chunks = list(chunks)
    return {k: torch.cat([c[k] for c in chunks]) for k in ("vis", "sub")}  # type: ignore[misc]


def query_chunk_size(
    num_videos: int, num_clips: int, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> int:
    """Queries a block may hold so that `[chunk, V, L]` stays under `max_elements`."""
    return max(1, int(max_elements) // max(1, num_videos * num_clips))


# --------------------------------------------------------------------------------------------
# Chunked exact scoring
# --------------------------------------------------------------------------------------------


@dataclass
class CorpusRanking:
    """Top-k of every query and, when GT videos were given, the rank of each GT video.

    scores / indices `[Q, k]` (best first; indices into the corpus's video list); ranks `[Q]`
    1-based, `1 + #videos scoring strictly higher than the GT video` (SPEC §7: ties count in
    the query's favour), or None.
    """

    scores: Tensor
    indices: Tensor
    ranks: Tensor | None = None


def rank_corpus(
    score_fn: Callable[[slice], Tensor],
    num_queries: int,
    k: int = DEFAULT_TOPK,
    positive: Tensor | None = None,
    chunk: int = 1024,
) -> CorpusRanking:
    """Exact top-k (and GT ranks) of `num_queries` queries, `chunk` queries at a time.

    Args:
        score_fn: `score_fn(rows)` -> `[len(rows), V]` scores of those queries against every
            video (e.g. `encoded_score_fn`).
        num_queries: Q.
        k: list length; capped at V.
        positive: optional `[Q]` GT video index of each query; enables `ranks`. Rows with −1
            (unlabelled) get rank 0.
        chunk: queries scored at once (see `query_chunk_size`).
    """
    if num_queries == 0:
        raise ValueError("no queries to rank")
    top_scores, top_indices, ranks = [], [], []
    for start in range(0, num_queries, max(1, chunk)):
        rows = slice(start, min(start + chunk, num_queries))
        scores = score_fn(rows)  # [c, V]
        values, indices = torch.topk(scores, min(k, scores.shape[1]), dim=1, sorted=True)
        top_scores.append(values)
        top_indices.append(indices)
        if positive is not None:
            pos = positive[rows].to(scores.device)
            rank = ranks_from_scores(scores, pos.clamp_min(0))
            ranks.append(torch.where(pos >= 0, rank, torch.zeros_like(rank)))
    return CorpusRanking(
        torch.cat(top_scores),
        torch.cat(top_indices),
        torch.cat(ranks) if positive is not None else None,
    )


def encoded_score_fn(
    score: Callable[[dict, dict], Tensor],
    queries: Mapping[str, Tensor],
    videos: Mapping[str, Tensor],
) -> Callable[[slice], Tensor]:
    """`rows -> score(queries[rows], videos)`: wraps `PremRetriever.score` for `rank_corpus`."""

    def fn(rows: slice) -> Tensor:
        return score({k: v[rows] for k, v in queries.items()}, dict(videos))

    return fn


# --------------------------------------------------------------------------------------------
# The ranking file
# --------------------------------------------------------------------------------------------


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
        return SplitRanking(
            split,
            [s.decode() if isinstance(s, bytes) else str(s) for s in group["query_id"][()]],
            [s.decode() if isinstance(s, bytes) else str(s) for s in group["video_names"][()]],
            group["video_idx"][()],
            group["scores"][()],
            group["gt_video_idx"][()],
        )
