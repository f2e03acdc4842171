"""Known-harmless third-party console noise, silenced at its source (`install()`).

Every run printed, besides its own output, the same lines from libraries: Lightning's
marketing tips, a deprecation inside Lightning that torch announces, wandb complaining about
a setting Lightning always passes, and Optuna's storage migrations. Each filter below names
the line it removes and why that line tells the user nothing; anything else (a new warning, a
real problem) still shows. The entry points call `install()` (train, evaluate, tables, the
PREM pipeline); it is idempotent.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl

_INSTALLED = False


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def install() -> None:
    """Install the filters (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    # Lightning >= 2.6 advertises its cloud products on every Trainer: "💡 Tip: ... litlogger"
    # (logger_connector) and "... litmodels" (callback_connector), through rank_zero_info.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropMessages("💡 Tip:"))
    # torch >= 2.10 deprecates `LeafSpec`; Lightning's own utilities/_pytree.py still builds
    # one on every batch transfer. Lightning's code, not ours: nothing to act on.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # Optuna's RDB storage runs alembic schema migrations and alembic logs each step at INFO
    # ("Context impl SQLiteImpl.", "Will assume non-transactional DDL."): bookkeeping only.
    logging.getLogger("alembic").setLevel(logging.WARNING)


class WandbLogger(pl.loggers.WandbLogger):
    """Lightning's WandbLogger without the `anonymous=None` it always passes to `wandb.init`:
    wandb >= 0.19 ignores the setting and warns "The anonymous setting has no effect and will
    be removed" on every run. Same arguments and behaviour otherwise (`conf/logger/wandb.yaml`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
