"""Cross-modal ranking losses shared by every PRVR term (SPEC §3).

- `triplet_ranking_loss`: PRVR §3.2.3 Eq. 5, random or hard in-batch negatives.
- `multi_positive_infonce`: PRVR §3.2.3 Eq. 6 as SPEC §3 writes it out (MS-SL's `clip_nce`:
  a video's several queries are all positives in the video->text direction).
- `pair_similarity`: the similarity rule of SPEC §3 (`dot` or `cos`) for two feature sets.

All functions are pure and vectorised (no Python loop over queries); random choices take an
optional `torch.Generator` so a seeded run is reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NCE_AVERAGES = ("video", "pair")
SIMILARITIES = ("dot", "cos")


def _rand(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) numbers on `like`'s device, drawn from `generator` (on its own device)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _uniform_choice(mask: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Pick, per row of the bool `mask` [r, c], one True column uniformly at random.

    Returns (index [r] long, valid [r] bool); `valid` is False for rows with no True entry
    (their index is arbitrary and must be ignored by the caller).
    """
    noise = _rand(tuple(mask.shape), mask, generator).masked_fill(~mask, -1.0)  # [r, c]
    return noise.argmax(dim=1), mask.any(dim=1)


def pair_similarity(a: Tensor, b: Tensor, sim: str) -> Tensor:
    """Similarity of every row of `a` [n, D] with every row of `b` [m, D] -> [n, m].

    `sim="dot"` gives unnormalised dot products (MS-SL/GMMFormer's InfoNCE, SPEC §3
    [decision]); `sim="cos"` gives cosine similarity (the triplet rule, PRVR Eq. 3).
    """
    if sim == "dot":
        return a @ b.t()
    if sim == "cos":
        return F.normalize(a, dim=-1, eps=1e-6) @ F.normalize(b, dim=-1, eps=1e-6).t()
    raise ValueError(f"unknown similarity {sim!r}; expected one of {SIMILARITIES}")


def rowwise_similarity(a: Tensor, b: Tensor, sim: str) -> Tensor:
    """Similarity of `a[i]` with `b[i]` for aligned rows: [n, D], [n, D] -> [n]."""
    if sim == "dot":
        return (a * b).sum(dim=-1)
    if sim == "cos":
        return (F.normalize(a, dim=-1, eps=1e-6) * F.normalize(b, dim=-1, eps=1e-6)).sum(-1)
    raise ValueError(f"unknown similarity {sim!r}; expected one of {SIMILARITIES}")


def triplet_ranking_loss(
    scores: Tensor,
    positive_video: Tensor,
    margin: float,
    hard_negatives: bool = False,
    hard_topk: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bidirectional triplet ranking loss, PRVR §3.2.3 Eq. 5.

    `scores` [n, b]: similarity (cosine) of query j with video k; `positive_video` [n] long:
    y(j). For query j with positive V = y(j):

        max(0, m + S(V, T⁻) − S(V, T_j)) + max(0, m + S(V⁻, T_j) − S(V, T_j))

    with T⁻ a query of another video (never one of V's own queries) and V⁻ ≠ V, averaged
    over the n queries. Random mode: T⁻ and V⁻ uniform among the valid candidates. Hard mode
    (SPEC §3 [decision], MS-SL/GMMFormer practice): V⁻ uniform among the query's `hard_topk`
    highest-scoring other videos, T⁻ the highest-scoring query of another video for column V.
    A term with no valid negative (b == 1, or every query on one video) is 0. Gradients flow
    through both the positive and the negative scores.
    """
    n, b = scores.shape
    if n == 0:
        return scores.sum() * 0.0
    positive_video = positive_video.to(device=scores.device, dtype=torch.long)
    pos = scores.gather(1, positive_video[:, None]).squeeze(1)  # [n]
    pos_onehot = F.one_hot(positive_video, b).bool()  # [n, b]
    # query_scores[j, j'] = scores[j', y(j)]: every query against query j's positive video.
    query_scores = scores.index_select(1, positive_video).t()  # [n, n]
    other_query = positive_video[None, :] != positive_video[:, None]  # [n, n]: y(j') != y(j)

    if hard_negatives:
        if hard_topk is None:
            raise ValueError("triplet_ranking_loss: hard_negatives=True needs hard_topk")
        # T⁻: the single hardest query of another video for column y(j).
        hardest = query_scores.detach().masked_fill(~other_query, float("-inf"))  # [n, n]
        neg_query, valid_query = hardest.argmax(dim=1), other_query.any(dim=1)
        # V⁻: uniform among the top-k other videos of the query.
        k = min(hard_topk, b - 1)
        if k > 0:
            ranked = scores.detach().masked_fill(pos_onehot, float("-inf"))  # [n, b]
            topk = ranked.topk(k, dim=1).indices  # [n, k]
            pick = (_rand((n,), scores, generator) * k).long().clamp_(max=k - 1)  # [n]
            neg_video = topk.gather(1, pick[:, None]).squeeze(1)  # [n]
        else:
            neg_video = torch.zeros_like(positive_video)
        valid_video = torch.full_like(pos_onehot[:, 0], k > 0)  # [n] bool
    else:
        neg_query, valid_query = _uniform_choice(other_query, generator)
        neg_video, valid_video = _uniform_choice(~pos_onehot, generator)

    neg_t = query_scores.gather(1, neg_query[:, None]).squeeze(1)  # [n] S(V, T⁻)
    neg_v = scores.gather(1, neg_video[:, None]).squeeze(1)  # [n] S(V⁻, T_j)
    zero = pos.new_zeros(())
    term_t = torch.where(valid_query, F.relu(margin + neg_t - pos), zero)
    term_v = torch.where(valid_video, F.relu(margin + neg_v - pos), zero)
    return (term_t + term_v).mean()


def multi_positive_infonce(scores: Tensor, positive_video: Tensor, average: str) -> Tensor:
    """Bidirectional InfoNCE with several positive queries per video, PRVR §3.2.3 Eq. 6.

    `scores` [n, b] are already divided by τ; `positive_video` [n] long is y(j).

        L = mean_j [logsumexp_k s_jk − s_{j,y(j)}] + v2t

    `average="video"` (SPEC §3 [decision], MS-SL's `clip_nce`): v2t = mean over the videos
    with ≥ 1 query in the batch of [logsumexp_j s_jk − logsumexp_{j: y(j)=k} s_jk], i.e. all
    of a video's queries are positives. `average="pair"` (the printed Eq. 6): v2t = mean over
    the n queries of [logsumexp_{j'} s_{j',y(j)} − s_{j,y(j)}], i.e. each pair is its own
    positive and the video's other queries count in the denominator.
    """
    if average not in NCE_AVERAGES:
        raise ValueError(f"unknown nce average {average!r}; expected one of {NCE_AVERAGES}")
    n, b = scores.shape
    if n == 0:
        return scores.sum() * 0.0
    positive_video = positive_video.to(device=scores.device, dtype=torch.long)
    pos = scores.gather(1, positive_video[:, None]).squeeze(1)  # [n]
    t2v = (torch.logsumexp(scores, dim=1) - pos).mean()
    col_lse = torch.logsumexp(scores, dim=0)  # [b]
    if average == "pair":
        return t2v + (col_lse.gather(0, positive_video) - pos).mean()
    pos_mask = F.one_hot(positive_video, b).bool()  # [n, b]
    has_query = pos_mask.any(dim=0)  # [b]
    # Empty columns get finite dummy values (no -inf logsumexp, no NaN gradient) and weight 0.
    pos_only = scores.masked_fill(~pos_mask, float("-inf"))
    pos_only = torch.where(has_query[None, :], pos_only, torch.zeros_like(scores))
    pos_lse = torch.logsumexp(pos_only, dim=0)  # [b]
    weight = has_query.to(scores.dtype)
    v2t = ((col_lse - pos_lse) * weight).sum() / weight.sum().clamp(min=1.0)
    return t2v + v2t
