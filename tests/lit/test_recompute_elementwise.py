"""`model.recompute_elementwise=true` (only matmul outputs kept for backward) changes no loss
and no update of the full PRVR model with dropout on."""

from __future__ import annotations

import pytest
import torch

from lit_support import bert_adamw, golden_losses, lit_module, model_net
from partial_relevance.data.prvr import PrvrDataModule
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.layers import FeatureProjection, TransformerLayer


def full_module(recompute: bool) -> PrvrLitModule:
    """The tiny PRVR base with ICE, IRM and TCP on and dropout 0.15."""
    torch.manual_seed(0)
    net = model_net("prvr", video_dim=32, query_dim=16, hidden_dim=16, dropout=0.15)
    modules = {"ice": {"enabled": True, "threshold": None}}
    modules |= {"irm": {"enabled": True}, "tcp": {"enabled": True}}
    optimizer = bert_adamw(lr=1e-3)
    return lit_module(
        PrvrLitModule, "prvr", net, optimizer, **modules, recompute_elementwise=recompute
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recompute_elementwise_changes_no_number(tiny_corpus, precision):
    """Also under bf16 autocast (`precision=bf16`), where the recomputed region runs without
    autocast's weight-cast cache (a cached cast would not replay one to one; before, this
    combination raised in backward). There the numbers agree to bf16 rounding, not bit for bit:
    without the cache a weight used twice (TCP re-encodes with the same encoder) is cast twice
    and its two gradients are summed in fp32 instead of bf16."""
    dm = PrvrDataModule(root=str(tiny_corpus.prvr_root), video_dim=32, query_dim=16, batch_size=8)
    dm.setup("fit")
    torch.manual_seed(0)
    batches = [batch for _, batch in zip(range(3), dm.train_dataloader(), strict=False)]
    losses = []
    for recompute in (False, True):
        model = full_module(recompute)
        blocks = [
            m for m in model.modules() if isinstance(m, (FeatureProjection, TransformerLayer))
        ]
        assert blocks and all(m.recompute_elementwise is recompute for m in blocks)
        optimizer = bert_adamw(lr=1e-3)(model.parameters())
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses.append([step[0] for step in golden_losses(model, optimizer, batches)])
    if precision == "fp32":
        assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    else:  # the first step is the same; the updates differ by bf16 accumulation only
        assert losses[1][0] == pytest.approx(losses[0][0], abs=1e-6)
        # Adam's normalised steps amplify that rounding over updates: the losses stay within
        # 2 %, and the first gradients (below) within bf16's rounding.
        assert losses[1] == pytest.approx(losses[0], rel=2e-2)
        gradients = []
        for recompute in (False, True):
            model = full_module(recompute)
            torch.manual_seed(0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.training_losses(batches[0])["loss"].backward()
            gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        difference = (gradients[1] - gradients[0]).norm() / gradients[0].norm()
        assert difference < 2e-3, difference  # measured 2e-4 (3e-4 before the fused layers)
