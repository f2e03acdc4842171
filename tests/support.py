"""Helpers shared by the tests (importable: `tests` is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

TINY_SYNTHETIC = {
    "seed": 0,
    "num_train_videos": 24,
    "num_val_videos": 12,
    "num_test_videos": 12,
    "queries_per_video": 3,
    "prvr_visual_dim": 32,
    "vcmr_visual_dim": 32,
    "subtitle_dim": 16,
    "query_dim": 16,
}


def compose_train_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose `conf/train.yaml` in-process with the run writing into `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg


def compose_eval_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose `conf/eval.yaml` in-process, writing into `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg
