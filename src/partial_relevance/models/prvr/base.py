"""The PRVR base model (paper 003, §3.2) and the plug-in interface every base implements.

The bases (PRVR Table 5): `PrvrBaseModel` (here), `MsslBaseModel` (`mssl.py`) and
`GmmformerBaseModel` (`gmmformer.py`). Every base model exposes one interface (SPEC §3
"Plug-in claim"), so the modules attach to any of them without change:

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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from partial_relevance.losses.contrastive import SIMILARITIES
from partial_relevance.models.layers import (
    AdditivePooling,
    FeatureProjection,
    TransformerEncoder,
    l2_normalize,
)


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
        *,
        hidden_dim: int,
        num_heads: int,
        dropout: float,
        num_layers: int,
        ffn: bool,
        num_moments: int,
        max_frames: int,
        max_words: int,
        score_block_elements: int,
        video_encoder: Callable[[int, int, int, float], TransformerEncoder] | None = None,
    ) -> None:
        """Every value from the `net` section of `conf/model/prvr.yaml` (D = 384, dropout 0.15:
        PRVR §4.1.3). `score_block_elements` bounds the largest intermediate of
        `score_queries`;
        `video_encoder(hidden_dim, max_len, num_heads, dropout)` builds the clip and frame
        branch encoders (default: the text encoder's Transformer; GMMFormer passes its
        Gaussian blocks)."""
        super().__init__()
        self.hidden_dim = hidden_dim

        def encoder(dim: int, max_len: int, heads: int, p: float) -> TransformerEncoder:
            return TransformerEncoder(dim, max_len, num_layers, heads, 4 * dim, p, ffn)

        video_encoder = video_encoder or encoder
        self.query_projection = FeatureProjection(query_dim, hidden_dim, dropout)
        self.query_encoder = encoder(hidden_dim, max_words, num_heads, dropout)
        self.query_pooling = AdditivePooling(hidden_dim)
        self.clip_projection = FeatureProjection(video_dim, hidden_dim, dropout)
        self.clip_encoder = video_encoder(hidden_dim, num_moments, num_heads, dropout)
        self.frame_projection = FeatureProjection(video_dim, hidden_dim, dropout)
        self.frame_encoder = video_encoder(hidden_dim, max_frames, num_heads, dropout)
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
        """m^t of each query in its own video (cosine argmax, Eq. 4) -> [n, D]. The argmax is
        an index (no gradient): it runs without autograd, and only the n chosen clips are
        gathered with one, not the n·Tm clips of the queries' videos (whose backward
        scattered n·Tm·D mostly-zero values back)."""
        with torch.no_grad():
            own_clips = l2_normalize(enc.clips[positive])  # [n, Tm, D]
            index = torch.einsum("nd,ntd->nt", l2_normalize(q), own_clips).argmax(1)  # [n]
        return enc.clips[positive, index]

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
