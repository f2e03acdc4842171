"""Training entry point: `python -m partial_relevance.train [overrides]`.

`train(cfg)` is callable in-process (tests, sweepers, the PREM pipeline) and returns a
`RunResult`: the metrics and the paths of everything the run wrote. Every run writes
`metrics.json` (flat keys such as `val/R@1`, `val/SumR`, `test/SumR`, the chance level
`val/SumR_chance`, and the written files under `"artifacts"`) and Hydra's `.hydra/` into its
own output directory. A finished directory (with `metrics.json`) is read-only and one
directory holds one live process (`run_dir.py`). Any kill resumes: the same command continues
from `checkpoints/last.ckpt`, or, when the fit had finished, only repeats the evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from partial_relevance import quiet, run_dir
from partial_relevance.cli import check_config_types, exits_on_user_error
from partial_relevance.host_settings import apply_host_settings
from partial_relevance.lit.callbacks import SIGTERM_EXIT, AtomicCheckpointIO
from partial_relevance.metrics.retrieval import chance_recall
from partial_relevance.models.precision import cpu_has_bf16_units

# The configs ship inside the package (src/partial_relevance/conf -> ../../conf, package data):
# Hydra searches them as `pkg://`, in-process composers (initialize_config_dir) use the path.
CONFIG_PATH = "pkg://partial_relevance.conf"
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
FIT_COMPLETE = "fit_complete.json"  # in checkpoints/: the fit ended; a rerun only evaluates
log = logging.getLogger(__name__)
# Known-harmless third-party console noise (partial_relevance/quiet.py), before Hydra's app
# (and an Optuna sweeper) starts: every entry point imports this module.
quiet.install()


@dataclass(frozen=True)
class RunResult:
    """What one `train(cfg)` produced (TEAM.md interface 2).

    metrics: flat float metrics (as in metrics.json, without the paths);
    artifacts: name -> file the run wrote for a later stage (e.g. `ranking_file`);
    monitored: the value of `cfg.monitor` (what sweepers optimise).
    """

    metrics: dict[str, float]
    output_dir: Path
    metrics_file: Path
    best_checkpoint: Path | None
    monitored: float
    artifacts: dict[str, Path] = field(default_factory=dict)


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


def chance_metrics(datamodule: Any) -> dict[str, float]:
    """`<split>/<metric>_chance` for the val and test splits of a retrieval datamodule."""
    out: dict[str, float] = {}
    if hasattr(datamodule, "num_videos"):
        for split in ("val", "test"):
            if split in getattr(datamodule, "splits", {}):
                chance = chance_recall(datamodule.num_videos(split))
                out.update({f"{split}/{k}_chance": v for k, v in chance.items()})
    return out


def _readable_checkpoint(path: Path) -> bool:
    """A complete `torch.save` file: its zip central directory (at the end) is intact."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint a rerun resumes from: `last.ckpt`, else the newest other complete one.

    Leftover temporary files of a write killed half-way are removed; an unreadable
    checkpoint (a half-written file from an older writer) is skipped with a warning.
    """
    if not checkpoint_dir.is_dir():
        return None
    for stale in checkpoint_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    others = sorted(
        (p for p in checkpoint_dir.glob("*.ckpt") if p.name != "last.ckpt"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in [checkpoint_dir / "last.ckpt", *others]:
        if not candidate.exists():
            continue
        if _readable_checkpoint(candidate):
            return candidate
        log.warning("%s is incomplete or corrupt; not resuming from it", candidate)
    return None


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _split_export(exported: dict[str, Any]) -> tuple[dict[str, float], dict[str, Path]]:
    """What `export_artifacts` returned: float metrics and file paths (everything else)."""
    metrics, artifacts = {}, {}
    for key, value in (exported or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
        else:
            artifacts[key] = Path(str(value))
    return metrics, artifacts


def warn_emulated_bf16(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Warn when bf16 runs on a CPU without bf16 units: it is emulated there, many times slower
    than fp32 (the numbers stay right; only the time is lost)."""
    bf16 = "bf16" in str(trainer.precision) or cfg.get("eval_precision") == "bf16"
    on_cpu = type(trainer.accelerator).__name__ == "CPUAccelerator"
    if bf16 and on_cpu and cpu_has_bf16_units() is False:
        log.warning(
            "precision=bf16 on a CPU without bf16 units (no amx_bf16/avx512_bf16 flag): bf16 "
            "matmuls are emulated here, far slower than fp32; drop precision=bf16 on this host"
        )


def train(cfg: DictConfig) -> RunResult:
    """Fit (or resume), evaluate the best checkpoint, write metrics.json; return a RunResult."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    output_dir = Path(cfg.paths.output_dir)
    metrics_path = output_dir / run_dir.METRICS_FILE
    for group in ("trainer", "data", "model"):
        check_config_types(cfg.get(group), group)
    main_process = run_dir.is_main_process()
    if main_process:
        run_dir.acquire(output_dir)  # refuses a finished or live directory
    try:
        return _train(cfg, output_dir, metrics_path)
    finally:
        if main_process:
            run_dir.release(output_dir)


def _train(cfg: DictConfig, output_dir: Path, metrics_path: Path) -> RunResult:
    apply_host_settings(cfg)  # before the data and the model allocate
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    _set_wandb_group(cfg)
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:  # nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    warn_emulated_bf16(cfg, trainer)

    checkpoint_dir = output_dir / "checkpoints"
    fit_marker = checkpoint_dir / FIT_COMPLETE
    try:
        if fit_marker.exists():  # killed after the fit: repeat only the evaluation
            done = json.loads(fit_marker.read_text())
            best = done.get("best_checkpoint") or str(checkpoint_dir / "last.ckpt")
            epochs_trained = float(done["epochs_trained"])
            log.info("fit already complete (%s); evaluating %s", fit_marker, best)
        else:
            resume = resume_checkpoint(checkpoint_dir)
            if resume is not None:
                log.info("resuming from %s", resume)
            trainer.fit(
                model,
                datamodule=datamodule,
                ckpt_path=None if resume is None else str(resume),
                weights_only=False,
            )
            checkpoint = trainer.checkpoint_callback
            best = getattr(checkpoint, "best_model_path", "") or None
            epochs_trained = float(trainer.current_epoch)
            if trainer.is_global_zero:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                _write_json_atomic(
                    fit_marker, {"best_checkpoint": best, "epochs_trained": epochs_trained}
                )
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
        metrics.update(chance_metrics(datamodule))
        if best:
            metrics["best_epoch"] = float(
                torch.load(best, map_location="cpu", weights_only=False)["epoch"]
            )
        metrics["epochs_trained"] = epochs_trained
        # Stage outputs a later stage reads (e.g. the retriever's ranking file): the module
        # writes them into this run's directory and may add metrics.
        export = getattr(model, "export_artifacts", None)
        exported_metrics, artifacts = _split_export(
            export(trainer, datamodule, output_dir) if callable(export) else {}
        )
        metrics.update(exported_metrics)
        monitored = metrics.get(cfg.monitor)
        if monitored is None:
            raise KeyError(f"monitor {cfg.monitor!r} is not among the metrics {sorted(metrics)}")
        if trainer.is_global_zero:
            payload: dict[str, Any] = {**metrics, **{k: str(v) for k, v in artifacts.items()}}
            if best:
                payload["best_checkpoint"] = best
            payload["artifacts"] = {k: str(v) for k, v in artifacts.items()}
            _write_json_atomic(metrics_path, payload)  # last: it marks the run finished
            log.info("results of %s\n%s", output_dir, format_metrics(metrics))
            log.info("metrics written to %s", metrics_path)
        for lg in loggers:
            lg.log_metrics({f"final/{k}": v for k, v in metrics.items()})
    except SIGTERMException as stop:  # also in the final validate/test: never a silent exit 0
        stop.code = SIGTERM_EXIT
        raise
    finally:
        _finish_wandb(loggers)
    return RunResult(
        metrics=metrics,
        output_dir=output_dir,
        metrics_file=metrics_path,
        best_checkpoint=None if not best else Path(best),
        monitored=float(monitored),
        artifacts=artifacts,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@exits_on_user_error
def main(cfg: DictConfig) -> float:
    """`python -m partial_relevance.train`: one line on stderr and exit 1 on a user error."""
    return train(cfg).monitored


if __name__ == "__main__":
    main()
