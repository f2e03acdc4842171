"""PRVR retrieval metrics on the full query × video matrix (SPEC §7).

`rank` = 1 + the number of videos scoring strictly higher than the GT video, so ties count in
the query's favour (deterministic; the peers' unstable sorts break ties arbitrarily).
Never torchmetrics' RetrievalRecall: it treats scores <= 0 as not retrieved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10, 100)


def ranks_from_scores(scores: Tensor, positive: Tensor) -> Tensor:
    """scores [n, b], positive [n] -> 1-based rank of each query's GT video [n]."""
    positive_scores = scores.gather(1, positive[:, None])  # [n, 1]
    return (scores > positive_scores).sum(dim=1) + 1


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
