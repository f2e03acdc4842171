"""`benchmarks/common.count_flops`: the CPU attention kernels torch's FlopCounterMode has no
formula for (counted as 0 FLOPs, so every eval "% of peak" read low) counted by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common


def test_multihead_attention_fast_path_counts_projections_and_products():
    torch.manual_seed(0)
    B, L, E = 2, 5, 8
    attention = nn.MultiheadAttention(E, 2, dropout=0.1, batch_first=True).eval()
    x = torch.randn(B, L, E)
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[1, 3:] = True
    # q, k, v projections 2·B·L·E·3E = 3840; q kᵀ and weights·v 2 · 2·B·L·L·E = 1600;
    # output projection 2·B·L·E·E = 1280.
    expected = 3840 + 1600 + 1280
    with torch.no_grad(), common.count_flops() as counter:
        attention(x, x, x, key_padding_mask=padding, need_weights=False)
    assert counter.get_total_flops() == expected
    # The composite path (training mode, dropout 0: linear + SDPA's CPU kernel) counts the same.
    attention.train()
    attention.dropout = 0.0
    with torch.no_grad(), common.count_flops() as counter:
        attention(x, x, x, key_padding_mask=padding, need_weights=False)
    assert counter.get_total_flops() == expected


def test_cross_attention_fast_path_uses_both_lengths():
    B, Lq, Lk, E = 3, 4, 6, 8
    # q and output projections 2·2·B·Lq·E² = 3072, k and v 2·2·B·Lk·E² = 4608,
    # products 2·2·B·Lq·Lk·E = 2304.
    flops = common._native_mha_flops((B, Lq, E), (B, Lk, E), (B, Lk, E), E, 2)
    assert flops == 3072 + 4608 + 2304


def test_cpu_flash_attention_forward_and_backward():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4, requires_grad=True) for _ in range(3))
    with common.count_flops() as counter:
        out = F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * (2 * 1 * 2 * 3 * 3 * 4)  # q kᵀ, weights · v
    with common.count_flops() as counter:
        out.sum().backward()
    # torch's backward formula: q kᵀ recomputed, then the four gradient products.
    assert counter.get_total_flops() == 5 * (2 * 1 * 2 * 3 * 3 * 4)
