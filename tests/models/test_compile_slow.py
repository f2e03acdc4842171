"""`compile_blocks` (torch.compile of the encoders) changes no number beyond float tolerance:
the same encodings, loss and gradients as eager (`pytest -m slow`: Inductor compiles C++)."""

from __future__ import annotations

import copy

import pytest
import torch

from partial_relevance.models.layers import compile_blocks
from partial_relevance.models.prvr import PrvrBaseModel

pytestmark = pytest.mark.slow


def test_compiled_encoders_match_eager() -> None:
    torch.manual_seed(0)
    eager = PrvrBaseModel(video_dim=32, query_dim=16, hidden_dim=16, dropout=0.0).train()
    compiled = copy.deepcopy(eager)
    names = compile_blocks(compiled)
    assert {"query_encoder", "frame_encoder", "clip_encoder", "frame_projection"} <= set(names)
    tokens, token_mask = torch.randn(6, 9, 16), torch.ones(6, 9, dtype=torch.bool)
    token_mask[2, 5:] = False
    moments, frames = torch.randn(3, 32, 32), torch.randn(3, 20, 32)
    frame_mask = torch.ones(3, 20, dtype=torch.bool)
    frame_mask[1, 12:] = False

    def loss_and_grads(net: PrvrBaseModel) -> list[torch.Tensor]:
        q = net.encode_queries(tokens, token_mask)
        enc = net.encode_videos(moments, frames, frame_mask)
        loss = net.video_scores(q, enc).logsumexp(1).mean() + net.moment_scores(q, enc)[0].mean()
        return [loss.detach(), *torch.autograd.grad(loss, list(net.parameters()))]

    for ours, expected in zip(loss_and_grads(compiled), loss_and_grads(eager), strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
