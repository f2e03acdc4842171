"""TEAM interface 4: `model.compile` makes `configure_model` call
`partial_relevance.models.compile.compile_net(net)` once, in every LightningModule."""

from __future__ import annotations

import pytest
import torch

import partial_relevance.lit.base as lit_base
from lit_support import bert_adamw, lit_module, model_net
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.compile import compile_net
from support import compose_train_config


def tiny(compile: bool) -> PrvrLitModule:
    torch.manual_seed(0)
    net = model_net("prvr", video_dim=8, query_dim=8, hidden_dim=8, dropout=0.0)
    optimizer = bert_adamw(lr=1e-3)
    return lit_module(PrvrLitModule, "prvr", net, optimizer, compile=compile)


@pytest.mark.parametrize("model", ["prvr", "prvr_mssl", "prem_retriever", "prem_localizer"])
def test_every_model_config_has_the_switch_off(tmp_path, model):
    cfg = compose_train_config([f"model={model}"], tmp_path / "run", tmp_path)
    assert cfg.model.compile is False


def test_configure_model_calls_compile_net_once(monkeypatch):
    calls = []
    monkeypatch.setattr(lit_base, "compile_net", lambda net: calls.append(net))
    off = tiny(compile=False)
    off.configure_model()
    assert calls == []
    on = tiny(compile=True)
    on.configure_model()
    on.configure_model()  # Lightning may call the hook again (e.g. fit, then test)
    assert calls == [on.net]


def test_compile_net_compiles_each_encoder_in_place():
    net = model_net("prvr", video_dim=8, query_dim=8, hidden_dim=8)
    names = compile_net(net)
    assert names == ["query_encoder", "clip_encoder", "frame_encoder"]
    assert all(getattr(net, n)._compiled_call_impl is not None for n in names)
    fresh = model_net("prvr", video_dim=8, query_dim=8, hidden_dim=8)
    assert set(net.state_dict()) == set(fresh.state_dict())


@pytest.mark.slow
def test_compiled_encoders_give_the_same_numbers():
    batch = {
        "query_tokens": torch.randn(6, 5, 8),
        "query_mask": torch.ones(6, 5, dtype=torch.bool),
        "moments": torch.randn(3, 32, 8),
        "frames": torch.randn(3, 10, 8),
        "frame_mask": torch.ones(3, 10, dtype=torch.bool),
        "query_video": torch.tensor([0, 0, 1, 1, 2, 2]),
        "video_index": torch.arange(3),
    }
    eager, compiled = tiny(compile=False), tiny(compile=True)
    compiled.configure_model()
    torch.manual_seed(1)
    expected = eager.training_losses(batch)["loss"]
    torch.manual_seed(1)
    got = compiled.training_losses(batch)["loss"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
