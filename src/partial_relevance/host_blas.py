"""numpy's own BLAS kept off torch's cores: `numpy_blas_threads` in `conf/host/default.yaml`.

numpy wheels bundle their own BLAS (OpenBLAS) with its own thread pool. The data layer's numpy
products are small (mean pooling, `[32, n] @ [n, D]` a video), and after each one that pool's
threads keep spinning for a while, taking the cores from the torch kernels that follow: on the
issue #19 host a TVR-scale evaluation's video encoding took 3.10 s a pass with numpy's default
(2 threads) and 2.49 s with one. `limit_numpy_blas` sets the threads of the BLAS libraries that
numpy ships inside its own installation only; torch's BLAS and OpenMP pool, and a BLAS that
numpy shares with other packages (a conda environment's MKL or OpenBLAS), are left as they are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from partial_relevance.cli import ConfigError

log = logging.getLogger(__name__)


def _numpy_dirs() -> tuple[Path, ...]:
    """Where a numpy wheel keeps its bundled libraries (`numpy.libs`, `numpy/.libs`,
    `numpy/.dylibs`): anything under these is numpy's own."""
    package = Path(np.__file__).resolve().parent
    return package, package.parent / "numpy.libs"


def numpy_blas_controllers() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded from numpy's own directories."""
    owned = _numpy_dirs()
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return [
        lib
        for lib in controllers
        if any(Path(lib.filepath).resolve().is_relative_to(d) for d in owned)
    ]


def limit_numpy_blas(threads: int | None) -> list[str]:
    """Give numpy's bundled BLAS `threads` threads (`numpy_blas_threads`; None: leave it).

    Returns the paths of the libraries changed (none when numpy uses a BLAS it shares). The
    setting lasts for the process and is inherited by forked DataLoader workers.
    """
    if threads is None:
        return []
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(
            f"numpy_blas_threads must be a positive integer or null, got {threads!r} "
            "(conf/host/default.yaml)"
        )
    changed = []
    for lib in numpy_blas_controllers():
        lib.set_num_threads(threads)
        changed.append(str(lib.filepath))
    if not changed:
        log.info("numpy_blas_threads: numpy ships no BLAS of its own here; nothing changed")
    return changed
