"""HDF5 feature stores: one dataset per key (XML/TVRetrieval and MS-SL query files).

The file is opened lazily in each process (h5py handles do not survive a fork). A dataset
stored contiguously and uncompressed (every MS-SL and XML file) is read with one `preadv` at
its byte offset, which the store looks up once per key, for `length` or `get` whichever comes
first (TVR-shaped query file, per key with the checks of `get`: h5py 250 µs every pass; here
85-125 µs for the first evaluation's `length` + `get`, 20-45 µs a `get` after). Chunked,
compressed, compact, external or unallocated datasets, and files with a user block, go
through h5py.
"""

from __future__ import annotations

import math
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

    def _location(self, key: str) -> tuple[int, tuple[int, ...], np.dtype] | None:
        """`_locate(key)`, looked up once per key (`length` and `get` share it)."""
        if key in self._locations:
            return self._locations[key]
        location = self._locations[key] = self._locate(key)
        return location

    def _get(self, key: str) -> np.ndarray:
        location = self._location(key)
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
        # HDF5 gives an offset only to a contiguous dataset stored in this file (None when
        # chunked, compressed, compact, external or not yet allocated).
        offset = dataset.get_offset()
        if offset is None:
            return None
        dtype, shape = dataset.dtype, tuple(dataset.shape)
        if dtype.kind not in "fiu":
            return None
        if dataset.get_storage_size() != dtype.itemsize * math.prod(shape):
            return None
        return int(offset), shape, dtype

    def length(self, key: str) -> int:
        """Rows of dataset `key` from its shape (no read); a contiguous dataset's shape comes
        with its location, which `get` then reuses."""
        try:
            location = self._location(key)
            if location is not None:
                return int(location[1][0])
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
