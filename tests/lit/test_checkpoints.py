"""`LightningModule.load_from_checkpoint(last.ckpt)` rebuilds every module (issue #22): the
net and optimiser configs are saved as hyperparameters and built in `__init__`."""

from __future__ import annotations

import json

import pytest
import torch

from partial_relevance.lit.localizer import PremLocalizerLitModule
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.lit.retriever import PremRetrieverLitModule
from partial_relevance.train import train
from support import TINY_SYNTHETIC, compose_train_config

TINY = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
COMMON = ["logger=none", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", *TINY]
PREM_NET = ["model.net.hidden_dim=16", "model.net.ffn_dim=32"]


def assert_restored(cls: type, run_dir, trained_cfg) -> None:
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    # weights_only=False: a run's checkpoint also holds the RNG states of its callbacks.
    module = cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    # The module's own part (weights and hyperparameters) is plain: weights_only loads it.
    own = {k: saved[k] for k in ("state_dict", "hyper_parameters")}
    torch.save(own, run_dir / "own.pt")
    torch.load(run_dir / "own.pt", weights_only=True)
    state = saved["state_dict"]
    assert module.state_dict().keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(module.state_dict()[key], value, rtol=0, atol=0)
    assert module.hparams["net"]["_target_"] == trained_cfg.model.net._target_
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert optimizer.defaults["lr"] == trained_cfg.model.optimizer.lr


@pytest.mark.parametrize("model", ["prvr", "prvr_mssl"])
def test_prvr_load_from_checkpoint(tmp_path, synthetic_cache, model):
    overrides = [f"model={model}", *COMMON, "data.batch_size=8", "model.net.hidden_dim=16"]
    cfg = compose_train_config(overrides, tmp_path / "run", synthetic_cache)
    train(cfg)
    assert_restored(PrvrLitModule, tmp_path / "run", cfg)


def test_prem_load_from_checkpoint(tmp_path, synthetic_cache):
    overrides = ["experiment=prem_retriever_synthetic", *COMMON, *PREM_NET, "data.batch_size=16"]
    retriever_cfg = compose_train_config(overrides, tmp_path / "retriever", synthetic_cache)
    train(retriever_cfg)
    assert_restored(PremRetrieverLitModule, tmp_path / "retriever", retriever_cfg)
    metrics = json.loads((tmp_path / "retriever" / "metrics.json").read_text())
    overrides = ["experiment=prem_synthetic", *COMMON, *PREM_NET, "data.batch_size=4"]
    overrides.append(f"data.ranking_file={metrics['ranking_file']}")
    localizer_cfg = compose_train_config(overrides, tmp_path / "localizer", synthetic_cache)
    train(localizer_cfg)
    assert_restored(PremLocalizerLitModule, tmp_path / "localizer", localizer_cfg)
