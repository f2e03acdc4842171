"""Chunked exact top-k over an encoded corpus, and the retriever's ranking file (SPEC §6.1).

VR (PREM §3.5): encode the whole corpus once, score every query against every video with the
exact Eq. 6 score, keep the top 100 videos. Eq. 6 needs a max over clips, so a score block is
`[queries, videos, clips]`: the queries are processed in chunks sized so that one block stays
under `max_elements` (never the full `[Q, V, L]` tensor of a large corpus). No approximate
index is involved.

The ranking file (HDF5, one group per split) is what the moment localizer reads: its training
negatives are drawn from the top-100 of each training query (SPEC §5) and VCMR inference runs
the localizer on each query's top 10 videos (SPEC §6.2). Its reader and writer
(`SplitRanking`, `write_rankings`, `read_rankings`, `ranking_splits`) live in the data layer,
`data.rankings`, their one address (the localizer's datamodule reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from partial_relevance.metrics.retrieval import finite_scores, ranks_from_scores

__all__ = [
    "VIDEO_KEYS",
    "CorpusRanking",
    "encoded_score_fn",
    "pad_clips",
    "query_chunk_size",
    "rank_corpus",
    "stack_query_encodings",
    "stack_video_encodings",
]

VIDEO_KEYS = ("vis", "sub", "clip_mask", "sub_mask")


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


def query_chunk_size(num_videos: int, num_clips: int, max_elements: int) -> int:
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
    k: int,
    positive: Tensor | None = None,
    chunk: int = 1024,
) -> CorpusRanking:
    """Exact top-k (and GT ranks) of `num_queries` queries, `chunk` queries at a time.

    Args:
        score_fn: `score_fn(rows)` -> `[len(rows), V]` scores of those queries against every
            video (e.g. `encoded_score_fn`).
        num_queries: Q.
        k: list length (`model.ranking.k`, SPEC §6.1: 100); capped at V.
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
        # Non-finite scores are the worst (never listed ahead of a real score; SPEC §7).
        values, indices = torch.topk(
            finite_scores(scores), min(k, scores.shape[1]), dim=1, sorted=True
        )
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
