"""A callback that sends this process a signal at a chosen point of a run (kill tests)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """Send `signal` to this process at `hook` of `epoch` (once, then `batch` batches in).

    hook: `train_batch` (mid-epoch), `val_batch` (in-fit validation), `test_batch` (the final
    test), `val_end` (right after the epoch's validation, while checkpoints are written).
    Nothing happens when the marker file `once` exists (so the rerun is not killed again).
    """

    def __init__(
        self,
        hook: str,
        epoch: int = 0,
        batch: int = 0,
        sig: str = "SIGTERM",
        once: str | None = None,
    ) -> None:
        self.hook, self.epoch, self.batch, self.sig, self.once = hook, epoch, batch, sig, once

    def _fire(self, trainer: pl.Trainer, hook: str, batch_idx: int) -> None:
        if hook != self.hook or batch_idx != self.batch:
            return
        if hook != "test_batch" and trainer.current_epoch != self.epoch:
            return
        if self.once:
            if os.path.exists(self.once):
                return
            open(self.once, "w").close()
        os.kill(os.getpid(), getattr(signal, self.sig))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._fire(trainer, "train_batch", batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl=0):
        if trainer.state.fn == "fit":
            self._fire(trainer, "val_batch", batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl=0):
        self._fire(trainer, "test_batch", batch_idx)

    def on_train_epoch_start(self, trainer, pl_module):
        self._fire(trainer, "epoch_start", 0)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._fire(trainer, "save", 0)
