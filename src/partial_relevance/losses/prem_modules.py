"""ICE, IRM and TCP (PRVR §3.3-§3.5) on PREM's retriever (PREM §3.3), as loss functions.

The PRVR modules attach to any base through the plug-in interface of SPEC §3: sentence
features `q`, moment features `[b, T_m, D]`, frame features, a video feature `v`. On PREM's
retriever the same roles are played, per stream `m ∈ {vis, sub}`, by

- `q` = the modality query `q^m` (Eq. 5), the moments = the encoded clips `H^m` of the
  stream (masked: padding, and clips without a subtitle on the subtitle stream), the
  moment-level score `S_m` = the stream's Eq. 6 term `max_j cos(q^m, h_j^m)`;
- `v` = the mean of the stream's valid encoded clips (`PremRetriever.video_feature`,
  **[decision]**: PREM has no video vector), `m^t` = the query's cosine-best clip in its GT
  video (`PremRetriever.target_clips`);
- TCP's sequence = the stream's clips, shuffled before the positional embeddings
  (`PremRetriever.encode_videos(..., permutation=...)`).

Each module's loss is the PRVR function of `losses.prvr` (`ice_select_pairs` + `ice_loss`,
`irm_neg_loss` + `irm_red_loss`, `tcp_group_labels` + `tcp_loss`), never re-implemented here.
Over the streams: **[decision]** ICE and IRM average their per-stream losses (Eq. 6 averages
the two streams' terms), TCP sums them (PRVR sums TCP over its branches, Eq. 11-12). The total
(`prem_modules_total`) is PREM's retriever loss plus `λ₃ L_ice + λ₄ L_irm + λ₅ L_tcp`, the
weights of PRVR Eq. 13; with every module off it is the retriever loss unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from partial_relevance.losses import prvr  # the PRVR module losses, reused as they are


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


def _masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over the last dim where `mask` is True (the dtype's min where none is)."""
    return x.masked_fill(~mask, torch.finfo(x.dtype).min).amax(-1)


def _mean(values: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(values).mean() if values else like.sum() * 0.0


# ------------------------------------------------------------------------------ ICE (§3.3)


def prem_ice_pairs(
    q: Tensor, clips: Tensor, clip_valid: Tensor, query_video: Tensor, threshold: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """ICE's mining (PRVR Eq. 8) on one PREM stream, under `no_grad`.

    `q` `[B, D]` (the stream's query vectors), `clips` `[V, L, D]` (its encoded clips),
    `clip_valid` `[V, L]`, `query_video` `[B]` (column of each query's GT video). A clip of
    the query's own video, or an invalid clip, never pairs with it.

    Returns (flat clip index `[n_c]` into `clips.reshape(V*L, D)`, query index `[n_c]`,
    the masked cosine matrix `[V*L, B]` mined on).
    """
    V, L, D = clips.shape
    with torch.no_grad():
        flat = clips.reshape(V * L, D)
        cos = _unit(flat) @ _unit(q).T  # [V*L, B]
        clip_video = torch.arange(V, device=q.device).repeat_interleave(L)  # [V*L]
        exclude = (clip_video[:, None] == query_video[None, :]) | ~clip_valid.reshape(-1, 1)
        clip_idx, query_idx = prvr.ice_select_pairs(cos, exclude, threshold)
    return clip_idx, query_idx, cos.masked_fill(exclude, -1.0)


def prem_ice_loss(
    streams: Mapping[str, tuple[Tensor, Tensor, Tensor]],
    query_video: Tensor,
    threshold: float | None = 0.4,
    margin: float = 0.2,
    nce_sim: str = "dot",
    tau: float = 1.0,
    nce_average: str = "video",
    *,
    nce_weight: float,
) -> dict[str, Tensor]:
    """L_ice (PRVR §3.3) on PREM's streams: per stream, `ice_loss` on its mined (clip, query)
    pairs; the mean over the streams.

    `streams`: name -> (`q` `[B, D]`, `clips` `[V, L, D]`, `clip_valid` `[V, L]`).
    Returns `L_ice` and, per stream, `L_ice_<m>` and `n_c_<m>` (pairs mined).
    """
    out: dict[str, Tensor] = {}
    losses = []
    like = next(iter(streams.values()))[0]
    for name, (q, clips, valid) in streams.items():
        clip_idx, query_idx, _ = prem_ice_pairs(q, clips, valid, query_video, threshold)
        flat = clips.reshape(-1, clips.shape[-1])
        loss = prvr.ice_loss(
            flat[clip_idx], q[query_idx], margin, nce_sim, tau, nce_average, nce_weight=nce_weight
        )
        out[f"L_ice_{name}"] = loss
        out[f"n_c_{name}"] = torch.tensor(float(len(query_idx)), device=q.device)
        losses.append(loss)
    out["L_ice"] = _mean(losses, like)
    return out


# ------------------------------------------------------------------------------ IRM (§3.4)


def stream_moment_scores(
    q: Tensor, clips: Tensor, clip_valid: Tensor, nce_sim: str = "dot"
) -> tuple[Tensor, Tensor, Tensor]:
    """The moment-level score `S_m` of one PREM stream for every (query, video): the stream's
    Eq. 6 term, a maximum over the valid clips.

    Returns (cosine `[B, V]`, the `nce_sim` score `[B, V]` (−inf where the video has no valid
    clip, so InfoNCE ignores it), valid `[V]`).
    """
    mask = clip_valid.bool()[None].expand(q.shape[0], -1, -1)  # [B, V, L]
    cos = _masked_max(torch.einsum("bd,vld->bvl", _unit(q), _unit(clips)), mask)
    if nce_sim == "cos":
        nce = cos
    elif nce_sim == "dot":
        nce = _masked_max(torch.einsum("bd,vld->bvl", q, clips), mask)
    else:
        raise ValueError(f"nce_sim must be 'dot' or 'cos', got {nce_sim!r}")
    valid = clip_valid.bool().any(1)  # [V]
    return cos, nce.masked_fill(~valid[None], float("-inf")), valid


def prem_irm_loss(
    streams: Mapping[str, Mapping[str, Tensor]],
    query_video: Tensor,
    margin: float = 0.2,
    nce_sim: str = "dot",
    tau: float = 1.0,
    nce_average: str = "video",
    neg: bool = True,
    red: bool = True,
    *,
    neg_nce_weight: float,
    red_nce_weight: float,
) -> dict[str, Tensor]:
    """L_irm = L_neg + L_red (PRVR §3.4 Eq. 10) on PREM's streams, the mean over streams.

    `streams`: name -> dict with `q` `[B, D]`, `r_v`, `r_q` `[B, D]` (Eq. 9 from the stream's
    `v`, `m^t` and `q`), `target_valid` `[B]` (the GT video has a clip of this stream),
    `moment_cos`, `moment_nce` `[B, V]` (`stream_moment_scores`). Only the queries with
    `target_valid` enter a stream's terms (a video without subtitles has no subtitle `m^t`).
    """
    out: dict[str, Tensor] = {}
    negs, reds = [], []
    like = next(iter(streams.values()))["q"]
    for name, t in streams.items():
        rows = t["target_valid"].bool()
        if not bool(rows.any()):
            continue
        q, r_v, r_q = t["q"][rows], t["r_v"][rows], t["r_q"][rows]
        y = query_video[rows]
        if neg:
            loss = prvr.irm_neg_loss(
                r_v,
                r_q,
                q,
                t["moment_cos"][rows],
                t["moment_nce"][rows],
                y,
                margin,
                nce_sim,
                tau,
                nce_weight=neg_nce_weight,
            )
            out[f"L_neg_{name}"] = loss
            negs.append(loss)
        if red:
            loss = prvr.irm_red_loss(
                r_v, r_q, margin, nce_sim, tau, nce_average, nce_weight=red_nce_weight
            )
            out[f"L_red_{name}"] = loss
            reds.append(loss)
    out["L_neg"] = _mean(negs, like)
    out["L_red"] = _mean(reds, like)
    out["L_irm"] = out["L_neg"] + out["L_red"]
    return out


# ------------------------------------------------------------------------------ TCP (§3.5)


def tcp_stream_labels(valid: Tensor, clip_lengths: Tensor, groups: int = 8) -> Tensor:
    """TCP's group labels `y_o` of one PREM stream `[V, L]`: `floor(t·g / T)` with `T` the
    video's clip count, −100 where the stream has no valid clip (padding; a clip without a
    subtitle on the subtitle stream)."""
    labels = prvr.tcp_group_labels(clip_lengths, valid.shape[1], groups)  # [V, L]
    return labels.masked_fill(~valid.bool(), prvr.IGNORE_INDEX)


def prem_tcp_loss(
    streams: Mapping[str, tuple[Tensor, Tensor, Tensor, Tensor]],
) -> dict[str, Tensor]:
    """L_tcp (PRVR §3.5 Eq. 11-12) on PREM's streams, summed over the streams.

    `streams`: name -> (`logits_o` `[V, L, g]` on the ordinary encoding, `labels_o` `[V, L]`,
    `logits_s` on the shuffled re-encoding, `labels_s` = `labels_o` gathered by the shuffle
    index). Returns `L_tcp`, `L_tcp_<m>` and `tcp_acc_<m>` (accuracy on shuffled positions).
    """
    out: dict[str, Tensor] = {}
    total = None
    for name, (logits_o, labels_o, logits_s, labels_s) in streams.items():
        loss = prvr.tcp_loss(logits_o, labels_o, logits_s, labels_s)
        valid = labels_s != prvr.IGNORE_INDEX
        hits = (logits_s.argmax(-1) == labels_s) & valid
        out[f"L_tcp_{name}"] = loss
        out[f"tcp_acc_{name}"] = (hits.sum() / valid.sum().clamp(min=1)).detach().float()
        total = loss if total is None else total + loss
    assert total is not None, "prem_tcp_loss needs at least one stream"
    out["L_tcp"] = total
    return out


# ---------------------------------------------------------------------------- the total


def prem_modules_total(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """PREM's retriever loss (`terms["loss"]`) + `λ₃ L_ice + λ₄ L_irm + λ₅ L_tcp` (PRVR
    Eq. 13's weights) over the modules present in `terms` (`weights`: `ice`, `irm`, `tcp`)."""
    total = terms["loss"]
    for module, key in (("ice", "L_ice"), ("irm", "L_irm"), ("tcp", "L_tcp")):
        if key in terms:
            total = total + float(weights[module]) * terms[key]
    return total
