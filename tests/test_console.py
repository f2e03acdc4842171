"""A quiet, informative console: the known-harmless third-party lines are filtered at their
source (partial_relevance.quiet), anything else still shows; the tensorboard logger works
offline; the run's console table shows every task's rows."""

from __future__ import annotations

import logging
import warnings

import pytest
import pytorch_lightning as pl

from partial_relevance import prem_pipeline, quiet
from partial_relevance.train import format_metrics, train
from support import TINY_RUN_OVERRIDES, TINY_SYNTHETIC_OVERRIDES, compose_train_config


def test_lightning_tips_are_dropped_other_info_is_kept(caplog):
    quiet.install()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        rank_zero.info("something the user needs")
    assert "Tip" not in caplog.text and "litlogger" not in caplog.text
    assert "something the user needs" in caplog.text


def test_lightning_pytree_deprecation_is_silenced_only():
    from pytorch_lightning.utilities._pytree import _tree_flatten

    quiet.install()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet._INSTALLED = False  # simplefilter reset the filters: install them again
        quiet.install()
        _tree_flatten({"a": 1.0})
        warnings.warn("a real problem", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert not any("LeafSpec" in m for m in messages)
    assert "a real problem" in messages


def test_wandb_logger_passes_no_anonymous_setting(tmp_path):
    logger = quiet.WandbLogger(project="p", save_dir=str(tmp_path), offline=True)
    assert "anonymous" not in logger._wandb_init
    assert isinstance(logger, pl.loggers.WandbLogger)


def test_tensorboard_logger_writes_event_files(tmp_path, synthetic_cache):
    overrides = ["logger=tensorboard", *TINY_RUN_OVERRIDES, *TINY_SYNTHETIC_OVERRIDES]
    out = tmp_path / "run"
    train(compose_train_config(overrides, out, synthetic_cache))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_console_table_shows_the_localizers_rows():
    metrics = {
        "val/VR_R@1": 10.0,
        "val/VCMR_R@1 IoU0.5": 1.5,
        "val/SVMR_R@10 IoU0.7": 30.0,
        "val/R@1_chance": 1.0,
        "val/SumR_chance": 23.2,
    }
    lines = format_metrics(metrics).splitlines()
    rows = {line.split()[0] + " " + line.split()[1]: line for line in lines[1:]}
    assert set(rows) == {"val VR", "val VCMR@0.5", "val SVMR@0.7", "val chance"}
    assert "1.50" in rows["val VCMR@0.5"] and "30.00" in rows["val SVMR@0.7"]
    # PRVR keeps its plain rows
    lines = format_metrics({"val/R@1": 5.0, "val/SumR": 100.0, "val/R@1_chance": 0.2})
    assert [line.split()[0] for line in lines.splitlines()] == ["split", "val", "val"]


@pytest.mark.slow
def test_prem_pipeline_reports_each_stage(tmp_path, synthetic_cache, caplog):
    """`make train-prem` on a tiny config: each stage's own results table reaches the console
    (the localizer's with its VR, VCMR and SVMR rows, not only the chance rows), then the
    pipeline's tables beside the random localizer."""
    common = [
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "model.net.hidden_dim=16",
        "model.net.ffn_dim=32",
        "data.batch_size=8",
        f"paths.cache_dir={synthetic_cache}",
        *TINY_SYNTHETIC_OVERRIDES,
    ]
    argv = ["--out", str(tmp_path / "pipe"), "--threads", "1"]
    argv += [a for c in common for a in ("--common", c)]
    argv += ["--localizer", "model.inference.top_n=20"]
    with caplog.at_level(logging.INFO, logger="partial_relevance"):
        assert prem_pipeline.main(argv) == 0
    assert f"results of {tmp_path / 'pipe' / 'retriever'}" in caplog.text
    assert f"results of {tmp_path / 'pipe' / 'localizer'}" in caplog.text
    for row in ("val VR", "val VCMR@0.5", "val SVMR@0.7", "val chance"):
        assert row in caplog.text, row
