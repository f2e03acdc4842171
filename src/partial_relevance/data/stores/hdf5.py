"""HDF5 feature stores: one dataset per key (XML/TVRetrieval and MS-SL query files).

The file is opened lazily in each process (h5py handles do not survive a fork). A dataset
stored contiguously and uncompressed (every MS-SL and XML file) is read with one `preadv` at
its byte offset, which the store looks up once per key (TVR-shaped query file, per key with
the checks of `get`: h5py 250 µs every pass; here 205 µs the first pass, 44 µs every later
one). Chunked, compressed or unallocated datasets, and files with a user block, go through
h5py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.data.stores.base import FeatureStore, read_into

MASK_SUFFIX = "-mask"


class Hdf5Store(FeatureStore):
    """`key -> [n, D]` from an HDF5 file (optionally inside `group`); `-mask` keys hidden."""

    def __init__(
        self, path: str | Path, expected_dim: int | None = None, group: str | None = None
    ) -> None:
        self.path = require_exists(path, "HDF5 feature file")
        self.group = group
        self._file: h5py.File | None = None
        self._fd: int | None = None
        # key -> (byte offset, shape, dtype) of a contiguous dataset, or None: read via h5py
        self._locations: dict[str, tuple[int, tuple[int, ...], np.dtype] | None] = {}
        try:
            root = self._root()
        except OSError as error:
            raise DataError(self.path, f"cannot be opened as HDF5: {error}") from None
        self._keys = [k for k in root if not k.endswith(MASK_SUFFIX)]
        if not self._keys:
            raise DataError(self.path, "holds no feature datasets")
        if not isinstance(root[self._keys[0]], h5py.Dataset):
            raise DataError(
                self.path,
                f"entry {self._keys[0]!r} is a group, not a feature dataset",
                "a consolidated file needs group='video' | 'sub' | 'query'",
            )
        self._dim = int(root[self._keys[0]].shape[-1])
        # Dataset offsets count from the end of a user block: direct reads only without one.
        self._direct_reads = self._file is not None and not self._file.userblock_size
        self.check_dim(expected_dim)

    def _root(self) -> h5py.Group:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        if self.group is None:
            return self._file
        if self.group not in self._file:
            raise DataError(self.path, f"group {self.group!r} not found")
        return self._file[self.group]

    @property
    def dim(self) -> int:
        return self._dim

    def keys(self) -> Iterable[str]:
        return self._keys

    def __contains__(self, key: str) -> bool:
        return key in self._root()

    def _get(self, key: str) -> np.ndarray:
        if key not in self._locations:
            self._locations[key] = self._locate(key)
        location = self._locations[key]
        if location is None:
            return self._root()[key][()]  # h5py raises KeyError for an absent key
        offset, shape, dtype = location
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return read_into(self._fd, np.empty(shape, dtype=dtype), offset, self.path, f"key {key!r}")

    def _locate(self, key: str) -> tuple[int, tuple[int, ...], np.dtype] | None:
        """Where dataset `key`'s raw bytes lie in the file, when one read can take them:
        contiguous layout, allocated, a plain numeric dtype, a file without a user block.
        None otherwise. KeyError when absent."""
        root = self._root()
        if not self._direct_reads:
            return None
        try:  # the low-level API: h5py's Dataset wrapper costs ~100 µs a key
            dataset = h5py.h5d.open(root.id, key.encode())
        except KeyError:
            raise
        except Exception:  # not a dataset (a group, a broken link): h5py says what it is
            return None
        dtype, shape = dataset.dtype, tuple(dataset.shape)
        layout = dataset.get_create_plist().get_layout()
        if dtype.kind not in "fiu" or layout != h5py.h5d.CONTIGUOUS:
            return None
        offset = dataset.get_offset()
        if offset is None or dataset.get_storage_size() != dtype.itemsize * int(np.prod(shape)):
            return None
        return int(offset), shape, dtype

    def length(self, key: str) -> int:
        """Rows of dataset `key` from its shape (no read)."""
        try:
            return int(self._root()[key].shape[0])
        except KeyError:
            raise DataError(self.path, f"key {key!r} not found in feature store") from None

    def get_mask(self, key: str) -> np.ndarray | None:
        """The `key-mask` dataset (1 where a subtitle overlaps the clip), or None if absent."""
        root = self._root()
        name = key + MASK_SUFFIX
        return np.asarray(root[name][()], dtype=np.float32) if name in root else None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_fd"] = None
        return state
