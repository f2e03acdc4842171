"""PREM losses (paper 000, SPEC §4–§5), pure functions on tensors.

- `strong_weak_masks`: the clip masks of the strong (inside the GT moment) and weak (outside
  it) relevant content, SPEC §4.
- `relevant_content_nce`: PREM Eq. 7–8, `L_q2v = L_S + β L_W`.
- `video_to_query_nce`: the video-to-query term `L_v2q` (strong positive only).
- `retriever_loss`: `L_q2v + L_v2q` with every term for logging.
- `shared_norm_ce`: PREM Eq. 11, `L_loc = L_st + L_ed` with Shared-Norm over K videos.
- `adversarial_bce`: the relevant-content adversarial classification loss (Eq. 12's `L_adv`).
- `localizer_loss`: Eq. 12, `L = L_loc + λ L_adv`.

Scores are Eq. 6 cosine scores (in [-1, 1]); the temperature τ = 0.01 (SPEC §4) turns them
into logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def strong_weak_masks(spans: Tensor, clip_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Clips of the strong and weak relevant content (SPEC §4, PREM Fig. 3).

    Args:
        spans: `[B, 2]` GT moment as inclusive clip indices `(start, end)`.
        clip_mask: `[B, L]` True at real clips of the GT video.

    Returns:
        strong `[B, L]`: valid clips inside the moment; weak `[B, L]`: valid clips outside it;
        weak_valid `[B]`: False when the moment covers the whole video (no weak positive, the
        query's weak term is dropped).
    """
    clip_mask = clip_mask.bool()
    idx = torch.arange(clip_mask.shape[1], device=clip_mask.device)[None]  # [1, L]
    inside = (idx >= spans[:, :1]) & (idx <= spans[:, 1:2])  # [B, L]
    strong = inside & clip_mask
    weak = ~inside & clip_mask
    return strong, weak, weak.any(dim=1)


def in_batch_negative_mask(query_video_ids: Tensor, video_ids: Tensor) -> Tensor:
    """`[B, V]` True where video v is a usable negative for query b, i.e. not its own video.

    Comparing ids (not positions) masks a video that two queries of the batch share out of both
    queries' negatives, and works after gathering videos across DDP ranks (SPEC §4).
    """
    return query_video_ids[:, None] != video_ids[None, :]


def _info_nce(positive: Tensor, negatives: Tensor, negative_mask: Tensor, tau: float) -> Tensor:
    """Per-row `−log(e^{p/τ} / (e^{p/τ} + Σ_k e^{n_k/τ}))` over unmasked negatives -> `[B]`."""
    neg_logits = (negatives / tau).masked_fill(~negative_mask.bool(), float("-inf"))  # [B, V]
    logits = torch.cat([(positive / tau)[:, None], neg_logits], dim=1)  # [B, 1 + V]
    return torch.logsumexp(logits, dim=1) - positive / tau


def relevant_content_nce(
    strong: Tensor,
    weak: Tensor,
    weak_valid: Tensor,
    negatives: Tensor,
    negative_mask: Tensor,
    tau: float,
    weak_weight: float,
) -> dict[str, Tensor]:
    """PREM §3.3 Eq. 7–8: relevant-content query-to-video contrastive loss.

    Args:
        strong: `[B]` strong positive `s⁺_S`: Eq. 6 restricted to clips inside the GT moment
            (or the full-video Eq. 6 score when strong relevance is ablated).
        weak: `[B]` weak positive `s⁺_W`: Eq. 6 restricted to clips outside the moment.
        weak_valid: `[B]` bool, False where the query has no weak positive (moment covers the
            whole video); those queries are left out of `L_W`.
        negatives: `[B, V]` full-video Eq. 6 scores of every query against the batch videos.
        negative_mask: `[B, V]` True where the video is a usable negative for the query (not
            its own video; see `in_batch_negative_mask`).
        tau: temperature τ (SPEC §4: 0.01).
        weak_weight: β (SPEC §4: 0.5).

    Returns:
        dict(L_S, L_W, L_q2v) scalars: `L_S` averaged over all queries, `L_W` over queries with
        a weak positive (0 when none has one), `L_q2v = L_S + β L_W`.
    """
    loss_s = _info_nce(strong, negatives, negative_mask, tau).mean()
    valid = weak_valid.to(weak.dtype)
    per_query_w = _info_nce(weak, negatives, negative_mask, tau)  # [B]
    loss_w = (per_query_w * valid).sum() / valid.sum().clamp_min(1.0)
    return {"L_S": loss_s, "L_W": loss_w, "L_q2v": loss_s + weak_weight * loss_w}


def video_to_query_nce(
    strong: Tensor,
    scores_query_video: Tensor,
    positive_video: Tensor,
    tau: float,
) -> Tensor:
    """Video-to-query contrastive loss `L_v2q` (PREM §3.3, SPEC §4), strong positive only.

    For query b and its GT video `v = positive_video[b]`, the positive is the query's strong
    score `strong[b]` and the negatives are the full-video Eq. 6 scores of the other batch
    queries against v, `scores_query_video[k, v]`, leaving out every query k whose own video is v
    (queries of the same video are never negatives of each other). A video with several batch
    queries contributes one term per query. Averaged over the B queries.

    Args:
        strong: `[B]` strong positive score of each query with its own video.
        scores_query_video: `[B, V]` full-video Eq. 6 scores of every batch query against every
            batch video (columns are distinct videos; V may include videos gathered across
            ranks).
        positive_video: `[B]` long, column of each query's GT video in `scores_query_video`.
        tau: temperature τ.
    """
    negatives = scores_query_video[:, positive_video].t()  # [B(anchor b), B(other query k)]
    mask = positive_video[None, :] != positive_video[:, None]  # [B, B]
    return _info_nce(strong, negatives, mask, tau).mean()


def retriever_loss(
    strong: Tensor,
    weak: Tensor,
    weak_valid: Tensor,
    scores_query_video: Tensor,
    positive_video: Tensor,
    negative_mask: Tensor | None = None,
    *,
    tau: float,
    weak_weight: float,
    video_to_query: bool,
) -> dict[str, Tensor]:
    """PREM retriever loss `L_q2v + L_v2q` (SPEC §4).

    Args:
        strong, weak, weak_valid: `[B]`, see `relevant_content_nce`.
        scores_query_video: `[B, V]` full-video Eq. 6 scores, query b vs batch video v.
        positive_video: `[B]` long, column of each query's GT video.
        negative_mask: `[B, V]` usable negatives; default: every column but the query's own
            (`positive_video`), correct when the V columns are distinct videos.
        tau, weak_weight: τ and β.
        video_to_query: include `L_v2q` (`model.video_to_query`).

    Returns:
        dict(L_S, L_W, L_q2v, L_v2q, loss) of scalars; `loss` is the one to optimise.
    """
    if negative_mask is None:
        columns = torch.arange(scores_query_video.shape[1], device=scores_query_video.device)
        negative_mask = in_batch_negative_mask(positive_video, columns)
    out = relevant_content_nce(
        strong, weak, weak_valid, scores_query_video, negative_mask, tau, weak_weight
    )
    if video_to_query:
        out["L_v2q"] = video_to_query_nce(strong, scores_query_video, positive_video, tau)
    else:
        out["L_v2q"] = strong.new_zeros(())
    out["loss"] = out["L_q2v"] + out["L_v2q"]
    return out


def _boundary_nll(logits: Tensor, mask: Tensor, target: Tensor, shared: bool) -> Tensor:
    """Per-row NLL of clip `target` of video 0 under a softmax over the unmasked clips of all K
    videos (`shared`) or of video 0 only. logits / mask `[B, K, L]`, target `[B]` -> `[B]`."""
    B, K, L = logits.shape
    mask = mask.bool()
    if not shared:
        mask = mask.clone()
        mask[:, 1:] = False
    flat = logits.masked_fill(~mask, torch.finfo(logits.dtype).min).reshape(B, K * L)
    log_probs = torch.log_softmax(flat, dim=1)  # [B, K*L]; video 0 occupies columns [0, L)
    return -log_probs.gather(1, target.long()[:, None]).squeeze(1)


def shared_norm_ce(
    start_logits: Tensor,
    end_logits: Tensor,
    clip_mask: Tensor,
    gt_start: Tensor,
    gt_end: Tensor,
    shared: bool = True,
) -> Tensor:
    """PREM §3.4 Eq. 11: boundary cross-entropy with Shared-Norm, `L_loc = L_st + L_ed`.

    Args:
        start_logits, end_logits: `[B, K, L]` boundary logits of each query against K videos;
            video 0 of each row is the GT video, videos 1..K-1 the sampled negatives.
        clip_mask: `[B, K, L]` True at real clips.
        gt_start, gt_end: `[B]` GT boundary clips (inclusive) in video 0.
        shared: softmax over the clips of all K videos together (Shared-Norm, default) or over
            video 0's clips only (the ablation; negatives then do not enter this loss).

    Returns:
        scalar `L_st + L_ed`, each averaged over the B queries.
    """
    loss_st = _boundary_nll(start_logits, clip_mask, gt_start, shared)
    loss_ed = _boundary_nll(end_logits, clip_mask, gt_end, shared)
    return loss_st.mean() + loss_ed.mean()


def adversarial_bce(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Relevant-content adversarial classification loss (PREM §3.4, SPEC §5).

    BCE-with-logits averaged over all given spans (positives and negatives alike).
    `logits`, `labels` of any matching shape (e.g. `[P, S]`); `mask` (same shape, optional)
    keeps only True entries (padding spans out). No valid span -> 0.
    """
    labels = labels.to(logits.dtype)
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, labels)
    weights = mask.to(logits.dtype)
    per_span = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_span * weights).sum() / weights.sum().clamp_min(1.0)


def localizer_loss(
    loc_loss: Tensor, adv_loss: Tensor | None, adv_weight: float
) -> dict[str, Tensor]:
    """PREM Eq. 12: `L = L_loc + λ L_adv` (λ = 0.8, SPEC §5). Returns dict(L_loc, L_adv, loss);
    `adv_loss=None` (adversarial training off) counts as 0."""
    adv = loc_loss.new_zeros(()) if adv_loss is None else adv_loss
    return {"L_loc": loc_loss, "L_adv": adv, "loss": loc_loss + adv_weight * adv}
