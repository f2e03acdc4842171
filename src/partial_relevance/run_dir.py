"""Who may write into a run directory: a finished run is read-only, a live run is locked.

A run directory is finished once it holds `metrics.json`; a rerun then refuses and changes no
byte there. A live run holds an exclusive `flock` on `<run dir>/run.lock` for its whole life,
so a second process started on the same directory (same `run_name`) is refused at once.

Hydra writes `.hydra/` into the run directory before the task function starts, so the
decision is taken earlier, while Hydra resolves `hydra.output_subdir`
(conf/hydra/default.yaml: `output_subdir: ${pr_run_subdir:${hydra:runtime.output_dir}}`): the
resolver answers `.hydra` only when this process may write (and then holds the lock), else
`None`, which makes Hydra write no config at all; `train`/`evaluate` then refuse in one line.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from omegaconf import OmegaConf

METRICS_FILE = "metrics.json"
LOCK_FILE = "run.lock"
HYDRA_SUBDIR = ".hydra"
RESOLVER = "pr_run_subdir"

# This process's locks, one open descriptor per run directory (flock is per open file).
_LOCKS: dict[str, int] = {}


class RunRefusedError(FileExistsError):
    """The run directory is finished or used by another live process."""


def _key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


def is_main_process() -> bool:
    """False in the extra ranks a DDP/SLURM launch starts: only rank 0 owns the directory."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "0") not in ("", "0"):
            return False
    return True


def refusal(run_dir: str | Path) -> str | None:
    """Why this process may not write into `run_dir` (one line), or None when it may.

    Takes the directory's lock when free (kept until `release`); creates nothing in a
    finished directory.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if metrics.exists():
        return (
            f"{metrics} already exists: this directory holds a finished run and is read-only; "
            "choose another run_name / hydra.run.dir, or evaluate it with "
            f"`evaluate run_dir={run_dir}`"
        )
    if not is_main_process() or _key(run_dir) in _LOCKS:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return f"{run_dir} is in use by another live run (pid {owner}, {lock_path}); not started"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[_key(run_dir)] = fd
    return None


def acquire(run_dir: str | Path) -> None:
    """Raise RunRefusedError unless this process may write into `run_dir` (then holds its lock)."""
    reason = refusal(run_dir)
    if reason is not None:
        raise RunRefusedError(reason)


def release(run_dir: str | Path) -> None:
    """Drop this process's lock of `run_dir` (the lock file stays; it holds no state)."""
    fd = _LOCKS.pop(_key(run_dir), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def hydra_output_subdir(output_dir: str) -> str | None:
    """Resolver of `hydra.output_subdir`: `.hydra` when the run may write, else None."""
    return HYDRA_SUBDIR if refusal(output_dir) is None else None


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, hydra_output_subdir)
