"""PRVR models (paper 003): three base models and the plug-in heads of ICE/IRM/TCP.

The bases (PRVR Table 5): `PrvrBaseModel` (the paper's base, §3.2), `MsslBaseModel` (MS-SL:
528 multi-scale clip proposals, key-clip guided frame attention, so the video vector depends
on the query) and `GmmformerBaseModel` (GMMFormer: Gaussian-window attention blocks).
Every base model exposes one interface (SPEC §3 "Plug-in claim"), so the modules attach to
any of them without change:

- `encode_queries(tokens, mask) -> q [n, D]`
- `encode_videos(moments, frames, frame_mask) -> PrvrVideoEncoding` carrying the 32 encoded
  clips (ICE mines and TCP shuffles there), the encoded frames, the projected inputs of both
  branches (TCP re-encodes them shuffled) and the video vector when it is query-independent;
- `moment_scores(q, enc, sim) -> (S_m [n, b], target index [n, b])` (Eq. 4),
  `target_moments(q, enc, positive) -> m^t [n, D]`;
- `video_scores(q, enc, sim) -> S_v [n, b]` (Eq. 3), `video_features(q, enc, positive) -> [n, D]`;
- `encode_branch(branch, projected, mask)` runs one branch encoder on (shuffled) inputs;
- `index_videos(enc) -> dict` the query-independent per-video tensors evaluation keeps, and
  `score_queries(q, index, alpha) -> [n, b]` the inference score of Eq. 14 from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partial_relevance.models.layers import (
    AdditivePooling,
    FeatureProjection,
    TransformerEncoder,
    l2_normalize,
    masked_softmax,
)

SIMILARITIES = ("cos", "dot")


@dataclass
class PrvrVideoEncoding:
    """A batch of encoded videos; shapes `b` videos, `Tm` clips, `Tf` frames."""

    clips: Tensor  # [b, Tm, D] encoded moment clips
    frames: Tensor  # [b, Tf, D] encoded frames
    frame_mask: Tensor  # [b, Tf] bool
    clip_inputs: Tensor  # [b, Tm, D] projected clips before positions (TCP)
    frame_inputs: Tensor  # [b, Tf, D] projected frames before positions (TCP)
    video: Tensor | None  # [b, D] query-independent video vector, or None

    @property
    def clip_mask(self) -> Tensor:
        return torch.ones(self.clips.shape[:2], dtype=torch.bool, device=self.clips.device)


def _similarity(a: Tensor, b: Tensor, sim: str) -> Tensor:
    """Pairwise scores between query vectors [n, D] and any [..., D] (last dims match)."""
    if sim == "cos":
        a, b = l2_normalize(a), l2_normalize(b)
    elif sim != "dot":
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {sim!r}")
    return torch.einsum("nd,...d->n...", a, b)


class PrvrBaseModel(nn.Module):
    """The paper's base model (PRVR §3.2): text, moment and video branches.

    Text: FeatureProjection -> Transformer -> additive pooling (Eq. 1) -> q.
    Moment branch: 32 mean-pooled clips -> FeatureProjection -> Transformer -> V_m.
    Video branch: frames -> FeatureProjection -> Transformer -> V_f -> additive pooling -> v.
    """

    def __init__(
        self,
        video_dim: int,
        query_dim: int,
        hidden_dim: int = 384,
        num_heads: int = 4,
        dropout: float = 0.15,
        num_layers: int = 1,
        ffn: bool = True,
        num_moments: int = 32,
        max_frames: int = 128,
        max_words: int = 30,
        score_block_elements: int = 2**25,
    ) -> None:
        """`score_block_elements` bounds the largest intermediate of `score_queries`."""
        super().__init__()
        self.hidden_dim = hidden_dim

        def encoder(max_len: int) -> TransformerEncoder:
            return TransformerEncoder(
                hidden_dim, max_len, num_layers, num_heads, 4 * hidden_dim, dropout, ffn
            )

        self.query_projection = FeatureProjection(query_dim, hidden_dim, dropout)
        self.query_encoder = encoder(max_words)
        self.query_pooling = AdditivePooling(hidden_dim)
        self.clip_projection = FeatureProjection(video_dim, hidden_dim, dropout)
        self.clip_encoder = encoder(num_moments)
        self.frame_projection = FeatureProjection(video_dim, hidden_dim, dropout)
        self.frame_encoder = encoder(max_frames)
        self.frame_pooling = AdditivePooling(hidden_dim)
        self.score_block_elements = score_block_elements

    def encode_queries(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens [n, N, Dq], mask [n, N] -> sentence features q [n, D]."""
        words = self.query_encoder(self.query_projection(tokens), mask)
        return self.query_pooling(words, mask)

    def encode_branch(self, branch: str, projected: Tensor, mask: Tensor | None) -> Tensor:
        """Run the `clip` or `frame` encoder (positions + layers) on projected inputs."""
        encoder = self.clip_encoder if branch == "clip" else self.frame_encoder
        return encoder(projected, mask)

    def encode_videos(
        self, moments: Tensor, frames: Tensor, frame_mask: Tensor
    ) -> PrvrVideoEncoding:
        """moments [b, Tm, Dv], frames [b, Tf, Dv], frame_mask [b, Tf]."""
        clip_inputs = self.clip_projection(moments)
        frame_inputs = self.frame_projection(frames)
        clips = self.encode_branch("clip", clip_inputs, None)
        encoded_frames = self.encode_branch("frame", frame_inputs, frame_mask)
        video = self.frame_pooling(encoded_frames, frame_mask)
        return PrvrVideoEncoding(
            clips, encoded_frames, frame_mask.bool(), clip_inputs, frame_inputs, video
        )

    def moment_scores(
        self, q: Tensor, enc: PrvrVideoEncoding, sim: str = "cos"
    ) -> tuple[Tensor, Tensor]:
        """Eq. 4: S_m = max_k sim(m_k, q) -> (scores [n, b], argmax clip index [n, b])."""
        return _similarity(q, enc.clips, sim).max(dim=-1)  # [n, b, Tm] -> [n, b]

    def target_moments(self, q: Tensor, enc: PrvrVideoEncoding, positive: Tensor) -> Tensor:
        """m^t of each query in its own video (cosine argmax, Eq. 4) -> [n, D]."""
        own_clips = enc.clips[positive]  # [n, Tm, D]
        index = torch.einsum("nd,ntd->nt", l2_normalize(q), l2_normalize(own_clips)).argmax(1)
        return own_clips[torch.arange(len(q), device=q.device), index]

    def video_scores(self, q: Tensor, enc: PrvrVideoEncoding, sim: str = "cos") -> Tensor:
        """Eq. 3: S_v = sim(v, q) -> [n, b]."""
        assert enc.video is not None
        return _similarity(q, enc.video, sim)

    def video_features(self, q: Tensor, enc: PrvrVideoEncoding, positive: Tensor) -> Tensor:
        """The video vector v of each query's own video -> [n, D]."""
        assert enc.video is not None
        return enc.video[positive]

    def index_videos(self, enc: PrvrVideoEncoding) -> dict[str, Tensor]:
        """What evaluation keeps per video: unit clips [b, Tm, D] and unit video vector [b, D]."""
        assert enc.video is not None
        return {"clips": l2_normalize(enc.clips), "video": l2_normalize(enc.video)}

    def score_queries(self, q: Tensor, index: dict[str, Tensor], alpha: float) -> Tensor:
        """Eq. 14: S = α·S_m + (1 − α)·S_v on cosine similarities -> [n, b].

        The index may be stored in a narrower dtype (fp16): each block of videos is upcast to
        the query's dtype, so products accumulate in fp32, and no intermediate exceeds
        `score_block_elements` elements ([n, blk, Tm]).
        """
        q = l2_normalize(q)  # [n, D]
        clips, video = index["clips"], index["video"]  # [b, Tm, D], [b, D]
        n, (b, num_clips, dim) = q.shape[0], clips.shape
        block = max(1, self.score_block_elements // max(1, n * num_clips))
        out = q.new_empty(n, b)
        for start in range(0, b, block):
            rows = slice(start, start + block)
            block_clips = clips[rows].to(q.dtype).reshape(-1, dim)  # [blk·Tm, D]
            moment = (q @ block_clips.T).view(n, -1, num_clips).amax(-1)  # [n, blk]
            out[:, rows] = alpha * moment + (1 - alpha) * q @ video[rows].to(q.dtype).T
        return out


class IrmProjection(nn.Module):
    """IRM Eq. 9: r_v = FC(v − m^t), r_q = FC(v − q); one shared FC by default."""

    def __init__(self, dim: int, shared_fc: bool = True) -> None:
        super().__init__()
        self.fc_video = nn.Linear(dim, dim)
        self.fc_query = self.fc_video if shared_fc else nn.Linear(dim, dim)

    def forward(self, v: Tensor, target_moment: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """v, m^t, q: [n, D] -> (r_v, r_q), each [n, D]."""
        return self.fc_video(v - target_moment), self.fc_query(v - q)


class TcpClassifier(nn.Module):
    """TCP §3.5: one Linear(D, g) per branch predicting each position's temporal group."""

    def __init__(self, dim: int, groups: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, groups)

    def forward(self, x: Tensor) -> Tensor:  # [b, T, D] -> [b, T, g]
        return self.linear(x)


# --------------------------------------------------------------------------- MS-SL base

NORM_EPS = 1e-6  # as `l2_normalize`


def multiscale_proposal_weights(num_clips: int = 32) -> tuple[Tensor, Tensor]:
    """MS-SL's multi-scale clip proposals as an averaging matrix.

    Every window of length 1..T over the T clips, stride 1, ordered by length then start (the
    order of MS-SL's `ones_index`): P = T(T+1)/2 proposals, 528 for T = 32. Proposal p is the
    mean of clips [start_p, end_p), so `proposals = weights @ clips`.

    Returns (weights [P, T] float, spans [P, 2] long as (start, end exclusive)).
    """
    spans = torch.tensor(
        [(s, s + n) for n in range(1, num_clips + 1) for s in range(num_clips - n + 1)]
    )  # [P, 2]
    t = torch.arange(num_clips)
    inside = (t[None, :] >= spans[:, :1]) & (t[None, :] < spans[:, 1:])  # [P, T]
    lengths = (spans[:, 1] - spans[:, 0])[:, None].float()
    return inside.float() / lengths, spans


@dataclass
class MsslVideoEncoding(PrvrVideoEncoding):
    """An MS-SL encoding: the base fields (video = None) plus the multi-scale proposals."""

    proposals: Tensor | None = None  # [b, P, D] mean-pooled windows of the encoded clips
    guided: Tensor | None = None  # [b, P, D] key-clip guided vector per key proposal (lazy)


class MsslBaseModel(PrvrBaseModel):
    """MS-SL-style base (Dong et al., MM 2022) behind the plug-in interface (PRVR Table 5).

    Text and the two branch encoders are those of `PrvrBaseModel` with MS-SL's blocks (one
    attention layer, no FFN: `ffn=False`). Moment branch: the 32 encoded clips are pooled into
    the P = 528 multi-scale proposals; `S_m = max_p cos(p, q)` and `m^t` is the query's best
    proposal (SPEC §3 [decision]). Video branch: MS-SL's key-clip guided attention: the
    query's best proposal in a video (the key clip `c`) attends over that video's frames,
    `a_t = softmax_t(⟨W_k f_t, c⟩)` over valid frames, `v = Σ_t a_t W_v f_t`; so `v` depends
    on the (query, video) pair and `encode_videos` returns `video=None`. ICE mines and TCP
    shuffles over the 32 encoded clips (`enc.clips`), as on the other bases.

    A key clip is always one of the P proposals, so `v` is computed once per (video, proposal)
    and gathered by each query's key index: cheaper than per (query, video) pair as soon as a
    batch has more queries than P, and the same numbers.
    """

    def __init__(
        self,
        video_dim: int,
        query_dim: int,
        hidden_dim: int = 384,
        ffn: bool = False,
        num_moments: int = 32,
        **kwargs: Any,
    ) -> None:
        """The base model's arguments (`kwargs`: heads, dropout, layers, lengths, score
        block), with MS-SL's attention-only blocks (`ffn=False`) by default."""
        super().__init__(
            video_dim, query_dim, hidden_dim=hidden_dim, ffn=ffn, num_moments=num_moments, **kwargs
        )
        del self.frame_pooling  # MS-SL's video vector is key-clip guided, not pooled
        # MS-SL `mapping_linear[0]`, `[1]`: keys and values of the guided attention.
        self.key_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.value_projection = nn.Linear(hidden_dim, hidden_dim, bias=False)
        weights, spans = multiscale_proposal_weights(num_moments)
        self.register_buffer("proposal_weights", weights, persistent=False)  # [P, Tm]
        self.register_buffer("proposal_spans", spans, persistent=False)  # [P, 2]

    @property
    def num_proposals(self) -> int:
        return self.proposal_weights.shape[0]

    def multiscale_proposals(self, clips: Tensor) -> Tensor:
        """Encoded clips [b, Tm, D] -> proposals [b, P, D] (window means)."""
        return torch.einsum("pt,btd->bpd", self.proposal_weights, clips)

    def key_clip_guided(self, proposals: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """MS-SL key-clip guided attention with every proposal as the key clip -> [b, P, D].

        proposals [b, P, D], frames [b, Tf, D] (encoded), frame_mask [b, Tf]: logits
        ⟨W_k f_t, c_p⟩ (unscaled, as MS-SL), softmax over valid frames only, values W_v f_t.
        """
        keys = self.key_projection(frames)  # [b, Tf, D]
        values = self.value_projection(frames)  # [b, Tf, D]
        logits = torch.einsum("bpd,btd->bpt", proposals, keys)  # [b, P, Tf]
        weights = masked_softmax(logits, frame_mask.bool()[:, None, :])
        return torch.einsum("bpt,btd->bpd", weights, values)

    def encode_videos(
        self, moments: Tensor, frames: Tensor, frame_mask: Tensor
    ) -> MsslVideoEncoding:
        """moments [b, Tm, Dv], frames [b, Tf, Dv], frame_mask [b, Tf]."""
        clip_inputs = self.clip_projection(moments)
        frame_inputs = self.frame_projection(frames)
        clips = self.encode_branch("clip", clip_inputs, None)
        encoded_frames = self.encode_branch("frame", frame_inputs, frame_mask)
        return MsslVideoEncoding(
            clips,
            encoded_frames,
            frame_mask.bool(),
            clip_inputs,
            frame_inputs,
            None,
            proposals=self.multiscale_proposals(clips),
        )

    def _guided(self, enc: MsslVideoEncoding) -> Tensor:
        """The per-proposal guided vectors of a batch, computed once and kept on `enc`."""
        if enc.guided is None:
            enc.guided = self.key_clip_guided(enc.proposals, enc.frames, enc.frame_mask)
        return enc.guided

    def _proposal_scores(self, q: Tensor, clips: Tensor, proposals: Tensor, sim: str) -> Tensor:
        """sim(q_j, p_{k,p}) for every query, video and proposal -> [n, b, P].

        A proposal is a mean of clips, so ⟨q, p⟩ is the same mean of ⟨q, clip⟩: score the Tm
        clips, then average (Tm + P·Tm per pair instead of P·D); cosine divides by ‖p‖.
        """
        if sim == "cos":
            q = l2_normalize(q)
        elif sim != "dot":
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {sim!r}")
        per_clip = torch.einsum("nd,btd->nbt", q, clips)  # [n, b, Tm]
        scores = torch.einsum("nbt,pt->nbp", per_clip, self.proposal_weights)  # [n, b, P]
        if sim == "cos":
            scores = scores / proposals.norm(dim=-1).clamp(min=NORM_EPS)[None]
        return scores

    def _own_key_index(self, q: Tensor, enc: MsslVideoEncoding, positive: Tensor) -> Tensor:
        """Index of each query's key clip (cosine-best proposal) in its own video -> [n]."""
        with torch.no_grad():
            per_clip = torch.einsum("nd,ntd->nt", l2_normalize(q), enc.clips[positive])
            scores = per_clip @ self.proposal_weights.T  # [n, P]
            scores = scores / enc.proposals[positive].norm(dim=-1).clamp(min=NORM_EPS)
            return scores.argmax(dim=1)

    def moment_scores(
        self, q: Tensor, enc: MsslVideoEncoding, sim: str = "cos"
    ) -> tuple[Tensor, Tensor]:
        """S_m = max_p sim(p, q) over the 528 proposals -> (scores [n, b], proposal idx [n, b])."""
        return self._proposal_scores(q, enc.clips, enc.proposals, sim).max(dim=-1)

    def target_moments(self, q: Tensor, enc: MsslVideoEncoding, positive: Tensor) -> Tensor:
        """m^t: each query's cosine-best proposal in its own video -> [n, D]."""
        return enc.proposals[positive, self._own_key_index(q, enc, positive)]

    def video_scores(self, q: Tensor, enc: MsslVideoEncoding, sim: str = "cos") -> Tensor:
        """S_v[j, k] = sim(q_j, v[j, k]) with the query-dependent guided vector -> [n, b]."""
        with torch.no_grad():  # the key clip of each pair is MS-SL's cosine argmax
            key = self._proposal_scores(q, enc.clips, enc.proposals, "cos").argmax(-1)  # [n, b]
        guided = self._guided(enc)  # [b, P, D]
        if sim == "cos":
            q, guided = l2_normalize(q), l2_normalize(guided)
        elif sim != "dot":
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {sim!r}")
        videos = torch.arange(guided.shape[0], device=q.device)
        v = guided[videos[None, :], key]  # [n, b, D]
        return torch.einsum("nd,nbd->nb", q, v)

    def video_features(self, q: Tensor, enc: MsslVideoEncoding, positive: Tensor) -> Tensor:
        """v[j, y(j)]: the guided vector of each query in its own video -> [n, D] (IRM)."""
        return self._guided(enc)[positive, self._own_key_index(q, enc, positive)]

    def index_videos(self, enc: MsslVideoEncoding) -> dict[str, Tensor]:
        """What evaluation keeps per video: encoded clips [b, Tm, D], encoded frames padded to
        `max_frames` [b, Tf_max, D] and their mask [b, Tf_max] (float, so it gathers across
        ranks). Proposals and guided vectors ([b, 528, D] each) are recomputed per video block
        in `score_queries` rather than stored for the whole corpus."""
        frames, mask = enc.frames, enc.frame_mask
        pad = self.frame_encoder.max_len - frames.shape[1]
        if pad > 0:
            frames = F.pad(frames, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
        return {"clips": enc.clips, "frames": frames, "frame_mask": mask.to(frames.dtype)}

    def score_queries(self, q: Tensor, index: dict[str, Tensor], alpha: float) -> Tensor:
        """Eq. 14 with MS-SL's query-dependent video vector: α·S_m + (1 − α)·S_v -> [n, b].

        Vectorised over the query chunk × a block of videos; blocks keep every intermediate
        ([n, blk, P], [blk, P, Tf], [n, blk, D]) under `score_block_elements` elements.
        """
        q = l2_normalize(q)  # [n, D]
        clips, frames = index["clips"], index["frames"]  # any float dtype: upcast per block
        mask = index["frame_mask"].bool()
        n, b = q.shape[0], clips.shape[0]
        width = max(self.num_proposals, frames.shape[1], q.shape[1])
        block = max(1, self.score_block_elements // (max(n, self.num_proposals) * width))
        out = q.new_empty(n, b)
        for start in range(0, b, block):
            rows = slice(start, start + block)
            block_clips = clips[rows].to(q.dtype)  # [blk, Tm, D]
            proposals = self.multiscale_proposals(block_clips)  # [blk, P, D]
            cos = self._proposal_scores(q, block_clips, proposals, "cos")  # [n, blk, P]
            moment, key = cos.max(dim=-1)  # [n, blk]
            block_frames = frames[rows].to(q.dtype)
            guided = l2_normalize(self.key_clip_guided(proposals, block_frames, mask[rows]))
            videos = torch.arange(guided.shape[0], device=q.device)
            video = torch.einsum("nd,nbd->nb", q, guided[videos[None, :], key])  # [n, blk]
            out[:, rows] = alpha * moment + (1 - alpha) * video
        return out


# --------------------------------------------------------------------------- GMMFormer base

GAUSSIAN_MODES = ("multiply", "add")


class GaussianWindowAttention(nn.Module):
    """One GMMFormer attention: multi-head self-attention shaped by a Gaussian window.

    The window over relative positions is `g_ij = exp(−((i − j)/T)² / (2σ²))`, σ = width/9,
    with T the sequence's unpadded length ([decision] of this suite: GMMFormer normalises by
    the padded length; the valid length keeps padding from changing the output). `mode`:
    `multiply` scales the logits by g (GMMFormer's code, `scores * gmm_mask`), `add` adds
    log g (a Gaussian prior: softmax·g). `width=None` is plain attention. Then dense +
    dropout + residual + LayerNorm (BertAttention, no FFN).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        dropout: float = 0.1,
        width: float | None = None,
        mode: str = "multiply",
    ) -> None:
        super().__init__()
        if mode not in GAUSSIAN_MODES:
            raise ValueError(f"gaussian mode must be one of {GAUSSIAN_MODES}, got {mode!r}")
        self.num_heads, self.width, self.mode = num_heads, width, mode
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def log_window(self, length: int, valid: Tensor) -> Tensor:
        """log g for sequences of `valid` [B] lengths padded to `length` -> [B, 1, L, L]."""
        pos = torch.arange(length, device=valid.device, dtype=torch.float32)
        distance = pos[:, None] - pos[None, :]  # [L, L]
        relative = distance[None] / valid.clamp(min=1).to(torch.float32)[:, None, None]
        sigma = self.width / 9  # GMMFormer `generate_gauss_weight`
        return (-(relative**2) / (2 * sigma**2))[:, None]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, L, D], mask [B, L] (True at valid positions) -> [B, L, D]."""
        B, L, D = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).view(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(D // heads)  # [B, h, L, L]
        if self.width is not None:
            valid = mask.sum(1) if mask is not None else torch.full((B,), L, device=x.device)
            log_g = self.log_window(L, valid).to(logits.dtype)
            logits = logits * log_g.exp() if self.mode == "multiply" else logits + log_g
        key_mask = None if mask is None else mask.bool()[:, None, None, :]
        probs = self.attn_dropout(masked_softmax(logits, key_mask))
        context = (probs @ v).transpose(1, 2).reshape(B, L, D)
        return self.norm(x + self.out_dropout(self.dense(context)))


class GaussianBlock(nn.Module):
    """GMMFormer's GMMBlock: the mean of attentions with several Gaussian widths."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float,
        widths: Sequence[float | None],
        mode: str = "multiply",
    ) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(
            GaussianWindowAttention(dim, num_heads, dropout, w, mode) for w in widths
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return torch.stack([a(x, mask) for a in self.attentions]).mean(0)


class GaussianEncoder(TransformerEncoder):
    """Learned positions added once, then `num_layers` GaussianBlocks (a TransformerEncoder
    with Gaussian blocks, so `encode_branch` and TCP use it unchanged)."""

    def __init__(
        self,
        dim: int,
        max_len: int,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
        widths: Sequence[float | None] = (None, 0.5, 1.0, 5.0),
        mode: str = "multiply",
    ) -> None:
        super().__init__(
            dim,
            max_len,
            num_layers,
            dropout=dropout,
            layer_factory=lambda: GaussianBlock(dim, num_heads, dropout, widths, mode),
        )


class GmmformerBaseModel(PrvrBaseModel):
    """GMMFormer-style base (Wang et al., AAAI 2024) behind the plug-in interface (Table 5).

    As GMMFormer's code: the text encoder is one plain attention block without FFN; each video
    branch (32 clips, frames) is `num_layers` = 2 GaussianBlocks, each the mean of a plain
    attention and Gaussian-window attentions of widths 0.5, 1.0, 5.0; the video vector is
    additive pooling of the encoded frames (query-independent) and `S_m` is the max over the
    32 encoded clips, so every scoring method is the base model's. `num_layers` counts the
    video-branch blocks here; `ffn` applies to the text block.
    """

    def __init__(
        self,
        video_dim: int,
        query_dim: int,
        hidden_dim: int = 384,
        num_heads: int = 4,
        dropout: float = 0.15,
        num_layers: int = 2,
        ffn: bool = False,
        num_moments: int = 32,
        max_frames: int = 128,
        max_words: int = 30,
        widths: Sequence[float | None] = (None, 0.5, 1.0, 5.0),
        gaussian_mode: str = "multiply",
    ) -> None:
        super().__init__(
            video_dim,
            query_dim,
            hidden_dim,
            num_heads,
            dropout,
            1,
            ffn,
            num_moments,
            max_frames,
            max_words,
        )
        widths = tuple(None if w is None else float(w) for w in widths)

        def encoder(max_len: int) -> GaussianEncoder:
            return GaussianEncoder(
                hidden_dim, max_len, num_layers, num_heads, dropout, widths, gaussian_mode
            )

        self.clip_encoder = encoder(num_moments)
        self.frame_encoder = encoder(max_frames)
