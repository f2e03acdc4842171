"""ICE / IRM / TCP as switches of PREM's retriever LightningModule (lit.prem_modules): each adds
its weighted term to the unchanged retriever loss, and every one trains (gradients reach its
heads and the encoders)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lit_support import lit_module
from partial_relevance.data.vcmr import VcmrRetrieverDataModule
from partial_relevance.lit.retriever import PremRetrieverLitModule
from prem_support import tiny_retriever
from support import TINY_SYNTHETIC, compose_train_config


@pytest.fixture(scope="module")
def batch(synthetic_cache, tiny_corpus):
    dm = VcmrRetrieverDataModule(
        synthetic=TINY_SYNTHETIC,
        cache_dir=str(synthetic_cache),
        batch_size=16,
        visual_dim=TINY_SYNTHETIC["vcmr_visual_dim"],
        subtitle_dim=TINY_SYNTHETIC["subtitle_dim"],
        query_dim=TINY_SYNTHETIC["query_dim"],
    )
    dm.setup()
    torch.manual_seed(1)
    return next(iter(dm.train_dataloader()))


def module(**switches) -> PremRetrieverLitModule:
    torch.manual_seed(0)
    irm = bool(switches.get("irm", {}).get("enabled"))
    tcp = bool(switches.get("tcp", {}).get("enabled"))
    net = tiny_retriever(irm=irm, tcp=tcp)
    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    return lit_module(PremRetrieverLitModule, "prem_retriever", net, optimizer, **switches)


@pytest.mark.parametrize(
    ("name", "term", "weight"),
    [("ice", "L_ice", 0.1), ("irm", "L_irm", 1.0), ("tcp", "L_tcp", 1.0)],
)
def test_each_switch_adds_its_weighted_term_to_the_unchanged_loss(batch, name, term, weight):
    plain = module().training_losses(batch)
    switches = {name: {"enabled": True}}
    if name == "ice":
        switches["ice"]["threshold"] = None  # keep every mutual pair of the untrained net
    lit = module(**switches)
    torch.manual_seed(2)
    terms = lit.training_losses(batch)
    # The PREM terms are those of the plain module (same weights, same batch).
    for key in ("L_S", "L_W", "L_q2v", "L_v2q"):
        torch.testing.assert_close(terms[key], plain[key])
    base = terms["L_q2v"] + terms["L_v2q"]
    torch.testing.assert_close(terms["loss"], base + weight * terms[term])
    assert terms[term].item() > 0
    terms["loss"].backward()
    grads = {n: p.grad for n, p in lit.net.named_parameters()}
    assert grads["video_encoder.vis_projection.linear.weight"].abs().sum() > 0
    if name == "irm":
        assert set(terms) >= {"L_neg", "L_red", "L_neg_vis", "L_red_sub"}
        assert grads["irm_projection.fc_video.weight"].abs().sum() > 0
    if name == "tcp":
        assert {"L_tcp_vis", "L_tcp_sub", "tcp_acc_vis"} <= set(terms)
        assert grads["tcp_heads.sub.linear.weight"].abs().sum() > 0
    if name == "ice":
        assert terms["n_c_vis"].item() >= 2


def test_a_module_needs_its_head_in_the_net():
    net, adamw = tiny_retriever(), partial(torch.optim.AdamW)
    with pytest.raises(ValueError, match="model.net.irm"):
        lit_module(PremRetrieverLitModule, "prem_retriever", net, adamw, irm={"enabled": True})
    with pytest.raises(ValueError, match="unknown keys"):
        lit_module(PremRetrieverLitModule, "prem_retriever", net, adamw, tcp={"shuffle": 1})


def test_the_modules_experiment_composes_with_the_papers_weights(tmp_path):
    cfg = compose_train_config(
        ["experiment=prem_retriever_modules_synthetic_small"], tmp_path / "r", tmp_path
    )
    model = cfg.model
    assert model.net.irm and model.net.tcp and model.ice.enabled
    assert (model.ice.weight, model.irm.weight, model.tcp.weight) == (0.1, 1.0, 1.0)
    assert (model.ice.threshold, model.tcp.ratio, model.tcp.groups) == (0.4, 0.25, 8)
    plain = compose_train_config(["experiment=prem_retriever_synthetic_small"], tmp_path, tmp_path)
    assert not (plain.model.net.irm or plain.model.net.tcp or plain.model.ice.enabled)
