"""Config composition for every experiment, and `train(cfg)` in-process."""

from __future__ import annotations

import json

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from partial_relevance.train import train
from support import CONF_DIR, TINY_SYNTHETIC, compose_train_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_train_config([f"experiment={experiment}"], tmp_path / "run", tmp_path)
    assert cfg.model._target_.startswith("partial_relevance.lit.")
    assert cfg.callbacks.model_checkpoint.save_last is True


@pytest.mark.parametrize("group", ["trainer=cpu", "trainer=gpu", "trainer=ddp_cpu", "logger=csv"])
def test_groups_compose(group, tmp_path):
    cfg = compose_train_config([group], tmp_path / "run", tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_default_model_carries_paper_hyperparameters(tmp_path):
    cfg = compose_train_config([], tmp_path / "run", tmp_path)
    assert cfg.model.net.hidden_dim == 384 and cfg.model.net.dropout == 0.15
    assert cfg.model.optimizer.lr == 2.5e-4
    assert cfg.model.loss.lambda_video_nce == 0.02 and cfg.model.loss.lambda_moment_nce == 0.04
    assert (cfg.model.ice.weight, cfg.model.irm.weight, cfg.model.tcp.weight) == (0.1, 1.0, 1.0)
    assert cfg.model.ice.threshold == 0.4 and cfg.model.tcp.ratio == 0.25


def test_model_and_datamodule_instantiate(tmp_path):
    cfg = compose_train_config(["model/optimizer=adam"], tmp_path / "run", tmp_path)
    model = instantiate(cfg.model, net={"video_dim": 8, "query_dim": 8, "hidden_dim": 8})
    assert model.net.hidden_dim == 8


def tiny_overrides(experiment: str = "prvr_synthetic") -> list[str]:
    sizes = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
    return [
        f"experiment={experiment}",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=8",
        "model.net.hidden_dim=16",
        *sizes,
    ]


def test_train_in_process_one_epoch(tmp_path, synthetic_cache):
    out = tmp_path / "run"
    cfg = compose_train_config(tiny_overrides(), out, synthetic_cache)
    value = train(cfg).monitored
    metrics = json.loads((out / "metrics.json").read_text())
    assert value == pytest.approx(metrics["val/SumR"])
    for key in ("val/R@1", "val/R@5", "val/R@10", "val/R@100", "test/SumR", "val/SumR_chance"):
        assert key in metrics
    assert metrics["val/SumR_chance"] == pytest.approx(100 / 12 + 500 / 12 + 1000 / 12 + 100)
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "csv").exists()
    # A finished run is never overwritten.
    with pytest.raises(FileExistsError, match="metrics.json already exists"):
        train(compose_train_config(tiny_overrides(), out, synthetic_cache))
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_precision_switch_sets_training_and_evaluation(tmp_path):
    """`precision=bf16` is one switch: bf16-mixed training and bf16 evaluation encoding, for
    the PRVR model and the PREM localizer; the default keeps each trainer's own precision."""
    cfg = compose_train_config(["precision=bf16"], tmp_path / "a", tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.evaluation.precision == "bf16"
    cfg = compose_train_config([], tmp_path / "b", tmp_path)
    assert cfg.trainer.precision == "32-true" and cfg.model.evaluation.precision == "fp32"
    cfg = compose_train_config(["trainer=gpu"], tmp_path / "c", tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.evaluation.precision == "fp32"
    cfg = compose_train_config(
        ["experiment=prem_synthetic", "precision=bf16"], tmp_path / "d", tmp_path
    )
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.inference.precision == "bf16"


def test_full_model_trains_in_process_in_bf16(tmp_path, synthetic_cache):
    """The full model (ICE + IRM + TCP) trains and evaluates under `precision=bf16` on CPU."""
    out = tmp_path / "full"
    overrides = tiny_overrides() + [
        "model.ice.enabled=true",
        "model.irm.enabled=true",
        "model.tcp.enabled=true",
        "logger=none",
        "precision=bf16",
    ]
    train(compose_train_config(overrides, out, synthetic_cache))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val/SumR"] > 0 and metrics["test/SumR"] > 0


def test_make_train_schedule_and_the_longer_one(tmp_path):
    """`make train` (experiment=prvr_synthetic) is the 2-minute schedule the README measures;
    the earlier one is kept as prvr_synthetic_long, which the full-method synthetic config
    (the synthetic PRVR tables) still inherits, so their numbers do not move."""
    quick = compose_train_config(["experiment=prvr_synthetic"], tmp_path / "a", tmp_path)
    assert (quick.trainer.max_epochs, quick.data.batch_size) == (8, 64)
    assert quick.model.optimizer.lr == 1e-3 and quick.model.loss.hard_negative_start_epoch == 4
    long = compose_train_config(["experiment=prvr_synthetic_long"], tmp_path / "b", tmp_path)
    assert (long.trainer.max_epochs, long.data.batch_size) == (12, 128)
    assert long.model.optimizer.lr == 2.5e-4 and long.model.loss.hard_negative_start_epoch == 6
    full = compose_train_config(["experiment=prvr_full_synthetic"], tmp_path / "c", tmp_path)
    for key in ("trainer", "data", "model.optimizer", "model.net", "model.loss"):
        same = [OmegaConf.to_container(OmegaConf.select(c, key)) for c in (full, long)]
        assert same[0] == same[1], key
    assert full.model.ice.enabled and full.model.irm.enabled and full.model.tcp.enabled
