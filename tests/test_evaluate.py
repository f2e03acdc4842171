"""`evaluate(cfg)` rebuilds a run from its saved config and reproduces its metrics."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from partial_relevance.data.errors import DataError
from partial_relevance.evaluate import evaluate
from partial_relevance.train import train
from support import (
    TINY_RUN_OVERRIDES,
    TINY_SYNTHETIC_OVERRIDES,
    compose_eval_config,
    compose_train_config,
)


def test_evaluate_reproduces_the_runs_metrics(tmp_path, synthetic_cache):
    run = tmp_path / "run"
    overrides = [
        "experiment=prvr_synthetic",
        "logger=none",
        *TINY_RUN_OVERRIDES,
        *TINY_SYNTHETIC_OVERRIDES,
    ]
    cfg = compose_train_config(overrides, run, synthetic_cache)
    train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what the Hydra app writes
    trained = json.loads((run / "metrics.json").read_text())

    out = tmp_path / "eval"
    eval_cfg = compose_eval_config(
        [f"run_dir={run}", "trainer.enable_progress_bar=false"], out, synthetic_cache
    )
    metrics = evaluate(eval_cfg)
    for key in ("val/SumR", "val/R@1", "test/SumR"):
        assert metrics[key] == pytest.approx(trained[key])
    assert json.loads((out / "metrics.json").read_text())["checkpoint"].endswith(".ckpt")
    assert json.loads((run / "metrics.json").read_text()) == trained  # the run is untouched


def test_evaluate_needs_a_run_or_checkpoint(tmp_path, synthetic_cache):
    cfg = compose_eval_config([], tmp_path / "eval", synthetic_cache)
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate(cfg)


def test_missing_run_dir_is_named(tmp_path, synthetic_cache):
    cfg = compose_eval_config([f"run_dir={tmp_path / 'gone'}"], tmp_path / "eval", synthetic_cache)
    with pytest.raises(DataError, match="gone"):
        evaluate(cfg)
