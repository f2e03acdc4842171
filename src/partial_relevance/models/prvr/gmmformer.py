"""GMMFormer-style PRVR base (Wang et al., AAAI 2024) behind the plug-in interface (PRVR
Table 5): Gaussian-window attention blocks in both video branches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from partial_relevance.models.layers import TransformerEncoder, masked_softmax
from partial_relevance.models.prvr.base import PrvrBaseModel

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
        *,
        num_layers: int,
        widths: Sequence[float | None],
        gaussian_mode: str,
        **kwargs: Any,
    ) -> None:
        """The base model's arguments (`kwargs`: width, heads, dropout, lengths, score block,
        `ffn` of the text block), with GMMFormer's Gaussian blocks (`num_layers`, `widths`,
        `gaussian_mode`, `conf/model/prvr_gmmformer.yaml`) in both video branches."""
        widths = tuple(None if w is None else float(w) for w in widths)

        def encoder(dim: int, max_len: int, num_heads: int, dropout: float) -> GaussianEncoder:
            return GaussianEncoder(
                dim, max_len, num_layers, num_heads, dropout, widths, gaussian_mode
            )

        super().__init__(video_dim, query_dim, num_layers=1, video_encoder=encoder, **kwargs)
