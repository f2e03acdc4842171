"""PRVR models (paper 003): the base model of §3.2 and the plug-in heads of ICE/IRM/TCP.

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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from partial_relevance.models.layers import (
    AdditivePooling,
    FeatureProjection,
    TransformerEncoder,
    l2_normalize,
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
    ) -> None:
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
        """Eq. 14: S = α·S_m + (1 − α)·S_v on cosine similarities -> [n, b]."""
        q = l2_normalize(q)
        moment = torch.einsum("nd,btd->nbt", q, index["clips"]).amax(-1)
        return alpha * moment + (1 - alpha) * q @ index["video"].T


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
