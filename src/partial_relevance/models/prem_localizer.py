"""PREM focus-then-fuse moment localizer (PREM §3.4, SPEC §5).

Pipeline for one (query, video) pair:

1. Encoders (own weights, same design as the retriever, SPEC §4): multi-modal TransformerLayer
   over the visual + subtitle clips -> `H^vis`, `H^sub` `[L, D]`; query TransformerLayer ->
   words `Q [N, D]` and modality pooling -> `q^vis`, `q^sub`.
2. Modality-specific gates (Eq. 9, reconstructed):
   `ĥ_j^m = h_j^m ⊙ σ(FC_m(l2n(h_j^m) ⊙ l2n(q^m)))`.
3. Clip fusion (Eq. 10): `c_j = FC([ĥ_j^vis; ĥ_j^sub])`, a clip without subtitle enters with
   `ĥ^sub = 0`.
4. `fusion_layers` post-LN layers: self-attention over clips, cross-attention clips -> words, FFN.
5. Boundary heads: two Conv1d stacks -> start / end logits `[L]`; padded clips get a large
   negative logit so they never win.
6. Adversarial head (training only): a separate TransformerLayer on the fused clips, max-pool
   over each span's clips, MLP D -> D -> D/2 -> 1.

The video encoding (step 1, video side) is query-independent: `encode_videos` once, then
`localize` on (query, video) pairs whose encodings the caller expands with `index_encoding`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partial_relevance.models.layers import TransformerLayer, l2_normalize
from partial_relevance.models.prem_retriever import PremEncoders, index_encoding

__all__ = [
    "BoundaryHead",
    "CrossModalFusionLayer",
    "GradientReversal",
    "ModalityGate",
    "PremLocalizer",
    "grad_reverse",
    "index_encoding",
    "mask_logits",
    "span_max_pool",
    "span_membership",
]


def mask_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Set logits at masked-out positions to a quarter of the dtype's min.

    Never wins a softmax or a max, and stays finite when a few such values are added together
    (Eq. 13 adds `log P_st + log P_ed`), unlike `-inf` or the dtype's min itself.
    """
    return logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min / 4)


class GradientReversal(torch.autograd.Function):
    """Identity forward, `-scale * grad` backward (the `adv_grl: true` alternative, SPEC §5)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad_output, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient reversal layer: identity forward, gradient multiplied by `-scale` backward."""
    return GradientReversal.apply(x, scale)


def span_membership(spans: Tensor, clip_mask: Tensor, span_mask: Tensor | None = None) -> Tensor:
    """`[P, S, L]` True where clip l lies inside span s (inclusive) and is a real clip.

    spans `[P, S, 2]` inclusive clip indices, clip_mask `[P, L]`, span_mask `[P, S]` (padding
    spans get an all-False row).
    """
    idx = torch.arange(clip_mask.shape[1], device=spans.device)  # [L]
    inside = (idx >= spans[..., :1]) & (idx <= spans[..., 1:2])  # [P, S, L]
    inside = inside & clip_mask.bool()[:, None, :]
    if span_mask is not None:
        inside = inside & span_mask.bool()[..., None]
    return inside


def span_max_pool(
    features: Tensor, spans: Tensor, clip_mask: Tensor, span_mask: Tensor | None = None
) -> Tensor:
    """Max-pool clip features over each span (SPEC §5 span feature): `[P, L, D]` -> `[P, S, D]`.

    Vectorised with a `[P, S, L]` membership mask (memory `P·S·L·D`). A span with no valid clip
    (padding) pools to zeros.
    """
    member = span_membership(spans, clip_mask, span_mask)  # [P, S, L]
    expanded = features[:, None].masked_fill(
        ~member[..., None], torch.finfo(features.dtype).min
    )  # [P, S, L, D]
    pooled = expanded.amax(dim=2)  # [P, S, D]
    return torch.where(member.any(-1, keepdim=True), pooled, torch.zeros_like(pooled))


class ModalityGate(nn.Module):
    """PREM §3.4 Eq. 9 (reconstructed, SPEC §5): `h ⊙ σ(FC(l2n(h) ⊙ l2n(q)))`, FC: Linear(D, D).

    Lets each modality keep the clip dimensions its own query representation points at
    (after the gated self-matching of Wang et al. 2017).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, h: Tensor, q: Tensor) -> Tensor:
        """h: `[P, L, D]` clip features, q: `[P, D]` modality query -> `[P, L, D]`."""
        gate = torch.sigmoid(self.fc(l2_normalize(h) * l2_normalize(q)[:, None, :]))
        return h * gate


def _key_padding(mask: Tensor) -> Tensor:
    """Key-padding mask (True = ignore) from a validity mask; an all-masked row attends to
    everything instead of producing NaNs."""
    padding = ~mask.bool()
    return padding & ~padding.all(dim=1, keepdim=True)


class CrossModalFusionLayer(nn.Module):
    """One multi-modal fusion layer of PREM §3.4 (SPEC §5), post-LN:
    self-attention over clips -> cross-attention from clips to the query words -> FFN.

    The cross-attention's key / value projections of the words depend on the query alone:
    `word_keys_values` computes them once per query (`PremLocalizer.encode_queries`), and
    `forward` takes them for each (query, video) pair instead of projecting the words again
    (VCMR localizes 10 videos a query).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(dim)
        self.cross_attention = nn.MultiheadAttention(dim, num_heads, dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def word_keys_values(self, words: Tensor) -> Tensor:
        """The cross-attention's key and value projections of the words `[B, N, D]` ->
        `[B, N, 2D]` (keys, then values: `nn.MultiheadAttention`'s packed in-projection)."""
        dim = words.shape[-1]
        attention = self.cross_attention
        return F.linear(words, attention.in_proj_weight[dim:], attention.in_proj_bias[dim:])

    def _attend_words(self, clips: Tensor, word_kv: Tensor, word_mask: Tensor) -> Tensor:
        """`self.cross_attention(clips, words, words)` from the words' projected keys / values
        `word_kv [P, N, 2D]`: the same weights and the same SDPA call (dropout included) as
        `nn.MultiheadAttention`'s own path. clips `[P, L, D]` -> `[P, L, D]`."""
        attention = self.cross_attention
        P, L, D = clips.shape
        heads = attention.num_heads
        query = F.linear(clips, attention.in_proj_weight[:D], attention.in_proj_bias[:D])
        query = query.view(P, L, heads, D // heads).transpose(1, 2)  # [P, h, L, d]
        key, value = word_kv.view(P, -1, 2, heads, D // heads).permute(2, 0, 3, 1, 4)  # [P,h,N,d]
        allowed = ~_key_padding(word_mask)[:, None, None, :]  # [P, 1, 1, N]
        dropout = attention.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=dropout
        )
        return attention.out_proj(out.transpose(1, 2).reshape(P, L, D))

    def forward(
        self,
        clips: Tensor,
        clip_mask: Tensor,
        words: Tensor,
        word_mask: Tensor,
        word_kv: Tensor | None = None,
    ) -> Tensor:
        """clips `[P, L, D]`, clip_mask `[P, L]`, words `[P, N, D]`, word_mask `[P, N]`;
        word_kv `[P, N, 2D]` the words' `word_keys_values` (computed from `words` if None)."""
        attended, _ = self.self_attention(
            clips, clips, clips, key_padding_mask=_key_padding(clip_mask), need_weights=False
        )
        clips = self.self_norm(clips + self.dropout(attended))
        if word_kv is None:
            word_kv = self.word_keys_values(words)
        attended = self._attend_words(clips, word_kv, word_mask)
        clips = self.cross_norm(clips + self.dropout(attended))
        return self.ffn_norm(clips + self.dropout(self.ffn(clips)))


class BoundaryHead(nn.Module):
    """SPEC §5 [decision]: Conv1d(D, D, k) -> ReLU -> Conv1d(D, 1, k), 'same' padding.

    Padded clips are zeroed before each convolution, so a video's logits do not depend on how
    much padding its batch adds (the convolutions see exactly the zero padding of an unpadded
    video).
    """

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(dim, 1, kernel, padding=kernel // 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x `[P, L, D]`, mask `[P, L]` -> logits `[P, L]` (masked clips not yet filled)."""
        keep = mask[:, None, :].to(x.dtype)  # [P, 1, L]
        hidden = F.relu(self.conv1(x.transpose(1, 2) * keep), inplace=True)  # [P, D, L]
        return self.conv2(hidden * keep).squeeze(1)  # [P, L]


class PremLocalizer(PremEncoders):
    """PREM focus-then-fuse moment localizer (PREM §3.4, SPEC §5).

    API: `encode_videos` (query-independent, cacheable), `encode_queries`, `localize` on
    aligned (query, video) pairs, `span_logits` for the adversarial classifier. `forward` runs
    all of it on aligned raw inputs. Its own encoders are the retriever's (`PremEncoders`) with
    Eq. 5's modality pooling and masked empty subtitles.
    """

    def __init__(
        self,
        *,
        fusion_layers: int,  # SPEC §5
        conv_kernel: int,  # SPEC §5 [decision]
        gates: bool,  # Table 6 ablation
        adv_grl: bool,  # SPEC §5 [decision]: no gradient reversal by default
        **encoders: Any,
    ) -> None:
        """`encoders`: the `PremEncoders` arguments but `pooling` and `empty_subtitle`."""
        if conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd to keep L outputs, got {conv_kernel}")
        super().__init__(pooling="modality", empty_subtitle="mask", **encoders)
        self.gates = gates
        self.adv_grl = adv_grl
        hidden_dim, num_heads = self.hidden_dim, encoders["num_heads"]
        ffn_dim, dropout = encoders["ffn_dim"], encoders["dropout"]
        self.vis_gate = ModalityGate(hidden_dim) if gates else None
        self.sub_gate = ModalityGate(hidden_dim) if gates else None
        self.clip_fusion = nn.Linear(2 * hidden_dim, hidden_dim)  # Eq. 10
        self.fusion = nn.ModuleList(
            CrossModalFusionLayer(hidden_dim, num_heads, ffn_dim, dropout)
            for _ in range(fusion_layers)
        )
        self.start_head = BoundaryHead(hidden_dim, conv_kernel)
        self.end_head = BoundaryHead(hidden_dim, conv_kernel)
        # Adversarial (relevant-content) classifier, SPEC §5.
        self.adv_encoder = TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout)
        self.adv_classifier = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim // 2),
            nn.ReLU(),
            nn.Linear(hidden_dim // 2, 1),
        )

    def encode_videos(
        self, visual: Tensor, subtitle: Tensor, clip_mask: Tensor, sub_mask: Tensor
    ) -> dict[str, Tensor]:
        """visual `[V,L,Dv]`, subtitle `[V,L,Ds]`, masks `[V,L]` -> dict(vis, sub [V,L,D],
        clip_mask, sub_mask [V,L]). Query-independent: cache per video."""
        return self.video_encoder(visual, subtitle, clip_mask, sub_mask)

    def encode_queries(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor | None]:
        """tokens `[B,N,Dq]`, mask `[B,N]` -> dict(words [B,N,D], mask [B,N], vis [B,D],
        sub [B,D], weights [B,2,N], word_kv [B, fusion_layers, N, 2D]: each fusion layer's
        cross-attention keys / values, projected once per query rather than once per pair)."""
        out = self.query_encoder(tokens, mask)
        words = out["words"]
        assert words is not None
        out["word_kv"] = (
            torch.stack([layer.word_keys_values(words) for layer in self.fusion], dim=1)
            if len(self.fusion)
            else None
        )
        return out

    def localize(
        self, video_enc: dict[str, Tensor], query_enc: dict[str, Tensor | None]
    ) -> dict[str, Tensor]:
        """Query-dependent part on P aligned (query, video) pairs.

        Both encodings must have first dim P (expand cached encodings with `index_encoding`).
        Returns dict(start [P,L], end [P,L] boundary logits, masked clips at a large negative;
        fused [P,L,D] clip features after the fusion layers; clip_mask [P,L]).
        """
        clip_mask = video_enc["clip_mask"].bool()  # [P, L]
        sub_mask = video_enc["sub_mask"].bool() & clip_mask  # [P, L]
        h_vis, h_sub = video_enc["vis"], video_enc["sub"]  # [P, L, D]
        if self.gates:
            h_vis = self.vis_gate(h_vis, query_enc["vis"])
            h_sub = self.sub_gate(h_sub, query_enc["sub"])
        # Disabled streams and clips without subtitle enter with ĥ = 0 (SPEC §5).
        h_vis = h_vis * (clip_mask if self.use_vis else torch.zeros_like(clip_mask))[..., None]
        h_sub = h_sub * (sub_mask if self.use_sub else torch.zeros_like(sub_mask))[..., None]
        fused = self.clip_fusion(torch.cat([h_vis, h_sub], dim=-1))  # [P, L, D]
        word_kv = query_enc.get("word_kv")  # [P, layers, N, 2D]; None: projected per pair
        for i, layer in enumerate(self.fusion):
            layer_kv = None if word_kv is None else word_kv[:, i]
            fused = layer(fused, clip_mask, query_enc["words"], query_enc["mask"], layer_kv)
        start = mask_logits(self.start_head(fused, clip_mask), clip_mask)  # [P, L]
        end = mask_logits(self.end_head(fused, clip_mask), clip_mask)  # [P, L]
        return {"start": start, "end": end, "fused": fused, "clip_mask": clip_mask}

    def span_logits(
        self, fused: Tensor, clip_mask: Tensor, spans: Tensor, span_mask: Tensor
    ) -> Tensor:
        """Adversarial classifier logits `[P, S]` for spans `[P, S, 2]` (inclusive clip indices).

        A separate TransformerLayer runs on the fused clips `[P, L, D]`, each span is max-pooled
        over its clips (`span_max_pool`), an MLP D -> D -> D/2 -> 1 scores it. With
        `adv_grl=True` a gradient reversal sits before the TransformerLayer. Padding spans
        (`span_mask` False) get logit 0; mask them in the loss.
        """
        x = grad_reverse(fused) if self.adv_grl else fused
        hidden = self.adv_encoder(x, clip_mask)  # [P, L, D]
        pooled = span_max_pool(hidden, spans, clip_mask, span_mask)  # [P, S, D]
        logits = self.adv_classifier(pooled).squeeze(-1)  # [P, S]
        return logits.masked_fill(~span_mask.bool(), 0.0)

    def forward(
        self,
        visual: Tensor,
        subtitle: Tensor,
        clip_mask: Tensor,
        sub_mask: Tensor,
        tokens: Tensor,
        token_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Convenience: encode and localize P aligned pairs (video p with query p)."""
        videos = self.encode_videos(visual, subtitle, clip_mask, sub_mask)
        queries = self.encode_queries(tokens, token_mask)
        return self.localize(videos, queries)
