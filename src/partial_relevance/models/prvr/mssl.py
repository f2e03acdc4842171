"""MS-SL-style PRVR base (Dong et al., MM 2022) behind the plug-in interface (PRVR Table 5):
528 multi-scale clip proposals and key-clip guided frame attention, so the video vector
depends on the query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partial_relevance.losses.contrastive import SIMILARITIES
from partial_relevance.models.layers import l2_normalize, masked_softmax
from partial_relevance.models.prvr.base import PrvrBaseModel, PrvrVideoEncoding

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
        **kwargs: Any,
    ) -> None:
        """The base model's arguments (`conf/model/prvr_mssl.yaml`: MS-SL's attention-only
        blocks, `ffn=False`)."""
        super().__init__(video_dim, query_dim, **kwargs)
        hidden_dim, num_moments = self.hidden_dim, kwargs["num_moments"]
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
