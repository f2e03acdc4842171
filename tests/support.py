"""Helpers shared by the tests (importable: `tests` is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

# Hydra overrides: the tiny corpus's sizes (`data.synthetic.*`), and a one-epoch run of a small
# net with no progress bar (add `experiment=`, `logger=` and the rest).
TINY_SYNTHETIC_OVERRIDES = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
TINY_RUN_OVERRIDES = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=8",
    "model.net.hidden_dim=16",
]

# The tiny corpus's VCMR feature dims, as datamodule / net keyword arguments.
TINY_VCMR_DIMS = {
    "visual_dim": TINY_SYNTHETIC["vcmr_visual_dim"],
    "subtitle_dim": TINY_SYNTHETIC["subtitle_dim"],
    "query_dim": TINY_SYNTHETIC["query_dim"],
}


def tiny_vcmr_datamodule(datamodule_class: type, cache: Path, **kwargs: Any) -> Any:
    """A VCMR datamodule (`VcmrRetrieverDataModule` or a subclass) on the tiny synthetic
    corpus in `cache`, prepared and set up; `kwargs` add to / override its arguments."""
    args = {"synthetic": TINY_SYNTHETIC, "cache_dir": str(cache), **TINY_VCMR_DIMS, **kwargs}
    dm = datamodule_class(**args)
    dm.prepare_data()
    dm.setup()
    return dm


def compose_config(
    name: str, overrides: list[str], output_dir: Path, cache_dir: Path
) -> DictConfig:
    """Compose `conf/<name>.yaml` in-process with the run writing into `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.log_dir = str(output_dir.parent)
    return cfg


def compose_train_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose `conf/train.yaml` in-process with the run writing into `output_dir`."""
    return compose_config("train", overrides, output_dir, cache_dir)


def compose_eval_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose `conf/eval.yaml` in-process, writing into `output_dir`."""
    return compose_config("eval", overrides, output_dir, cache_dir)
