"""HERO / CONQUER LMDB feature stores (SPEC §1.2): `vid_name` (utf-8) -> encoded array.

Three value encodings ship in the wild and one store can mix them, so each value is decoded
by its first bytes:
- msgpack-numpy dict `{"features": [n, D]}` (HERO video features, often float16);
- `np.savez` bytes with key `features` (CONQUER query/subtitle stores);
- `np.savez_compressed` bytes (HERO's `*_compressed` video LMDB).
Both npz forms are zip archives and start with b"PK"; anything else is read as msgpack.

HERO pads the stored arrays; its `id2nframe.json` (beside the LMDB directory, i.e. in its
parent, or inside it) gives each video's true clip count, and reads are truncated to it.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lmdb
import msgpack
import msgpack_numpy
import numpy as np

from partial_relevance.data.errors import DataError, load_json, require_exists
from partial_relevance.data.stores.base import FeatureStore

FEATURE_KEY = "features"
ID2NFRAME = "id2nframe.json"
NPZ_MAGIC = b"PK"
Encoding = Literal["msgpack", "npz", "npz_compressed"]

# One environment per (LMDB path, process): py-lmdb refuses to open the same path twice in a
# process, so every store of a path (e.g. an unpickled copy) shares the handle opened here.
_ENVIRONMENTS: dict[tuple[str, int], lmdb.Environment] = {}


def decode_value(value: bytes) -> np.ndarray:
    """One LMDB value -> its `features` array (dtype as stored). Raises ValueError if bad."""
    if value[:2] == NPZ_MAGIC:
        try:
            with np.load(io.BytesIO(value), allow_pickle=False) as archive:
                if FEATURE_KEY not in archive.files:
                    raise ValueError(f"npz holds {archive.files}, no {FEATURE_KEY!r} array")
                return archive[FEATURE_KEY]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(f"not a valid npz archive: {error}") from None
    try:
        decoded = msgpack.unpackb(value, raw=False, object_hook=msgpack_numpy.decode)
    except Exception as error:  # msgpack raises several unrelated types on bad bytes
        raise ValueError(
            f"neither npz nor msgpack-numpy: {type(error).__name__}: {error}"
        ) from None
    if isinstance(decoded, dict):
        # Older HERO dumps were written with raw keys: accept b"features" as well.
        array = decoded.get(FEATURE_KEY, decoded.get(FEATURE_KEY.encode()))
        if array is None:
            raise ValueError(f"msgpack dict holds keys {sorted(map(str, decoded))}, no 'features'")
        return np.asarray(array)
    if isinstance(decoded, np.ndarray):
        return decoded
    raise ValueError(f"msgpack value is a {type(decoded).__name__}, expected {{'features': array}}")


def encode_value(array: np.ndarray, encoding: Encoding) -> bytes:
    """The inverse of `decode_value` for one array."""
    if encoding == "msgpack":
        return msgpack.packb({FEATURE_KEY: array}, default=msgpack_numpy.encode, use_bin_type=True)
    buffer = io.BytesIO()
    if encoding == "npz":
        np.savez(buffer, **{FEATURE_KEY: array})
    elif encoding == "npz_compressed":
        np.savez_compressed(buffer, **{FEATURE_KEY: array})
    else:
        raise ValueError(f"unknown encoding {encoding!r}; valid: msgpack, npz, npz_compressed")
    return buffer.getvalue()


def read_id2nframe(path: Path) -> dict[str, int]:
    """HERO `id2nframe.json`: `{vid_name: n_clips}`."""
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise DataError(path, "expected {vid_name: n_clips}")
    out: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(path, f"key {key!r}: expected a clip count, found {value!r}")
        out[key] = value
    return out


def find_id2nframe(path: Path) -> Path | None:
    """`id2nframe.json` inside the LMDB directory or beside it (HERO keeps it in the parent)."""
    for candidate in (path / ID2NFRAME, path.parent / ID2NFRAME):
        if candidate.is_file():
            return candidate
    return None


def check_lmdb_size(path: Path, env: lmdb.Environment) -> None:
    """DataError unless the data file holds every page its header counts.

    A truncated `data.mdb` opens fine, but reading a page past its end kills the process
    with SIGBUS; the header's last page number (`env.info()`) times the page size
    (`env.stat()`) is the size the file must have at least.
    """
    data_file = path / "data.mdb" if path.is_dir() else path
    needed = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    actual = data_file.stat().st_size
    if actual < needed:
        raise DataError(
            data_file,
            f"LMDB file is truncated: {actual} bytes, its header needs {needed} "
            "(an interrupted copy or download?)",
        )


class LmdbStore(FeatureStore):
    """`vid_name -> [n_clips, D]` float32 from a HERO/CONQUER LMDB (any of its encodings).

    `id2nframe`: "auto" (default) looks for `id2nframe.json` inside or beside the LMDB and
    truncates each video to its count; a path uses that file; None disables truncation.
    The LMDB environment opens lazily in each process (readonly, no lock, no readahead: many
    dataloader workers read one file at random). It lives in a per-process module cache, not
    on the store, so pickling carries no handle and a forked worker opens its own.
    Keys starting with "__" (metadata some dumps add) are not features and are skipped.
    """

    def __init__(
        self,
        path: str | Path,
        expected_dim: int | None = None,
        id2nframe: str | Path | None = "auto",
    ) -> None:
        self.path = require_exists(path, "LMDB feature store")
        self._keys: list[str] | None = None
        if id2nframe == "auto":
            found = find_id2nframe(self.path)
            self.nframes = None if found is None else read_id2nframe(found)
            self.id2nframe_path = found
        elif id2nframe is None:
            self.nframes, self.id2nframe_path = None, None
        else:
            self.id2nframe_path = require_exists(id2nframe, "HERO id2nframe.json")
            self.nframes = read_id2nframe(self.id2nframe_path)
        first = next(iter(self.keys()), None)
        if first is None:
            raise DataError(self.path, "LMDB holds no feature entries")
        self._dim = int(self._get(first).shape[-1])
        self.check_dim(expected_dim)

    def _open(self) -> lmdb.Environment:
        """This process's environment (reopened after a fork: LMDB handles do not survive it)."""
        cache_key = (str(self.path.resolve()), os.getpid())
        env = _ENVIRONMENTS.get(cache_key)
        if env is None:
            # A forked child inherits the parent's handle of this path, which py-lmdb still
            # counts as open; close the child's copy (its own mapping and descriptors only).
            for stale in [k for k in _ENVIRONMENTS if k[0] == cache_key[0]]:
                _ENVIRONMENTS.pop(stale).close()
            try:
                env = lmdb.open(
                    str(self.path),
                    subdir=self.path.is_dir(),
                    readonly=True,
                    lock=False,
                    readahead=False,
                    meminit=False,
                    max_readers=1024,
                )
            except lmdb.Error as error:
                raise DataError(self.path, f"cannot be opened as LMDB: {error}") from None
            try:
                check_lmdb_size(self.path, env)
            except DataError:
                env.close()
                raise
            _ENVIRONMENTS[cache_key] = env
        return env

    @property
    def dim(self) -> int:
        return self._dim

    def keys(self) -> Iterable[str]:
        if self._keys is None:
            with self._open().begin(buffers=False) as txn:
                keys = (k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False))
                self._keys = [k for k in keys if not k.startswith("__")]
        return self._keys

    def __contains__(self, key: str) -> bool:
        with self._open().begin() as txn:
            return txn.get(key.encode("utf-8")) is not None

    def __len__(self) -> int:
        return len(list(self.keys()))

    def _get(self, key: str) -> np.ndarray:
        with self._open().begin(buffers=False) as txn:
            value = txn.get(key.encode("utf-8"))
        if value is None:
            raise KeyError(key)
        try:
            array = decode_value(value)
        except ValueError as error:
            raise DataError(self.path, f"key {key!r}: cannot decode value ({error})") from None
        if array.ndim != 2:
            raise DataError(self.path, f"key {key!r}: expected [n_clips, D], found {array.shape}")
        if getattr(self, "_dim", None) is not None and array.shape[1] != self._dim:
            raise DataError(
                self.path, f"key {key!r}: feature dim {array.shape[1]}, the store's is {self._dim}"
            )
        if self.nframes is not None and key in self.nframes:
            array = array[: self.nframes[key]]
        return array

    def close(self) -> None:
        """Close this process's environment of the path (any store of it reopens lazily)."""
        env = _ENVIRONMENTS.pop((str(self.path.resolve()), os.getpid()), None)
        if env is not None:
            env.close()

    def __getstate__(self) -> dict[str, Any]:
        # The environment lives in the per-process module cache, never on the instance, so
        # the pickled state holds no handle; the unpickled store opens its own on first read.
        return self.__dict__.copy()


def write_lmdb(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    encoding: Encoding = "msgpack",
    dtype: type[np.floating] | np.dtype = np.float16,
) -> None:
    """Write `key -> array` as an LMDB directory in a HERO/CONQUER encoding (tests, tools).

    `dtype` is the stored dtype (HERO ships float16); readers cast back to float32.
    """
    if encoding not in ("msgpack", "npz", "npz_compressed"):
        raise ValueError(f"unknown encoding {encoding!r}; valid: msgpack, npz, npz_compressed")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    values = {k: encode_value(np.asarray(a, dtype=dtype), encoding) for k, a in arrays.items()}
    map_size = 2 * sum(len(k) + len(v) + 64 for k, v in values.items()) + (1 << 22)
    env = lmdb.open(str(path), map_size=map_size, subdir=True)
    try:
        with env.begin(write=True) as txn:
            for key, value in values.items():
                txn.put(key.encode("utf-8"), value)
    finally:
        env.close()
