"""The PRVR losses (SPEC §3): the base loss (Eq. 7), ICE (§3.3), IRM (§3.4), TCP (§3.5) and
their total (Eq. 13).

One function per paper equation, pure functions on tensors:

- `base_loss` is Eq. 7, `total_loss` Eq. 13; `ice_terms`, `irm_terms`, `tcp_terms` assemble
  each module's logged terms from tensors the model produced. Their settings come in the
  dataclasses `PrvrLossConfig`, `IceConfig`, `IrmConfig`, `TcpConfig`, whose values live
  once, in `conf/model/prvr.yaml`.

- `ice_select_pairs` (Eq. 8) mines mutual-argmax moment/query pairs across videos;
  `ice_loss` aligns them with Eq. 5 + `nce_weight` · Eq. 6.
- `irm_neg_loss` (`L_neg`) uses the redundant features r_v, r_q of Eq. 9 as extra negative
  moments; `irm_red_loss` (`L_red`) aligns r_v with r_q; L_irm = L_neg + L_red (Eq. 10).
  Each is triplet + `nce_weight` · InfoNCE (λ₂ of Eq. 7, SPEC §3). `ice_loss` and
  `irm_red_loss` are one function, `diagonal_alignment_loss`.
- `tcp_group_labels`, `tcp_shuffle` build the temporal-coherence task; `tcp_loss` is
  Eq. 11-12.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from partial_relevance.losses.contrastive import (
    _rand,
    multi_positive_infonce,
    pair_similarity,
    rowwise_similarity,
    triplet_ranking_loss,
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PrvrLossConfig:
    """`model.loss`: the similarity rule and weights of Eq. 5-7 (SPEC §3)."""

    margin: float  # m of Eq. 5
    nce_sim: str  # dot | cos
    tau: float  # τ of Eq. 6
    nce_average: str  # video | pair
    lambda_video_nce: float  # λ₁ of Eq. 7
    lambda_moment_nce: float  # λ₂ of Eq. 7
    hard_negative_start_epoch: int
    hard_topk: int


@dataclass(frozen=True)
class IceConfig:
    """`model.ice` (PRVR §3.3): switch, β_t (None keeps every mutual pair), λ₃, λ₂ of L_ice."""

    enabled: bool
    threshold: float | None
    weight: float
    nce_weight: float


@dataclass(frozen=True)
class IrmConfig:
    """`model.irm` (PRVR §3.4): switches, shared FC, λ₄, the InfoNCE weights of L_neg/L_red."""

    enabled: bool
    neg: bool
    red: bool
    shared_fc: bool
    weight: float
    neg_nce_weight: float
    red_nce_weight: float


@dataclass(frozen=True)
class TcpConfig:
    """`model.tcp` (PRVR §3.5): branch switches, g, β_r, λ₅."""

    enabled: bool
    video: bool
    moment: bool
    groups: int
    ratio: float
    weight: float


# --------------------------------------------------------------------------- Eq. 7 / Eq. 13


def base_loss(
    video_cos: Tensor,
    moment_cos: Tensor,
    video_nce: Tensor,
    moment_nce: Tensor,
    positive_video: Tensor,
    cfg: PrvrLossConfig,
    hard_negatives: bool,
) -> dict[str, Tensor]:
    """L_base = L_v^trip + L_m^trip + λ₁ L_v^nce + λ₂ L_m^nce, PRVR Eq. 7.

    `video_cos`, `moment_cos` [n, b]: S_v, S_m on cosine (the triplet rule); `video_nce`,
    `moment_nce` [n, b]: the same with `cfg.nce_sim`, not yet divided by τ; `positive_video`
    [n]: y(j). Returns every term and `L_base`.
    """
    y, tau = positive_video, cfg.tau
    terms = {
        "L_v_trip": triplet_ranking_loss(video_cos, y, cfg.margin, hard_negatives, cfg.hard_topk),
        "L_m_trip": triplet_ranking_loss(moment_cos, y, cfg.margin, hard_negatives, cfg.hard_topk),
        "L_v_nce": multi_positive_infonce(video_nce / tau, y, cfg.nce_average),
        "L_m_nce": multi_positive_infonce(moment_nce / tau, y, cfg.nce_average),
    }
    terms["L_base"] = (
        terms["L_v_trip"]
        + terms["L_m_trip"]
        + cfg.lambda_video_nce * terms["L_v_nce"]
        + cfg.lambda_moment_nce * terms["L_m_nce"]
    )
    return terms


def total_loss(terms: dict[str, Tensor], ice: IceConfig, irm: IrmConfig, tcp: TcpConfig) -> Tensor:
    """L = L_base + λ₃ L_ice + λ₄ L_irm + λ₅ L_tcp, PRVR Eq. 13 (enabled modules only)."""
    total = terms["L_base"]
    if ice.enabled:
        total = total + ice.weight * terms["L_ice"]
    if irm.enabled:
        total = total + irm.weight * terms["L_irm"]
    if tcp.enabled:
        total = total + tcp.weight * terms["L_tcp"]
    return total


# --------------------------------------------------------------------------- ICE (§3.3)


def ice_select_pairs(
    moment_query_cos: Tensor, same_video: Tensor, threshold: float | None
) -> tuple[Tensor, Tensor]:
    """Mine correlated moment/query pairs of different videos, PRVR §3.3 Eq. 8.

    `moment_query_cos` [n_m, n]: cosine of every batch moment with every query (the caller
    computes it under `no_grad`); `same_video` [n_m, n] bool: True where moment i belongs to
    query j's own video, whose similarity is set to −1 (the paper mines *unpaired* pairs).
    A pair (i, j) is kept when j = argmax_j' S_ij' and i = argmax_i' S_i'j (mutual argmax,
    ties to the lowest index as `torch.argmax` resolves them) and S_ij > `threshold` (β_t;
    `None` keeps every mutual pair). A pair on the query's own video is never kept.

    Returns (moment_idx [n_c], query_idx [n_c]) long, sorted by query index.
    """
    n_m, n = moment_query_cos.shape
    device = moment_query_cos.device
    if n_m == 0 or n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    same_video = same_video.to(device=device, dtype=torch.bool)
    S = moment_query_cos.detach().masked_fill(same_video, -1.0)  # [n_m, n]
    # The argmaxes on an exact fp32 copy of a bf16/fp16 S: the same values, so the same
    # indices and ties, and CPU torch's argmax over bf16 takes 4x fp32's time ([4096, 640]).
    widened = S.float() if S.dtype in (torch.bfloat16, torch.float16) else S
    best_query = widened.argmax(dim=1)  # [n_m]  ĵ for every moment
    best_moment = widened.argmax(dim=0)  # [n]    î for every query
    del widened
    queries = torch.arange(n, device=device)  # [n]
    keep = best_query[best_moment] == queries  # [n] mutual argmax
    keep &= ~same_video[best_moment, queries]
    if threshold is not None:
        keep &= S[best_moment, queries] > threshold
    return best_moment[keep], queries[keep]


def diagonal_alignment_loss(
    columns: Tensor,
    rows: Tensor,
    margin: float,
    nce_sim: str,
    tau: float,
    nce_average: str,
    generator: torch.Generator | None = None,
    *,
    nce_weight: float,
) -> Tensor:
    """Eq. 5 + `nce_weight` · Eq. 6 on n aligned pairs as a mini-batch: L_ice and L_red.

    `columns`, `rows` [n, D]: pair i is (rows[i], columns[i]), the positive on the diagonal
    and the other pairs as negatives; rows play the query side. Triplet on cosine with random
    negatives, InfoNCE with `nce_sim` / τ (SPEC §3). SPEC §3 [decision, revised]: `nce_weight`
    is Eq. 7's λ₂ (0.04; 1 = the earlier unweighted reading). 0 when n < 2.
    """
    n = rows.shape[0]
    if n < 2:
        return (columns.sum() + rows.sum()) * 0.0
    diagonal = torch.arange(n, device=rows.device)  # [n]
    trip = triplet_ranking_loss(
        pair_similarity(rows, columns, "cos"), diagonal, margin=margin, generator=generator
    )
    nce = multi_positive_infonce(
        pair_similarity(rows, columns, nce_sim) / tau, diagonal, average=nce_average
    )
    return trip + nce_weight * nce


# L_ice, PRVR §3.3: ice_loss(moments [n_c, D], queries [n_c, D], ...) aligns the n_c mined
# pairs (moments[i], queries[i]), queries as rows; λ₂ = `model.ice.nce_weight`.
ice_loss = diagonal_alignment_loss


def ice_terms(
    clips: Tensor, queries: Tensor, positive_video: Tensor, cfg: PrvrLossConfig, ice: IceConfig
) -> dict[str, Tensor]:
    """ICE (PRVR §3.3): mine mutual-argmax moment/query pairs of other videos above β_t and
    align them (`ice_loss`).

    `clips` [b, T_m, D] encoded moments, `queries` [n, D], `positive_video` [n] y(j). Returns
    `L_ice`, `n_c` (pairs mined), and, detached, `ice_similarity` [b·T_m, n] (the masked
    cosine the mining ran on) and `ice_pairs` [n_c, 2] (flat moment index, query index).
    """
    b, num_clips, dim = clips.shape
    flat = clips.reshape(b * num_clips, dim)  # [n_m, D]
    clip_video = torch.arange(b, device=clips.device).repeat_interleave(num_clips)  # [n_m]
    with torch.no_grad():
        cos = F.normalize(flat, dim=-1, eps=1e-6) @ F.normalize(queries, dim=-1, eps=1e-6).T
        same_video = clip_video[:, None] == positive_video[None, :]  # [n_m, n]
        moment_idx, query_idx = ice_select_pairs(cos, same_video, ice.threshold)
    loss = ice_loss(
        flat[moment_idx],
        queries[query_idx],
        cfg.margin,
        cfg.nce_sim,
        cfg.tau,
        cfg.nce_average,
        nce_weight=ice.nce_weight,
    )
    return {
        "L_ice": loss,
        "n_c": torch.tensor(float(len(query_idx)), device=queries.device),
        "ice_similarity": cos.masked_fill(same_video, -1.0),
        "ice_pairs": torch.stack([moment_idx, query_idx], dim=1),
    }


# --------------------------------------------------------------------------- IRM (§3.4)


def irm_neg_loss(
    r_v: Tensor,
    r_q: Tensor,
    queries: Tensor,
    moment_cos: Tensor,
    moment_nce: Tensor,
    positive_video: Tensor,
    margin: float,
    nce_sim: str,
    tau: float,
    *,
    nce_weight: float,
) -> Tensor:
    """L_neg, PRVR §3.4: the redundant features as extra negative moments for their query.

    `r_v`, `r_q`, `queries` [n, D] (row j belongs to pair j); `moment_cos` [n, b]: S_m of
    every query with every batch video (max over moments of the cosine, Eq. 4);
    `moment_nce` [n, b]: the same with the `nce_sim` rule, not yet divided by τ;
    `positive_video` [n]: y(j).

    Triplet: mean_j Σ_{r ∈ {r_v[j], r_q[j]}} max(0, m + cos(r, q_j) − S_m(V_{y(j)}, q_j)).
    InfoNCE: per query the row [S_m(V_{y(j)}, q_j); S_m(V_k, q_j), k ≠ y(j);
    s(r_v[j], q_j); s(r_q[j], q_j)] / τ, cross-entropy on the positive, mean over j.
    L_neg = triplet + `nce_weight` · InfoNCE; SPEC §3 [decision, revised]: `nce_weight` = λ₂
    of Eq. 7 (0.04, `model.irm.neg_nce_weight`), 1 = the earlier unweighted reading.
    """
    positive_video = positive_video.to(device=moment_cos.device, dtype=torch.long)
    pos_cos = moment_cos.gather(1, positive_video[:, None]).squeeze(1)  # [n]
    trip = (
        F.relu(margin + rowwise_similarity(r_v, queries, "cos") - pos_cos)
        + F.relu(margin + rowwise_similarity(r_q, queries, "cos") - pos_cos)
    ).mean()
    extra = torch.stack(
        [rowwise_similarity(r_v, queries, nce_sim), rowwise_similarity(r_q, queries, nce_sim)],
        dim=1,
    )  # [n, 2]
    logits = torch.cat([moment_nce, extra], dim=1) / tau  # [n, b + 2]; positive at y(j)
    nce = F.cross_entropy(logits, positive_video)
    return trip + nce_weight * nce


# L_red, PRVR §3.4: irm_red_loss(r_v [n, D], r_q [n, D], ...) aligns the video-view and
# query-view redundant features, pair i = (r_q[i], r_v[i]), r_q as rows (the query side);
# every pair is its own "video" (several pairs of one video are still negatives of each
# other); λ₂ = `model.irm.red_nce_weight`.
irm_red_loss = diagonal_alignment_loss


def irm_terms(*neg_inputs: Tensor, cfg: PrvrLossConfig, irm: IrmConfig) -> dict[str, Tensor]:
    """IRM (PRVR §3.4, Eq. 10): `L_neg`, `L_red` (each switched by `irm.neg` / `irm.red`) and
    `L_irm = L_neg + L_red`. `neg_inputs` are `irm_neg_loss`'s tensors: the redundant features
    r_v, r_q [n, D] of Eq. 9, the queries, the moment scores and the positive videos."""
    r_v, r_q, queries = neg_inputs[:3]
    zero = queries.sum() * 0
    rule = (cfg.margin, cfg.nce_sim, cfg.tau)  # m of Eq. 5, s(·,·) and τ of Eq. 6
    neg, red = zero, zero
    if irm.neg:
        neg = irm_neg_loss(*neg_inputs, *rule, nce_weight=irm.neg_nce_weight)
    if irm.red:
        red = irm_red_loss(r_v, r_q, *rule, cfg.nce_average, nce_weight=irm.red_nce_weight)
    return {"L_neg": neg, "L_red": red, "L_irm": neg + red}


# --------------------------------------------------------------------------- TCP (§3.5)


def tcp_group_labels(lengths: Tensor, max_len: int, groups: int) -> Tensor:
    """Temporal group labels y_o, PRVR §3.5: y_o[t] = floor(t·g / T), padding −100.

    `lengths` [b]: each sequence's unpadded length T -> [b, max_len] long.
    """
    lengths = lengths.to(torch.long)
    t = torch.arange(max_len, device=lengths.device)[None, :]  # [1, max_len]
    T = lengths[:, None]  # [b, 1]
    labels = torch.div(t * groups, T.clamp(min=1), rounding_mode="floor")  # [b, max_len]
    return labels.masked_fill(t >= T, IGNORE_INDEX)


def tcp_shuffle(
    x: Tensor, lengths: Tensor, ratio: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Shuffle round(β_r·T) valid positions of each sequence among themselves, PRVR §3.5.

    `x` [b, T, D] (projected features, before positional embeddings); `lengths` [b]. Per row,
    k = floor(β_r·T_row + 0.5) positions (half rounds up) are drawn at random and permuted by
    a cyclic shift of their random order, so with k ≥ 2 every chosen position receives
    another position's content (a derangement, SPEC §3 [decision]); k ≤ 1 leaves the row
    unchanged. Vectorised over rows.

    Returns (shuffled [b, T, D], index [b, T] long) with shuffled[b, t] = x[b, index[b, t]];
    index is the identity at untouched and padded positions, so y_s = y_o.gather(1, index).
    """
    b, T, D = x.shape
    device = x.device
    lengths = lengths.to(device=device, dtype=torch.long).clamp(max=T)
    pos = torch.arange(T, device=device)  # [T]
    # Random order of each row's valid positions first, padding last.
    noise = _rand((b, T), x, generator).masked_fill(pos[None, :] >= lengths[:, None], 2.0)
    order = noise.argsort(dim=1)  # [b, T]: order[r, a] = a-th position in random order
    k = torch.floor(lengths.double() * ratio + 0.5).long().clamp(min=0)  # [b]
    k = torch.minimum(k, lengths)[:, None]  # [b, 1]
    rank = pos[None, :].expand(b, T)  # [b, T]: a
    chosen = rank < k
    nxt = torch.where(rank + 1 < k, rank + 1, torch.zeros_like(rank))  # (a + 1) mod k
    src = torch.where(chosen, order.gather(1, nxt), order)  # [b, T]
    index = torch.empty_like(order).scatter_(1, order, src)  # index[order[a]] = order[a+1]
    rows = (index + T * torch.arange(b, device=device)[:, None]).reshape(-1)  # [b·T] into x's rows
    shuffled = permute_rows(x.reshape(b * T, D), rows).view(b, T, D)  # [b, T, D]
    return shuffled, index


class _PermuteRows(torch.autograd.Function):
    """y = x[permutation] over the rows of x [N, D]; the gradient is the inverse permutation
    of y's (each row of x lands in exactly one row of y)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, permutation: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, permutation)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def permute_rows(x: Tensor, permutation: Tensor) -> Tensor:
    """x[permutation] for x [N, D] and a permutation [N] of 0..N-1 -> [N, D]; forward and
    backward one `index_select` each, the same numbers as `gather` with an expanded [b, T, D]
    index and its `scatter_add` backward, which CPU torch runs 3-5x slower (`tcp_shuffle`
    forward + backward on [128, 128, 384], 2-core EPYC: fp32 24 -> 9 ms, bf16 27 -> 5 ms)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x.index_select(0, permutation)
    positions = torch.arange(len(permutation), device=permutation.device)
    inverse = torch.empty_like(permutation).scatter_(0, permutation, positions)
    return _PermuteRows.apply(x, permutation, inverse)


def tcp_loss(
    logits_original: Tensor,
    labels_original: Tensor,
    logits_shuffled: Tensor,
    labels_shuffled: Tensor,
) -> Tensor:
    """L_tcp = CE(p_o, y_o) + CE(p_s, y_s), PRVR §3.5 Eq. 11-12.

    logits [b, T, g], labels [b, T] long with −100 at padding; each CE is averaged over the
    valid positions (0 when there are none, without a host sync).
    """
    return _masked_ce(logits_original, labels_original) + _masked_ce(
        logits_shuffled, labels_shuffled
    )


def tcp_terms(branches: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]) -> dict[str, Tensor]:
    """TCP (PRVR §3.5): per branch `L_tcp_<name>` (Eq. 11-12) and the order-prediction
    accuracy `tcp_acc_<name>` on the shuffled sequence's valid positions; `L_tcp` their sum.

    `branches[name]` = (p_o logits [b, T, g], y_o [b, T], p_s logits [b, T, g], y_s [b, T]).
    """
    out: dict[str, Tensor] = {}
    total: Tensor | None = None
    for name, (logits_o, labels_o, logits_s, labels_s) in branches.items():
        loss = tcp_loss(logits_o, labels_o, logits_s, labels_s)
        valid = labels_s != IGNORE_INDEX
        accuracy = (logits_s.argmax(-1) == labels_s)[valid].float().mean()
        out[f"L_tcp_{name}"] = loss
        out[f"tcp_acc_{name}"] = accuracy.detach()
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("model.tcp: enable at least one of `video` and `moment`")
    out["L_tcp"] = total
    return out


def _masked_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over positions whose label is not −100: [b, T, g], [b, T]."""
    labels = labels.reshape(-1)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # [b*T], 0 at ignored positions
    valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return ce.sum() / valid
