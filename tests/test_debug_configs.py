"""The `debug` config group (conf/debug/, as in the Lightning-Hydra template): every choice
composes, and `debug=fdr` (Lightning's fast_dev_run) runs every task end to end in-process,
the localizer on the ranking file the retriever reports (RunResult.artifacts)."""

from __future__ import annotations

import pytest

from partial_relevance.train import train
from support import TINY_SYNTHETIC, compose_train_config

TINY = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
PREM_NET = ["model.net.hidden_dim=16", "model.net.ffn_dim=32"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("fdr", {"fast_dev_run": True}),
        ("limit", {"max_epochs": 3, "limit_train_batches": 2, "limit_val_batches": 2}),
        ("overfit", {"max_epochs": 20, "overfit_batches": 3}),
        ("profiler", {"max_epochs": 1, "profiler": "simple"}),
    ],
)
def test_debug_choices_compose(choice, expected, tmp_path):
    cfg = compose_train_config([f"debug={choice}"], tmp_path / "run", tmp_path)
    assert cfg.task_name == "debug" and not cfg.logger
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.detect_anomaly is True
    for key, value in expected.items():
        assert cfg.trainer[key] == value, key
    if choice == "overfit":
        assert cfg.callbacks.early_stopping is None  # it would stop on the val metric
    # an experiment chosen beside it keeps its model and data, debug only bounds the run
    cfg = compose_train_config(
        ["experiment=prem_retriever_synthetic", f"debug={choice}"], tmp_path / "run", tmp_path
    )
    assert cfg.model._target_.endswith("PremRetrieverLitModule")


def test_debug_fdr_runs_every_task(tmp_path, synthetic_cache):
    common = ["debug=fdr", "trainer.enable_progress_bar=false", *TINY]
    # PRVR: evaluation batches of 5 of the 12 videos, so the evaluated corpus is partial.
    prvr = train(
        compose_train_config(
            ["experiment=prvr_synthetic", *common, "data.eval_video_batch_size=5"],
            tmp_path / "prvr",
            synthetic_cache,
        )
    )
    assert 0 <= prvr.metrics["val/SumR"] <= 400 and prvr.best_checkpoint is None
    retriever = train(
        compose_train_config(
            ["experiment=prem_retriever_synthetic", *common, *PREM_NET, "data.eval_batch_size=5"],
            tmp_path / "retriever",
            synthetic_cache,
        )
    )
    ranking_file = retriever.artifacts["ranking_file"]
    assert ranking_file.is_file()
    localizer = train(
        compose_train_config(
            [
                "experiment=prem_synthetic",
                *common,
                *PREM_NET,
                f"data.ranking_file={ranking_file}",
                "data.batch_size=4",
                "data.eval_batch_size=5",
            ],
            tmp_path / "localizer",
            synthetic_cache,
        )
    )
    assert localizer.metrics_file.is_file() and localizer.artifacts["val/submission"].is_file()


@pytest.mark.parametrize("choice", ["limit", "overfit", "profiler"])
def test_other_debug_choices_run(choice, tmp_path, synthetic_cache):
    """limit / overfit / profiler run the PRVR task on the tiny corpus (overfit cut to 2
    epochs); the evaluation corpus is partial under limit, as under fdr."""
    overrides = [f"debug={choice}", "trainer.enable_progress_bar=false", *TINY]
    overrides += ["data.batch_size=8", "data.eval_video_batch_size=5", "model.net.hidden_dim=16"]
    if choice == "overfit":
        overrides.append("trainer.max_epochs=2")
    result = train(compose_train_config(overrides, tmp_path / choice, synthetic_cache))
    assert 0 <= result.metrics["val/SumR"] <= 400 and result.metrics_file.is_file()
