"""Callbacks (and the checkpoint writer) the training entry point registers
(conf/callbacks/default.yaml; `AtomicCheckpointIO` is added by `train(cfg)`).

Together they make every kill resumable: SIGTERM saves the training state (never a
half-validated one), checkpoints are written under a temporary name and renamed into place
(a SIGKILL leaves the previous file intact), and the RNG states travel in the checkpoint, so a
run resumed from an epoch-boundary checkpoint draws the same batches and dropout masks as the
uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

SIGTERM_EXIT = 128 + signal.SIGTERM  # the status of a process killed by SIGTERM


class SaveOnSigterm(pl.Callback):
    """Write `last.ckpt` when the run is stopped by SIGTERM (preemption, `scancel`, `kill`).

    Lightning notices SIGTERM itself (every rank learns of it), finishes the current batch and
    raises `SIGTERMException`, but saves nothing. During training this callback saves the full
    training state into `dirpath/last.ckpt`, where `train(cfg)` finds it when the same command
    is run again (`run_name=...`, a sweep job's fixed directory, or a SLURM requeue). During
    the in-fit validation it saves nothing: a half-validated state cannot resume (the epoch's
    metrics are gone), so the rerun resumes from the previous epoch's checkpoint instead. In
    every stage (also the final validate/test) the process exits with status 143, so that
    wrappers and schedulers see an unfinished run. `trainer.save_checkpoint` runs on every
    rank (rank 0 writes).
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
        if not isinstance(exception, SIGTERMException):
            return
        # Lightning's SIGTERMException is a bare SystemExit (status 0): exit as a process
        # killed by SIGTERM does (128 + 15).
        exception.code = SIGTERM_EXIT
        if trainer.state.fn != "fit":
            rank_zero_info("SIGTERM during evaluation: nothing saved; the same command reruns it")
            return
        if trainer.state.stage in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            rank_zero_info(
                "SIGTERM during validation: nothing saved; the same command resumes from the "
                "previous checkpoint and repeats this epoch"
            )
            return
        path = self._target(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_info(
            f"SIGTERM: training state saved to {path} (epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}); the same command resumes from it"
        )


class LastEveryEpoch(ModelCheckpoint):
    """`ModelCheckpoint` whose `save_last=True` writes `last.ckpt` at every epoch end.

    Lightning 2.x writes `last.ckpt` only when it writes a top-k checkpoint, so after an
    epoch that did not improve the monitored metric `last.ckpt` is the best epoch's state and
    a resumed run would silently roll back and retrain from there. Here `last.ckpt` is always
    the latest epoch boundary (written once per epoch, after the top-k file when there is one).
    """

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        # `_should_skip_saving_checkpoint` is True when this step was saved already
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)


class RngState(pl.Callback):
    """Carry every RNG the run draws from in the checkpoint and restore it on resume.

    Saved: Python's `random`, NumPy's global generator, torch's CPU (and CUDA) generators and
    the `generator` of the train loader's sampler when it has one. Restored when the
    checkpoint is loaded, before the first resumed epoch draws its shuffle: a run resumed from
    an epoch-boundary checkpoint then repeats the uninterrupted run exactly (on CPU).
    """

    def __init__(self) -> None:
        self._sampler_state: torch.Tensor | None = None

    @staticmethod
    def _sampler_generator(trainer: pl.Trainer) -> torch.Generator | None:
        loader = getattr(trainer.fit_loop, "_combined_loader", None)
        loaders = getattr(loader, "flattened", None) or []
        for dataloader in loaders:
            for holder in (getattr(dataloader, "sampler", None), dataloader):
                generator = getattr(holder, "generator", None)
                if isinstance(generator, torch.Generator):
                    return generator
        return None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        trainer = getattr(self, "_trainer", None)
        generator = None if trainer is None else self._sampler_generator(trainer)
        if generator is not None:
            state["sampler"] = generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        np.random.set_state(state_dict["numpy"])
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        self._sampler_state = state_dict.get("sampler")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sampler_state is not None:
            generator = self._sampler_generator(trainer)
            if generator is not None:
                generator.set_state(self._sampler_state)
            self._sampler_state = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file beside the target, fsync, then rename over it.

    A kill at any moment leaves either the previous complete file or the new complete one
    under the checkpoint's name, never a truncated one.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
