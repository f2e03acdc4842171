"""Span scoring, decoding and NMS for VCMR / SVMR inference (SPEC §6), and the top predicted
spans the localizer's adversarial term uses as negatives (SPEC §5; its positives are computed
by the datamodule, `data.vcmr_localizer.adversarial_span_positives`).

Clip spans are inclusive `[i, j]` on the 1.5 s grid (SPEC §1.3): `i <= j` and the span length
`j - i + 1` lies in `[min_len, max_len]` (TVR 1–24, DiDeMo 1–20 clips). A span of a video that was
pooled to fewer clips (`scale > 1`) covers `[i·1.5·scale, (j+1)·1.5·scale]` seconds, clipped to
the video's duration.

Decoding of one query: the best `top_n = 200` spans over all its k candidate videos (one
`topk` on the flattened `[k, L, L]` score tensor), greedy NMS at IoU 0.7 within each video
(a span is dropped when its IoU with a kept, better span of the same video *exceeds* the
threshold, as TVRetrieval's `temporal_non_maximum_suppression`), then the best `out_n = 100`.
The batched variant runs the `topk` and the NMS for many queries at once on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from partial_relevance.data.preprocess import CLIP_SECONDS
from partial_relevance.metrics.retrieval import finite_scores
from partial_relevance.metrics.temporal import temporal_iou

__all__ = [
    "decode_top_spans",
    "decode_top_spans_batch",
    "enumerate_spans",
    "nms_spans",
    "span_scores",
    "span_validity_mask",
    "top_span_indices",
    "top_spans",
]


def span_validity_mask(
    num_clips: int, min_len: int, max_len: int, device: torch.device | str | None = None
) -> Tensor:
    """`[L, L]` bool, True at `[i, j]` when `i <= j` and `min_len <= j - i + 1 <= max_len`.

    An upper-triangular band: the spans SPEC §6 scores.
    """
    if min_len < 1 or max_len < min_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    idx = torch.arange(num_clips, device=device)
    length = idx[None, :] - idx[:, None] + 1  # [L, L], j - i + 1
    return (length >= min_len) & (length <= max_len)


def enumerate_spans(num_clips: int, min_len: int, max_len: int) -> np.ndarray:
    """All inclusive clip spans `[S, 2]` (int64 `(i, j)`, sorted by i then j) of a video of
    `num_clips` clips within the length window."""
    mask = span_validity_mask(num_clips, min_len, max_len)
    return mask.nonzero().numpy().astype(np.int64).reshape(-1, 2)


def span_scores(
    log_p_st: Tensor,
    log_p_ed: Tensor,
    clip_mask: Tensor | None,
    min_len: int,
    max_len: int,
    video_scores: Tensor | None = None,
    tau: float = 0.01,
) -> Tensor:
    """Eq. 13 span scores: `s(q, V)/τ + log P_st(i) + log P_ed(j)` on valid spans, −inf elsewhere.

    Args:
        log_p_st, log_p_ed: `[..., L]` start / end log-probabilities (e.g. `[k, L]` for the k
            videos of one query, or `[Q, k, L]`).
        clip_mask: `[..., L]` 1 on a video's real clips, 0 on padding; None = all real. A span
            is valid only when both ends are real clips.
        min_len, max_len: the span length window in clips (SPEC §6).
        video_scores: `[...]` retrieval scores `s(q, V)`; None (SVMR) leaves the term out.
        tau: the temperature of the retrieval term.

    Returns:
        `[..., L, L]` scores, entry `[..., i, j]` for the span `[i, j]`.
    """
    L = log_p_st.shape[-1]
    scores = log_p_st.unsqueeze(-1) + log_p_ed.unsqueeze(-2)  # [..., L, L]
    if video_scores is not None:
        scores = scores + (video_scores / tau)[..., None, None]
    valid = span_validity_mask(L, min_len, max_len, device=scores.device)  # [L, L]
    if clip_mask is not None:
        real = clip_mask.bool()
        valid = valid & real.unsqueeze(-1) & real.unsqueeze(-2)  # [..., L, L]
    return scores.masked_fill(~valid, float("-inf"))


@torch.no_grad()
def top_spans(
    log_p_st: Tensor,
    log_p_ed: Tensor,
    clip_mask: Tensor | None,
    min_len: int,
    max_len: int,
    top_n: int = 5,
) -> tuple[Tensor, Tensor]:
    """The `top_n` best spans of each video by `log P_st(i) + log P_ed(j)` (no grad).

    Args:
        log_p_st, log_p_ed, clip_mask: `[B, L]` per video.

    Returns:
        `(spans [B, top_n, 2] long (i, j), valid [B, top_n] bool)`; `valid` is False where a
        video has fewer than `top_n` spans in the length window (those spans are `[0, 0]`).
        Normalising start/end per video would shift all of a video's span scores by one
        constant, so the ranking within a video is the same under either normalisation.
    """
    B, L = log_p_st.shape
    scores = span_scores(log_p_st, log_p_ed, clip_mask, min_len, max_len).reshape(B, L * L)
    n = min(top_n, L * L)
    # A non-finite score is the worst (never listed ahead of a real one) and marks no span.
    values, flat = finite_scores(scores).topk(n, dim=1)  # [B, n], best first
    spans = torch.stack([flat // L, flat % L], dim=-1)  # [B, n, 2]
    valid = torch.isfinite(values)
    if n < top_n:  # a grid with fewer than top_n cells at all
        spans = torch.cat([spans, spans.new_zeros(B, top_n - n, 2)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(B, top_n - n)], dim=1)
    spans = spans.masked_fill(~valid[..., None], 0)
    return spans, valid


@torch.no_grad()
def top_span_indices(
    log_p_st: Tensor,
    log_p_ed: Tensor,
    clip_mask: Tensor | None,
    min_len: int,
    max_len: int,
    top_n: int = 5,
) -> Tensor:
    """`[B, top_n, 2]` long: each video's current top-`top_n` spans `(i, j)` (SPEC §5 negatives).

    As `top_spans`, but a video with fewer valid spans than `top_n` repeats its best span in
    the missing slots, so the result is always a valid span of the video (when it has one).
    """
    spans, valid = top_spans(log_p_st, log_p_ed, clip_mask, min_len, max_len, top_n)
    best = spans[:, :1].expand_as(spans)  # [B, top_n, 2]
    return torch.where(valid[..., None], spans, best)


def nms_spans(spans: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.7) -> np.ndarray:
    """Greedy temporal NMS of the spans of one video; returns the kept indices, best first.

    Args:
        spans: `[n, 2]` `(st, ed)` seconds.
        scores: `[n]` higher is better.
        iou_threshold: a span is dropped when its `temporal_iou` with a kept, better span
            exceeds this (strict `>`, as TVRetrieval's NMS).

    Returns:
        `[m]` int64 indices into `spans`, by decreasing score (ties keep the input order).
    """
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")  # [n]
    iou = temporal_iou(spans[order][:, None, :], spans[order][None, :, :])  # [n, n]
    keep = np.ones(len(order), dtype=bool)
    for p in range(1, len(order)):
        keep[p] = not np.any(keep[:p] & (iou[:p, p] > iou_threshold))
    return order[keep]


def _overlap_conflicts(st: Tensor, ed: Tensor, iou_threshold: float) -> Tensor:
    """`[..., n, n]` bool: temporal IoU (hull denominator, SPEC §7) of spans `st, ed [..., n]`
    exceeds the threshold. A zero hull gives 0/0 = NaN, and NaN > θ is False: IoU 0 there."""
    inter = torch.minimum(ed[..., :, None], ed[..., None, :])
    inter -= torch.maximum(st[..., :, None], st[..., None, :])
    inter.clamp_(min=0)
    hull = torch.maximum(ed[..., :, None], ed[..., None, :])
    hull -= torch.minimum(st[..., :, None], st[..., None, :])
    return inter.div_(hull) > iou_threshold


def _greedy_nms_keep(
    st: Tensor, ed: Tensor, group: Tensor, valid: Tensor, iou_threshold: float
) -> Tensor:
    """Greedy NMS within groups (videos) for candidates already sorted best first.

    `st, ed, group, valid: [Q, n]`; returns keep `[Q, n]` bool. Candidate p is kept iff it is
    valid and no *kept* candidate before it in the same group overlaps it by IoU > threshold:
    the set the one-video-at-a-time greedy loop keeps. That set is the unique fixed point of
    `keep = valid & ~(keep @ conflict)` with `conflict` strictly upper-triangular; iterating the
    map from `keep = valid` fixes one more leading position each round, so it converges in at
    most n rounds (in practice a handful, each one batched matmul over the Q queries).
    """
    n = st.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=st.device).triu(diagonal=1)  # q < p
    conflict = (
        (group[:, :, None] == group[:, None, :])
        & _overlap_conflicts(st, ed, iou_threshold)
        & earlier
    ).float()  # [Q, n (q, the better), n (p)]
    keep = valid.clone()
    for _ in range(n + 1):
        suppressed = torch.bmm(keep.float().unsqueeze(1), conflict).squeeze(1) > 0  # [Q, n]
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _on_device(x: object, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A tensor, array or nested list as a tensor of `dtype` on `device`."""
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


@torch.no_grad()
def decode_top_spans_batch(
    scores: Tensor,
    video_indices: Tensor | np.ndarray | Sequence[Sequence[int]],
    durations: Tensor | np.ndarray | Sequence[Sequence[float]],
    scales: Tensor | np.ndarray | Sequence[Sequence[float]] | None = None,
    top_n: int = 200,
    nms_iou: float | None = 0.7,
    out_n: int = 100,
    clip_seconds: float = CLIP_SECONDS,
) -> list[np.ndarray]:
    """Decode the moment predictions of Q queries at once (SPEC §6 steps 3–5).

    Args:
        scores: `[Q, k, L, L]` span scores (`span_scores`), −inf on invalid spans.
        video_indices: `[Q, k]` the video index of each of a query's k candidate videos.
        durations: `[Q, k]` their durations in seconds (decoded spans are clipped to them).
        scales: `[Q, k]` seconds-per-clip multipliers of pooled videos (SPEC §1.3); None = 1.
        top_n: spans kept before NMS (200).
        nms_iou: NMS IoU threshold within each video (0.7); None skips NMS.
        out_n: predictions returned per query (100).
        clip_seconds: the clip grid (1.5 s).

    Returns:
        Q arrays `[m, 4]` float64 `(video_idx, st, ed, score)` sorted by score, `m <= out_n`
        (fewer when a query has fewer valid spans).
    """
    Q, k, L, _ = scores.shape
    device = scores.device
    video_indices = _on_device(video_indices, device, torch.long).reshape(Q, k)
    durations = _on_device(durations, device, torch.float64).reshape(Q, k)
    if scales is None:
        scales = torch.ones(Q, k, device=device, dtype=torch.float64)
    else:
        scales = _on_device(scales, device, torch.float64).reshape(Q, k)

    n = min(top_n, k * L * L)
    flat_scores = finite_scores(scores.reshape(Q, k * L * L))  # non-finite: the worst
    top_scores, flat = flat_scores.topk(n, dim=1)  # [Q, n], best first
    slot = flat // (L * L)  # [Q, n] which of the k videos
    i = (flat % (L * L)) // L
    j = flat % L
    seconds_per_clip = clip_seconds * scales.gather(1, slot)  # [Q, n]
    duration = durations.gather(1, slot)
    st = torch.minimum(i.double() * seconds_per_clip, duration)
    ed = torch.minimum((j + 1).double() * seconds_per_clip, duration)
    video = video_indices.gather(1, slot)  # [Q, n]
    valid = torch.isfinite(top_scores)
    keep = valid if nms_iou is None else _greedy_nms_keep(st, ed, video, valid, nms_iou)  # [Q, n]

    rows = torch.stack([video.double(), st, ed, top_scores.double()], dim=-1).cpu().numpy()
    keep = keep.cpu().numpy()
    return [rows[q][keep[q]][:out_n] for q in range(Q)]  # kept rows stay sorted by score


def decode_top_spans(
    scores: Tensor,
    video_indices: Tensor | np.ndarray | Sequence[int],
    durations: Tensor | np.ndarray | Sequence[float],
    scales: Tensor | np.ndarray | Sequence[float] | None = None,
    top_n: int = 200,
    nms_iou: float | None = 0.7,
    out_n: int = 100,
    clip_seconds: float = CLIP_SECONDS,
) -> np.ndarray:
    """Decode one query: `scores [k, L, L]` over its k videos → `[m <= out_n, 4]` float64
    `(video_idx, st_sec, ed_sec, score)` sorted by score (see `decode_top_spans_batch`).

    `video_indices, durations, scales: [k]`; for SVMR pass the GT video alone (`k = 1`).
    """
    k = scores.shape[0]
    device = scores.device
    return decode_top_spans_batch(
        scores.unsqueeze(0),
        _on_device(video_indices, device, torch.long).reshape(1, k),
        _on_device(durations, device, torch.float64).reshape(1, k),
        None if scales is None else _on_device(scales, device, torch.float64).reshape(1, k),
        top_n=top_n,
        nms_iou=nms_iou,
        out_n=out_n,
        clip_seconds=clip_seconds,
    )[0]
