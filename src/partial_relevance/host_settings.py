"""The process-wide host settings `train` and `evaluate` apply first (`conf/host/default.yaml`):
the host allocator (`malloc`, `host_malloc`) and numpy's BLAS threads (`numpy_blas_threads`,
`host_blas`), before the data and the model allocate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from partial_relevance.host_blas import limit_numpy_blas
from partial_relevance.host_malloc import set_malloc


def apply_host_settings(cfg: Mapping[str, Any]) -> None:
    """Apply `cfg.malloc` and `cfg.numpy_blas_threads` to this process (both last for it)."""
    set_malloc(cfg["malloc"])
    limit_numpy_blas(cfg["numpy_blas_threads"])
