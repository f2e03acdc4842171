"""The feature-store interface every reader implements (BigFile, HDF5, LMDB)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from partial_relevance.data.errors import DataError


class FeatureStore(ABC):
    """A read-only mapping `key -> float32 array [n, dim]`.

    Implementations raise `DataError` naming the file and key on a missing key, and check the
    feature dim against `expected_dim` when given.
    """

    path: Path

    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature dimension (last axis of every array)."""

    @abstractmethod
    def keys(self) -> Iterable[str]:
        """Every key the store holds."""

    @abstractmethod
    def _get(self, key: str) -> np.ndarray:
        """Raw array for `key` (any float dtype); `KeyError` when absent."""

    def __contains__(self, key: str) -> bool:
        return key in set(self.keys())

    def get(self, key: str) -> np.ndarray:
        """The float32 array for `key`; a clear DataError when the key is absent."""
        try:
            array = self._get(key)
        except KeyError:
            raise DataError(self.path, f"key {key!r} not found in feature store") from None
        return np.asarray(array, dtype=np.float32)

    def length(self, key: str) -> int | None:
        """Rows stored under `key` (frames, clips or tokens) when known without reading it.

        Stores that know their shapes (BigFile, HDF5) answer, so loaders can order items by
        length (less padding per batch) at no I/O cost; the default, None, means unknown.
        """
        return None

    def check_dim(self, expected_dim: int | None, what: str = "feature") -> None:
        """Raise DataError when the store's dim differs from the configured one."""
        if expected_dim is not None and self.dim != expected_dim:
            raise DataError(
                self.path,
                f"{what} dim is {self.dim} but the config expects {expected_dim}",
                "check data.*_dim against the feature files",
            )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles (stores reopen lazily)."""
