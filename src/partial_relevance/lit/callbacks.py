"""Callbacks the training entry point registers (conf/callbacks/default.yaml)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info


class SaveOnSigterm(pl.Callback):
    """Write `last.ckpt` when the run is stopped by SIGTERM (preemption, `scancel`, `kill`).

    Lightning notices SIGTERM itself (every rank learns of it), finishes the current batch and
    raises `SIGTERMException`, but saves nothing. This callback saves the full training state
    at that point into `dirpath/last.ckpt`, where `train(cfg)` finds it when the same command
    is run again (`run_name=...`, a sweep job's fixed directory, or a SLURM requeue), and the
    process then exits with status 143. `trainer.save_checkpoint` runs on every rank (rank 0
    writes).
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.saved_path: Path | None = None

    def _target(self, trainer: pl.Trainer) -> Path:
        dirpath = self.dirpath
        if dirpath is None:
            checkpoint = trainer.checkpoint_callback
            dirpath = getattr(checkpoint, "dirpath", None) or Path(trainer.default_root_dir)
        return Path(dirpath) / self.filename

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        path = self._target(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        # Lightning's SIGTERMException is a bare SystemExit (status 0): exit as a process killed
        # by SIGTERM does (128 + 15), so that wrappers and schedulers see an unfinished run.
        exception.code = 128 + signal.SIGTERM
        rank_zero_info(
            f"SIGTERM: training state saved to {path} (epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}); the same command resumes from it"
        )
