"""PREM multi-modal collaborative video retriever (PREM §3.3, SPEC §4).

Query side: FeatureProjection -> learned positions -> one TransformerLayer -> modality-specific
pooling (Eq. 5) -> `q^vis`, `q^sub`. Video side: the visual and subtitle clip streams, each
projected, given positions and a learned modality embedding, go through ONE multi-modal
TransformerLayer over the concatenated `[2L, D]` sequence and are split back into `H^vis`,
`H^sub`. The video encoding does not depend on the query, so a corpus is encoded once.

Score (Eq. 6): `s(q, V) = ½ (max_j cos(q^vis, h_j^vis) + max_j cos(q^sub, h_j^sub))`, computed
by the pure function `eq6_score`, which the losses (strong / weak positives through `restrict`)
and the inference code share.

`QueryEncoder` and `MultiModalVideoEncoder` are reused, with their own weights, by the moment
localizer (SPEC §5: "own encoders as in §4").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from partial_relevance.models.layers import (
    FeatureProjection,
    ModalityPooling,
    TransformerEncoder,
    l2_normalize,
    masked_max,
)
from partial_relevance.models.prvr import IrmProjection, TcpClassifier

POOLINGS = ("modality", "mean", "max")
EMPTY_SUBTITLE_MODES = ("mask", "zeros")


def _masked_row_max(sim: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Max of `sim` [..., L] over positions where `mask` is True.

    Returns (values [...], valid [...]); `valid` is False where no position is unmasked (the
    value there is the dtype's min and must not be used).
    """
    values, _ = masked_max(sim, mask, dim=-1)
    return values, mask.any(dim=-1)


def _combine_terms(vis: tuple[Tensor, Tensor] | None, sub: tuple[Tensor, Tensor] | None) -> Tensor:
    """Eq. 6 from per-stream (max value, valid) pairs: ½(vis + sub) where both exist, the
    visual term alone where the subtitle term is missing, 0 where nothing is valid."""
    if vis is None and sub is None:
        raise ValueError("eq6_score needs at least one of use_vis / use_sub")
    if vis is None or sub is None:
        term, ok = vis if sub is None else sub
        return torch.where(ok, term, torch.zeros_like(term))
    (vis_term, vis_ok), (sub_term, sub_ok) = vis, sub
    vis_term = torch.where(vis_ok, vis_term, torch.zeros_like(vis_term))
    sub_term = torch.where(sub_ok, sub_term, torch.zeros_like(sub_term))
    # sub_ok implies vis_ok (subtitle clips are a subset of the clips).
    return torch.where(sub_ok, 0.5 * (vis_term + sub_term), vis_term)


def eq6_score(
    q_vis: Tensor,
    q_sub: Tensor,
    h_vis: Tensor,
    h_sub: Tensor,
    clip_mask: Tensor,
    sub_mask: Tensor,
    restrict: Tensor | None = None,
    use_vis: bool = True,
    use_sub: bool = True,
    aligned: bool = False,
) -> Tensor:
    """PREM §3.3 Eq. 6 for every (query, video) pair: `[B, V]`; with `aligned`, query b against
    video b only: `[B]` (the strong / weak positives, without the full `[B, V, L]` matrix).

    Args:
        q_vis, q_sub: query vectors per modality, `[B, D]` (need not be normalised).
        h_vis, h_sub: clip features per modality, `[V, L, D]` (`aligned`: `[B, L, D]`, the
            videos already indexed per query; need not be normalised).
        clip_mask: `[V, L]` (`aligned`: `[B, L]`) True at real clips.
        sub_mask: like `clip_mask`, True at clips whose subtitle counts for the subtitle
            maximum (it is AND-ed with `clip_mask`).
        restrict: optional `[B, V, L]` (`aligned`: `[B, L]`) bool; both maxima only run over
            clips where it is True (strong positives: inside the GT moment; weak: outside it).
        use_vis, use_sub: Table 2 ablations; with one stream off the score is the other
            stream's maximum alone.

    Returns:
        `[B, V]` (`aligned`: `[B]`) scores. A pair with no valid subtitle clip (under
        `restrict`) drops the subtitle term: its score is the visual term alone, not the
        average with 0 (SPEC §4 [decision]). A pair with no valid clip at all for the enabled
        streams scores 0; callers that can produce such pairs (weak positives of a moment
        covering the whole video) mask them.
    """
    clip_mask = clip_mask.bool()
    vis_mask, sub_valid = clip_mask, sub_mask.bool() & clip_mask
    equation = "bd,bld->bl"
    if not aligned:  # every query against every video
        vis_mask = vis_mask[None].expand(q_vis.shape[0], -1, -1)  # [B, V, L]
        sub_valid = sub_valid[None].expand_as(vis_mask)  # [B, V, L]
        equation = "bd,vld->bvl"
    if restrict is not None:
        vis_mask = vis_mask & restrict.bool()
        sub_valid = sub_valid & restrict.bool()
    vis = sub = None
    if use_vis:
        sim = torch.einsum(equation, l2_normalize(q_vis), l2_normalize(h_vis))  # [..., L]
        vis = _masked_row_max(sim, vis_mask)
    if use_sub:
        sim = torch.einsum(equation, l2_normalize(q_sub), l2_normalize(h_sub))  # [..., L]
        sub = _masked_row_max(sim, sub_valid)
    return _combine_terms(vis, sub)


class QueryEncoder(nn.Module):
    """Query encoder of PREM §3.3 / §3.4: projection, positions, one TransformerLayer, pooling.

    `pooling="modality"` is Eq. 5 (two heads, `q^vis` and `q^sub`); `mean` / `max` are the
    Table 3 alternatives and give one vector used for both streams (SPEC §4).
    """

    def __init__(
        self,
        query_dim: int = 768,
        hidden_dim: int = 384,
        num_heads: int = 4,
        ffn_dim: int = 1536,
        dropout: float = 0.1,
        max_words: int = 30,
        pooling: str = "modality",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.projection = FeatureProjection(query_dim, hidden_dim, dropout)
        self.encoder = TransformerEncoder(
            hidden_dim,
            max_words,
            num_layers=1,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            dropout=dropout,
        )
        self.modality_pooling = ModalityPooling(hidden_dim, 2) if pooling == "modality" else None

    def forward(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor | None]:
        """tokens: `[B, N, Dq]`, mask: `[B, N]` -> dict(words [B,N,D], mask, vis [B,D],
        sub [B,D], weights [B,2,N] or None)."""
        mask = mask.bool()
        words = self.encoder(self.projection(tokens), mask)  # [B, N, D]
        weights = None
        if self.modality_pooling is not None:
            pooled, weights = self.modality_pooling(words, mask)  # [B, 2, D], [B, 2, N]
            q_vis, q_sub = pooled[:, 0], pooled[:, 1]
        elif self.pooling == "mean":
            m = mask.to(words.dtype)[..., None]  # [B, N, 1]
            q_vis = q_sub = (words * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:  # max
            values, _ = masked_max(words, mask[..., None], dim=1)  # [B, D]
            q_vis = q_sub = torch.where(mask.any(1, keepdim=True), values, 0.0)
        return {"words": words, "mask": mask, "vis": q_vis, "sub": q_sub, "weights": weights}


class MultiModalVideoEncoder(nn.Module):
    """Video encoder of PREM §3.3: one multi-modal TransformerLayer over `[H^vis; H^sub]`.

    Each stream: FeatureProjection + learned clip positions (shared by the two streams, clip j
    of both streams is the same moment in time) + a learned modality embedding. The streams are
    concatenated to `[V, 2L, D]`, encoded by ONE layer and split back.

    `empty_subtitle` (SPEC §4 [decision]): `mask` (default) masks clips without a subtitle in
    attention and returns them as False in `sub_mask`; `zeros` is the paper's behaviour: their
    raw subtitle features are zeros and they take part like any clip (`sub_mask = clip_mask`).
    A disabled stream (`use_vis` / `use_sub` False) is left out of the encoder and returned as
    zeros (so corpus caches keep one layout), with an all-False mask for the subtitle stream.
    """

    def __init__(
        self,
        visual_dim: int = 4352,
        subtitle_dim: int = 768,
        hidden_dim: int = 384,
        num_heads: int = 4,
        ffn_dim: int = 1536,
        dropout: float = 0.1,
        max_clips: int = 100,
        use_vis: bool = True,
        use_sub: bool = True,
        empty_subtitle: str = "mask",
    ) -> None:
        super().__init__()
        if not (use_vis or use_sub):
            raise ValueError("at least one of use_vis / use_sub must be True")
        if empty_subtitle not in EMPTY_SUBTITLE_MODES:
            raise ValueError(
                f"empty_subtitle must be one of {EMPTY_SUBTITLE_MODES}, got {empty_subtitle!r}"
            )
        self.hidden_dim = hidden_dim
        self.use_vis = use_vis
        self.use_sub = use_sub
        self.empty_subtitle = empty_subtitle
        self.vis_projection = (
            FeatureProjection(visual_dim, hidden_dim, dropout) if use_vis else None
        )
        self.sub_projection = (
            FeatureProjection(subtitle_dim, hidden_dim, dropout) if use_sub else None
        )
        self.modality = nn.Embedding(2, hidden_dim)  # 0: visual, 1: subtitle
        self.encoder = TransformerEncoder(
            hidden_dim,
            max_clips,
            num_layers=1,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            dropout=dropout,
        )

    def _stream(
        self, x: Tensor, projection: nn.Module, modality: int, index: Tensor | None = None
    ) -> Tensor:
        x = projection(x) + self.modality.weight[modality]  # [V, L, D]
        if index is not None:  # TCP (PRVR §3.5): shuffle positions before the positions
            x = x.gather(1, index[..., None].expand_as(x))
        return self.encoder.add_positions(x)

    def forward(
        self,
        visual: Tensor | None,
        subtitle: Tensor | None,
        clip_mask: Tensor,
        sub_mask: Tensor,
        permutation: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """visual `[V, L, Dv]`, subtitle `[V, L, Ds]`, clip_mask / sub_mask `[V, L]`.

        Returns dict(vis [V,L,D], sub [V,L,D], clip_mask [V,L], sub_mask [V,L]) where
        `sub_mask` is the effective subtitle mask (see the class docstring).

        `permutation` (TCP, PRVR §3.5 on PREM's streams): `{"vis": index, "sub": index}`, each
        `[V, L]` long (e.g. from `losses.prvr.tcp_shuffle`); position t of that stream then
        holds the projected clip `index[t]`, permuted **before** the positional embeddings,
        and the stream's mask is permuted with it (`sub_mask` is returned permuted).
        """
        clip_mask = clip_mask.bool()
        sub_mask = sub_mask.bool() & clip_mask
        V, L = clip_mask.shape
        if self.empty_subtitle == "zeros":
            eff_sub_mask = clip_mask
            if subtitle is not None:
                subtitle = subtitle * sub_mask[..., None].to(subtitle.dtype)
        else:
            eff_sub_mask = sub_mask

        vis_index = sub_index = None
        if permutation is not None:
            vis_index, sub_index = permutation.get("vis"), permutation.get("sub")
            if sub_index is not None:
                eff_sub_mask = eff_sub_mask.gather(1, sub_index)
        streams, masks = [], []
        if self.use_vis:
            streams.append(self._stream(visual, self.vis_projection, 0, vis_index))
            vis_mask = clip_mask if vis_index is None else clip_mask.gather(1, vis_index)
            masks.append(vis_mask)
        if self.use_sub:
            streams.append(self._stream(subtitle, self.sub_projection, 1, sub_index))
            masks.append(eff_sub_mask)
        hidden = self.encoder.encode(torch.cat(streams, 1), torch.cat(masks, 1))  # [V, kL, D]
        parts = list(hidden.split(L, dim=1))
        zeros = hidden.new_zeros(V, L, self.hidden_dim)
        h_vis = parts.pop(0) if self.use_vis else zeros
        h_sub = parts.pop(0) if self.use_sub else zeros
        if not self.use_sub:
            eff_sub_mask = torch.zeros_like(clip_mask)
        return {"vis": h_vis, "sub": h_sub, "clip_mask": clip_mask, "sub_mask": eff_sub_mask}


class PremEncoders(nn.Module):
    """The query and multi-modal video encoders of PREM §3.3, the part the retriever and the
    localizer share (each with its own weights, SPEC §5: "own encoders as in §4").

    Every argument is keyword-only and required: the values live in the `net` section of
    `conf/model/prem_retriever.yaml` / `prem_localizer.yaml` (hidden 384, 4 heads, FFN 1536:
    PREM §4.2).
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        subtitle_dim: int,
        query_dim: int,
        hidden_dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        max_clips: int,
        max_words: int,
        use_vis: bool,
        use_sub: bool,
        pooling: str,  # Table 3: modality | mean | max
        empty_subtitle: str,  # SPEC §4 [decision]: mask | zeros
    ) -> None:
        super().__init__()
        self.use_vis = use_vis
        self.use_sub = use_sub
        self.hidden_dim = hidden_dim
        self.query_encoder = QueryEncoder(
            query_dim, hidden_dim, num_heads, ffn_dim, dropout, max_words, pooling
        )
        self.video_encoder = MultiModalVideoEncoder(
            visual_dim,
            subtitle_dim,
            hidden_dim,
            num_heads,
            ffn_dim,
            dropout,
            max_clips,
            use_vis,
            use_sub,
            empty_subtitle,
        )


class PremRetriever(PremEncoders):
    """PREM video retriever (PREM §3.3, SPEC §4): query and video encoders + Eq. 6 scoring.

    Use `encode_queries`, `encode_videos` (query-independent, cache per corpus) and `score`.
    Losses live in `partial_relevance.losses.prem`.
    """

    def __init__(
        self,
        *,
        irm: bool,  # PRVR §3.4 on PREM: the FC of Eq. 9
        irm_shared_fc: bool,  # one FC for r_v and r_q (Eq. 9)
        tcp: bool,  # PRVR §3.5 on PREM: one Linear(D, g) per stream
        tcp_groups: int,  # g, PRVR §4.1.3
        **encoders: Any,
    ) -> None:
        """`encoders`: the `PremEncoders` arguments (dims, sizes, streams, pooling, subtitles)."""
        super().__init__(**encoders)
        hidden_dim = self.hidden_dim
        # The PRVR modules' heads, created after the encoders (and only when switched on) so
        # that the PREM weights initialise exactly as without them.
        self.irm_projection = IrmProjection(hidden_dim, irm_shared_fc) if irm else None
        self.tcp_heads = (
            nn.ModuleDict({s: TcpClassifier(hidden_dim, tcp_groups) for s in self.streams})
            if tcp
            else None
        )

    @property
    def streams(self) -> tuple[str, ...]:
        """The enabled streams, `vis` and / or `sub` (the keys of encodings)."""
        return tuple(s for s, on in (("vis", self.use_vis), ("sub", self.use_sub)) if on)

    def encode_queries(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor | None]:
        """tokens `[B, N, Dq]`, mask `[B, N]` -> dict(vis [B, D], sub [B, D],
        weights [B, 2, N] or None)."""
        out = self.query_encoder(tokens, mask)
        return {"vis": out["vis"], "sub": out["sub"], "weights": out["weights"]}

    def encode_videos(
        self,
        visual: Tensor,
        subtitle: Tensor,
        clip_mask: Tensor,
        sub_mask: Tensor,
        permutation: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """visual `[V,L,Dv]`, subtitle `[V,L,Ds]`, masks `[V,L]` -> dict(vis, sub [V,L,D],
        clip_mask, sub_mask [V,L]). Query-independent: encode each video once.
        `permutation`: TCP's shuffled re-encoding, see `MultiModalVideoEncoder.forward`."""
        return self.video_encoder(visual, subtitle, clip_mask, sub_mask, permutation)

    # ------------------------------------------------ the PRVR plug-in interface (SPEC §3)
    @staticmethod
    def stream_mask(videos: Mapping[str, Tensor], stream: str) -> Tensor:
        """`[V, L]` True at the clips of `stream` that Eq. 6's maximum runs over."""
        return videos["clip_mask"].bool() if stream == "vis" else videos["sub_mask"].bool()

    def video_feature(self, videos: Mapping[str, Tensor], stream: str) -> Tensor:
        """What stands for PRVR's video-level feature `v` (IRM Eq. 9) on one stream -> `[V, D]`.

        PREM has no video vector (Eq. 6 scores by a maximum over clips), so `v` is the mean of
        the stream's encoded clips over its valid clips (**[decision]**: like PRVR's `v`, a
        query-independent summary of the whole video; zeros where the stream has no clip)."""
        mask = self.stream_mask(videos, stream).to(videos[stream].dtype)[..., None]  # [V, L, 1]
        return (videos[stream] * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def target_clips(
        self,
        queries: Mapping[str, Tensor | None],
        videos: Mapping[str, Tensor],
        stream: str,
        query_video: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """`m^t` on one stream: each query's cosine-best valid clip in its GT video (the clip
        Eq. 6's maximum picks) -> (`[B, D]`, valid `[B]`: False where that video has no clip
        of the stream, e.g. no subtitle)."""
        q = queries[stream]
        assert q is not None
        clips = videos[stream][query_video]  # [B, L, D]
        mask = self.stream_mask(videos, stream)[query_video]  # [B, L]
        sim = torch.einsum("bd,bld->bl", l2_normalize(q), l2_normalize(clips))
        index = masked_max(sim, mask, dim=1)[1]  # [B]
        return clips[torch.arange(len(q), device=q.device), index], mask.any(1)

    def redundant_features(self, v: Tensor, target: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """IRM Eq. 9: `r_v = FC(v − m^t)`, `r_q = FC(v − q)`, each `[B, D]`."""
        if self.irm_projection is None:
            raise RuntimeError("PremRetriever(irm=True) is needed for IRM's redundant features")
        return self.irm_projection(v, target, q)

    def tcp_logits(self, videos: Mapping[str, Tensor], stream: str) -> Tensor:
        """TCP §3.5: temporal-group logits of every clip of one stream -> `[V, L, g]`."""
        if self.tcp_heads is None:
            raise RuntimeError("PremRetriever(tcp=True) is needed for TCP's classifiers")
        return self.tcp_heads[stream](videos[stream])

    def score(
        self,
        queries: dict[str, Tensor | None],
        videos: dict[str, Tensor],
        restrict: Tensor | None = None,
        aligned: bool = False,
    ) -> Tensor:
        """Eq. 6 scores `[B, V]` of encoded queries against encoded videos; `aligned`: `[B]`,
        `videos` already indexed so that video b belongs to query b (`[B, L, D]`, masks
        `[B, L]`). `restrict` (`[B, V, L]` / `[B, L]`) limits both maxima (strong / weak
        positives); see `eq6_score`."""
        return eq6_score(
            queries["vis"],
            queries["sub"],
            videos["vis"],
            videos["sub"],
            videos["clip_mask"],
            videos["sub_mask"],
            restrict,
            use_vis=self.use_vis,
            use_sub=self.use_sub,
            aligned=aligned,
        )

    def score_pairs(
        self,
        queries: dict[str, Tensor | None],
        videos: dict[str, Tensor],
        restrict: Tensor | None = None,
    ) -> Tensor:
        """`score(..., aligned=True)`: Eq. 6 of aligned pairs `[B]`."""
        return self.score(queries, videos, restrict, aligned=True)


def index_encoding(encoding: dict[str, Tensor | None], index: Tensor) -> dict[str, Tensor | None]:
    """Index the first dim of every tensor of an encoding dict (None values stay None).

    Expands cached encodings to (query, video) pairs: e.g. `index_encoding(videos, pair_video)`
    with `pair_video` `[P]` gives `[P, L, D]` clip features for the localizer or
    `PremRetriever.score_pairs`.
    """
    return {k: (v[index] if isinstance(v, Tensor) else v) for k, v in encoding.items()}


# ----------------------------------------------------------------------------
# PREM Eq. 6 restricted to the strong / weak relevant content (SPEC §4); used by the
# retriever's loss, moved here from lit/retriever.py (issue #20).

RESTRICTED_SUBTITLE_MODES = ("video", "drop")


def restricted_pair_score(
    net: PremRetriever,
    queries: dict[str, Tensor | None],
    pairs: dict[str, Tensor],
    restrict: Tensor,
    subtitle: str,
) -> Tensor:
    """Eq. 6 of aligned pairs with the maxima restricted to `restrict` `[B, L]` (the strong /
    weak positives of SPEC §4) -> `[B]`.

    With `empty_subtitle: mask`, a restricted clip set can hold no subtitle clip although the
    video has subtitles (a moment without speech). `eq6_score` then drops the subtitle term
    (visual term alone), while every negative keeps the average `½(vis + sub)`; training
    exploits that mismatch (push every subtitle similarity down: negatives fall, such
    positives do not) and retrieval does not learn. `subtitle="video"` (the config default,
    `model.restricted_subtitle`, **[decision]**) keeps the positive comparable with the
    negatives: the visual maximum stays restricted, the subtitle maximum of such a pair runs
    over the whole GT video. Pairs whose video has no subtitle at all keep the visual term
    alone, as in Eq. 6 for that video.
    `subtitle="drop"` is `eq6_score(..., aligned=True)` unchanged.
    """
    if subtitle not in RESTRICTED_SUBTITLE_MODES:
        raise ValueError(f"subtitle must be one of {RESTRICTED_SUBTITLE_MODES}, got {subtitle!r}")
    base = net.score_pairs(queries, pairs, restrict)  # [B]
    if subtitle == "drop" or not (net.use_vis and net.use_sub):
        return base
    subs = pairs["sub_mask"].bool() & pairs["clip_mask"].bool()  # [B, L]
    fallback = subs.any(1) & ~(subs & restrict.bool()).any(1)  # [B]
    if not bool(fallback.any()):
        return base
    args = (
        queries["vis"],
        queries["sub"],
        pairs["vis"],
        pairs["sub"],
        pairs["clip_mask"],
        pairs["sub_mask"],
    )
    vis = eq6_score(*args, restrict, use_vis=True, use_sub=False, aligned=True)  # [B]
    sub = eq6_score(*args, None, use_vis=False, use_sub=True, aligned=True)  # [B]
    return torch.where(fallback, 0.5 * (vis + sub), base)
