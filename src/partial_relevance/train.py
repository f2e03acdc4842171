"""Training entry point: `python -m partial_relevance.train [overrides]`.

`train(cfg)` is callable in-process (tests, sweepers) and returns the monitored metric. Every
run writes `metrics.json` (flat keys such as `val/R@1`, `val/SumR`, `test/SumR`, the chance
level `val/SumR_chance`) and Hydra's `.hydra/` into its own output directory, and refuses to
write into a directory that already holds another run's results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from partial_relevance.metrics.retrieval import chance_recall

# The configs ship inside the package (src/partial_relevance/conf -> ../../conf, package data):
# Hydra searches them as `pkg://`, in-process composers (initialize_config_dir) use the path.
CONFIG_PATH = "pkg://partial_relevance.conf"
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c and "_target_" in c]


def _set_wandb_group(cfg: DictConfig) -> None:
    """`logger.wandb.group: null` -> one group per sweep: the sweep directory under
    `paths.log_dir` ("prvr_synthetic-multiruns-<time>", "tables-prvr_ablation-synthetic-runs"),
    or `task_name` for a single run or outside a Hydra app (tests compose configs directly);
    in a sweep each job's run is named after its job directory."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg or wandb_cfg.get("group") is not None:
        return
    group = str(cfg.task_name)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = Path(HydraConfig.get().sweep.dir).resolve()
        log_dir = Path(cfg.paths.log_dir).resolve()
        parts = sweep_dir.relative_to(log_dir).parts if sweep_dir.is_relative_to(log_dir) else ()
        group = "-".join(parts) if parts else f"{group}-{sweep_dir.name}"
        job_dir = Path(cfg.paths.output_dir).resolve()
        if wandb_cfg.get("name") == cfg.task_name and job_dir.is_relative_to(sweep_dir):
            wandb_cfg.name = "-".join((cfg.task_name, *job_dir.relative_to(sweep_dir).parts))
    wandb_cfg.group = group


def _finish_wandb(loggers: list[Any]) -> None:
    """Close wandb so that every multirun job gets its own run."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not math.isnan(value):
            out[key] = value
    return out


def format_metrics(metrics: dict[str, float], prefixes: tuple[str, ...] = ("val", "test")) -> str:
    """A small aligned table of R@k/SumR per split, with chance beside it."""
    names = ("R@1", "R@5", "R@10", "R@100", "SumR")
    rows: list[tuple[str, list[float | None]]] = []
    for prefix in prefixes:
        # PREM's retriever (and the localizer's VR) report VR_R@k; the chance level is keyed
        # without the task prefix.
        task = "VR_" if f"{prefix}/VR_R@1" in metrics else ""
        rows.append(
            (f"{prefix} {task[:-1]}".strip(), [metrics.get(f"{prefix}/{task}{n}") for n in names])
        )
        # The PREM localizer's moment retrieval: VCMR / SVMR R@k at each IoU threshold.
        for moment_task in ("VCMR", "SVMR"):
            for iou in ("0.5", "0.7"):
                row = [metrics.get(f"{prefix}/{moment_task}_{n} IoU{iou}") for n in names]
                rows.append((f"{prefix} {moment_task}@{iou}", row))
        rows.append((f"{prefix} chance", [metrics.get(f"{prefix}/{n}_chance") for n in names]))
    width = max(14, *(len(label) + 1 for label, _ in rows))
    lines = [f"{'split':<{width}}" + "".join(f"{n:>9}" for n in names)]
    for label, row in rows:
        if any(v is not None for v in row):
            cells = "".join(f"{v:9.2f}" if v is not None else f"{'-':>9}" for v in row)
            lines.append(f"{label:<{width}}{cells}")
    return "\n".join(lines)


def train(cfg: DictConfig) -> float:
    """Fit, select the best checkpoint, evaluate it, write metrics.json; return `cfg.monitor`."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    output_dir = Path(cfg.paths.output_dir)
    metrics_path = output_dir / "metrics.json"
    if metrics_path.exists():
        raise FileExistsError(
            f"{metrics_path} already exists: this directory holds a finished run; "
            "choose another hydra.run.dir instead of overwriting it"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    _set_wandb_group(cfg)
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    last = output_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if last.exists() else None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=False)
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or None
        metrics: dict[str, float] = {}
        validated = trainer.validate(
            model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=False
        )
        metrics.update(_flat_metrics(validated[0] if validated else {}))
        if cfg.get("run_test") and "test" in getattr(datamodule, "splits", {"test": None}):
            tested = trainer.test(
                model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=False
            )
            metrics.update(_flat_metrics(tested[0] if tested else {}))
        if hasattr(datamodule, "num_videos"):
            for split in ("val", "test"):
                if split in datamodule.splits:
                    chance = chance_recall(datamodule.num_videos(split))
                    metrics.update({f"{split}/{k}_chance": v for k, v in chance.items()})
        if best:
            metrics["best_epoch"] = float(
                torch.load(best, map_location="cpu", weights_only=False)["epoch"]
            )
            metrics["best_checkpoint"] = best  # type: ignore[assignment]
        metrics["epochs_trained"] = float(trainer.current_epoch)
        # Stage outputs a later stage reads (e.g. the retriever's ranking file): the module
        # writes them into this run's directory and may add metrics.
        export = getattr(model, "export_artifacts", None)
        if callable(export):
            metrics.update(export(trainer, datamodule, output_dir) or {})
        if trainer.is_global_zero:
            metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
            print(format_metrics(metrics))
            print(f"metrics written to {metrics_path}")
        for lg in loggers:
            lg.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, float)})
    finally:
        _finish_wandb(loggers)
    monitored = metrics.get(cfg.monitor)
    if monitored is None:
        raise KeyError(f"monitor {cfg.monitor!r} is not among the metrics {sorted(metrics)}")
    return float(monitored)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
