"""TransformerLayer's attention through `scaled_dot_product_attention` computes what
`nn.MultiheadAttention` computes, from the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partial_relevance.models.layers import TransformerLayer


def _reference(layer: TransformerLayer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The layer's forward with `nn.MultiheadAttention` called directly (the old path)."""
    key_padding = ~mask
    key_padding = key_padding & ~key_padding.all(dim=1, keepdim=True)
    attended, _ = layer.attention(x, x, x, key_padding_mask=key_padding, need_weights=False)
    x = layer.attn_norm(x + layer.attn_dropout(attended))
    return layer.ffn_norm(x + layer.ffn_dropout(layer.ffn(x)))


@pytest.mark.parametrize("train", [False, True])
def test_sdpa_attention_matches_multihead_attention(train: bool) -> None:
    torch.manual_seed(0)
    # Training with dropout 0 (the golden tests' setting); eval with dropout on (inactive).
    layer = TransformerLayer(16, num_heads=4, dropout=0.0 if train else 0.2).train(train)
    x = torch.randn(3, 7, 16, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False  # an all-padding row attends to everything, as before
    ours = layer(x, mask)
    expected = _reference(layer, x, mask)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    if train:
        grad_ours = torch.autograd.grad(ours.sum(), [x, layer.attention.in_proj_weight])
        grad_ref = torch.autograd.grad(expected.sum(), [x, layer.attention.in_proj_weight])
        for a, b in zip(grad_ours, grad_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_state_dict_keeps_multihead_attention_keys() -> None:
    """Checkpoints written before the SDPA path load unchanged."""
    layer = TransformerLayer(16, num_heads=4)
    keys = set(layer.state_dict())
    assert {"attention.in_proj_weight", "attention.in_proj_bias"} <= keys
    assert {"attention.out_proj.weight", "attention.out_proj.bias"} <= keys
    assert isinstance(layer.attention, nn.MultiheadAttention)
