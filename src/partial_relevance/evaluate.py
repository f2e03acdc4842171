"""Evaluation entry point: `python -m partial_relevance.evaluate run_dir=... [splits=[test]]`.

Rebuilds a finished run's model and data from its saved `.hydra/config.yaml`, loads its best
checkpoint (or `ckpt_path`), evaluates the requested splits and writes `metrics.json` into
this evaluation's own output directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.train import CONFIG_PATH, _flat_metrics, format_metrics


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
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(data_cfg)
    model = hydra.utils.instantiate(model_cfg)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    metrics: dict[str, float] = {}
    for split in cfg.splits:
        if split == "val":
            out = trainer.validate(
                model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False, weights_only=False
            )
        elif split == "test":
            out = trainer.test(
                model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False, weights_only=False
            )
        else:
            raise ValueError(f"splits may hold 'val' and 'test', got {split!r}")
        metrics.update(_flat_metrics(out[0] if out else {}))
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {**metrics, "checkpoint": str(ckpt)}
    (output_dir / "metrics.json").write_text(json.dumps(payload, indent=2, sort_keys=True))
    print(format_metrics(metrics))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
