"""PRVR retrieval metrics on the full query × video matrix (SPEC §7).

`rank` = 1 + the number of videos scoring strictly higher than the GT video, so ties count in
the query's favour (deterministic; the peers' unstable sorts break ties arbitrarily).
A non-finite score (NaN, ±inf) is the worst score (issue #18): another video's never beats
anything, and a query whose GT score is non-finite gets the worst rank (the number of
videos), never a hit — no metric can be inflated by one.
Never torchmetrics' RetrievalRecall: it treats scores <= 0 as not retrieved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10, 100)


def finite_scores(scores: Tensor) -> Tensor:
    """`scores` with every non-finite entry (NaN, ±inf) replaced by −inf, the worst score
    (`torch.topk` and `>` would otherwise put a NaN first or compare it false)."""
    worst = float("-inf")
    return torch.nan_to_num(scores, nan=worst, posinf=worst, neginf=worst)


def ranks_from_scores(scores: Tensor, positive: Tensor) -> Tensor:
    """scores [n, b], positive [n] -> 1-based rank of each query's GT video [n].

    Non-finite scores are the worst (`finite_scores`); a non-finite GT score ranks last (b).
    """
    positive = positive.to(device=scores.device, dtype=torch.long)
    gt_finite = torch.isfinite(scores.gather(1, positive[:, None])).squeeze(1)  # [n]
    scores = finite_scores(scores)
    positive_scores = scores.gather(1, positive[:, None])  # [n, 1]
    ranks = (scores > positive_scores).sum(dim=1) + 1  # [n]
    return torch.where(gt_finite, ranks, torch.full_like(ranks, scores.shape[1]))


def chunked_ranks(
    score_fn: Callable[[slice], Tensor], positive: Tensor, num_queries: int, chunk: int = 1024
) -> Tensor:
    """Ranks without materialising more than `chunk` rows of the score matrix at once.

    `score_fn(rows)` returns the scores of the queries `rows` against every video.
    """
    ranks = []
    for start in range(0, num_queries, chunk):
        rows = slice(start, min(start + chunk, num_queries))
        ranks.append(ranks_from_scores(score_fn(rows), positive[rows]))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def gt_columns(video_ids: Tensor, positive_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Column of each query's GT video in a score matrix whose columns are `video_ids`.

    `video_ids` [V] sorted, unique global video ids (the encoded corpus); `positive_ids` [n]
    each query's GT video id. Returns (columns [n] long, encoded [n] bool): `encoded` is False
    where the GT video is not among `video_ids` (a partial evaluation corpus, e.g. under
    `fast_dev_run` or `limit_val_batches`); its column is then 0 and meaningless.
    """
    positive_ids = positive_ids.to(device=video_ids.device, dtype=video_ids.dtype)
    if video_ids.numel() == 0:
        zeros = torch.zeros_like(positive_ids, dtype=torch.long)
        return zeros, torch.zeros_like(positive_ids, dtype=torch.bool)
    columns = torch.searchsorted(video_ids, positive_ids).clamp(max=len(video_ids) - 1)
    encoded = video_ids[columns] == positive_ids
    return torch.where(encoded, columns, torch.zeros_like(columns)), encoded


def recall_at_k(ranks: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """R@k = 100 · mean(rank <= k) for each k, and SumR from the unrounded values."""
    if ranks.numel() == 0:
        raise ValueError("no queries to evaluate")
    out = {f"R@{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}
    out["SumR"] = sum(out[f"R@{k}"] for k in ks)
    return out


def chance_recall(num_videos: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Expected R@k of a random ranking: 100 · min(k / #videos, 1), and their sum."""
    out = {f"R@{k}": 100.0 * min(k / num_videos, 1.0) for k in ks}
    out["SumR"] = sum(out[f"R@{k}"] for k in ks)
    return out
