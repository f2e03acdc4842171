"""Evaluation entry point: `python -m partial_relevance.evaluate run_dir=... [splits=[test]]`.

Rebuilds a finished run's model and data from its saved `.hydra/config.yaml`, loads its best
checkpoint (or `ckpt_path`), evaluates the requested splits and writes `metrics.json` into
this evaluation's own output directory (printed, with the table and its chance rows). A
checkpoint that is missing, truncated or from another model is a `DataError` naming it.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities.exceptions import SIGTERMException

from partial_relevance import run_dir as run_dirs
from partial_relevance.cli import check_config_types, exits_on_user_error
from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.host_settings import apply_host_settings
from partial_relevance.lit.callbacks import SIGTERM_EXIT
from partial_relevance.train import CONFIG_PATH, _flat_metrics, chance_metrics, format_metrics

log = logging.getLogger(__name__)


def resolve_checkpoint(run_dir: Path, ckpt_path: str | None) -> Path:
    """The explicit checkpoint, else the run's best (from metrics.json), else its last.ckpt."""
    if ckpt_path:
        return require_exists(ckpt_path, "checkpoint")
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        best = json.loads(metrics_path.read_text()).get("best_checkpoint")
        if best and Path(best).exists():
            return Path(best)
    return require_exists(run_dir / "checkpoints" / "last.ckpt", "checkpoint")


def load_checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning checkpoint, or a DataError naming `path` and why not."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as error:
        problem = " ".join(str(error).split())[:200] or type(error).__name__
        raise DataError(
            path, f"not a readable checkpoint (truncated or not torch.save): {problem}"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DataError(path, "not a Lightning checkpoint: it holds no 'state_dict'")
    return checkpoint["state_dict"]


def check_checkpoint_fits(
    path: Path, model: pl.LightningModule, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Raise DataError naming `path` unless its weights (`state`, else read) fit `model`
    (keys and shapes)."""

    def plain(state: dict[str, Any]) -> dict[str, Any]:  # torch.compile adds `_orig_mod.`
        return {k.replace("_orig_mod.", ""): v for k, v in state.items()}

    state = plain(load_checkpoint_state(path) if state is None else state)
    expected = plain(model.state_dict())
    if not expected:  # a module that builds its network lazily: Lightning checks on load
        return
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key, what = (missing[0], "lacks") if missing else (unexpected[0], "has an unknown")
        raise DataError(
            path,
            f"checkpoint of another model: it {what} parameter {key!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)",
            "is ckpt_path from this run?",
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise DataError(
                path,
                f"checkpoint of another model: parameter {key!r} has shape "
                f"{tuple(state[key].shape)}, the model's is {tuple(value.shape)}",
            )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate a checkpoint on the configured splits; returns the flat metrics."""
    output_dir = Path(cfg.paths.output_dir)
    model_cfg, data_cfg = cfg.model, cfg.data
    ckpt = None
    if cfg.run_dir:
        run_dir = require_exists(cfg.run_dir, "run directory")
        saved_path = require_exists(run_dir / ".hydra" / "config.yaml", "saved run config")
        saved = OmegaConf.load(saved_path)
        with open_dict(saved):
            saved.paths = cfg.paths  # resolve paths against this invocation
            # evaluation precision of this invocation (`precision=bf16`), not the run's
            saved.eval_precision = cfg.get("eval_precision", "fp32")
        model_cfg = saved.model
        data_cfg = saved.data if cfg.use_run_data else cfg.data
        ckpt = resolve_checkpoint(run_dir, cfg.ckpt_path)
    elif cfg.ckpt_path:
        ckpt = require_exists(cfg.ckpt_path, "checkpoint")
    else:
        raise DataError(None, "nothing to evaluate: set run_dir=... or ckpt_path=...")
    for split in cfg.splits:
        if split not in ("val", "test"):
            raise DataError(None, f"splits may hold 'val' and 'test', got {split!r}")
    check_config_types(cfg.trainer, "trainer")
    state = load_checkpoint_state(ckpt)  # a truncated or foreign file fails here, named
    main_process = run_dirs.is_main_process()
    if main_process:
        run_dirs.acquire(output_dir)
    try:
        return _evaluate(cfg, output_dir, model_cfg, data_cfg, ckpt, state)
    finally:
        if main_process:
            run_dirs.release(output_dir)


def _evaluate(
    cfg: DictConfig,
    output_dir: Path,
    model_cfg: Any,
    data_cfg: Any,
    ckpt: Path,
    state: dict[str, torch.Tensor],
) -> dict[str, float]:
    apply_host_settings(cfg)  # before the data and the model allocate
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(data_cfg)
    model = hydra.utils.instantiate(model_cfg)
    check_checkpoint_fits(ckpt, model, state)
    del state
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    metrics: dict[str, float] = {}
    try:
        for split in cfg.splits:
            run = trainer.validate if split == "val" else trainer.test
            out = run(
                model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False, weights_only=False
            )
            metrics.update(_flat_metrics(out[0] if out else {}))
    except SIGTERMException as stop:  # a killed evaluation is not a successful one
        stop.code = SIGTERM_EXIT
        raise
    metrics.update(
        {k: v for k, v in chance_metrics(datamodule).items() if k.split("/")[0] in cfg.splits}
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {**metrics, "checkpoint": str(ckpt), "artifacts": {}}
    metrics_path = output_dir / run_dirs.METRICS_FILE
    metrics_path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    log.info("evaluated %s\n%s", ckpt, format_metrics(metrics))
    log.info("results written to %s (output directory %s)", metrics_path, output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    """`python -m partial_relevance.evaluate`: one line on stderr and exit 1 on a user error."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
