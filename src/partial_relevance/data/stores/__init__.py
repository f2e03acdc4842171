"""Feature stores behind one interface (`FeatureStore`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from partial_relevance.data.errors import DataError
from partial_relevance.data.stores.base import FeatureStore

STORE_FORMATS = ("bigfile", "hdf5", "lmdb")


def open_store(
    format: str, path: str | Path, expected_dim: int | None = None, **kwargs: Any
) -> FeatureStore:
    """Open a feature store by format name (what `data=` configs and the converter name).

    `bigfile`: an MS-SL `FeatureData/<feature>/` directory; `hdf5`: an XML-style file
    (`group=` for one group of a consolidated file); `lmdb`: a HERO/CONQUER LMDB directory
    (`id2nframe=`). Imports are local so that reading one format needs only its library.
    """
    if format == "bigfile":
        from partial_relevance.data.stores.bigfile import BigFileStore

        return BigFileStore(path, expected_dim, **kwargs)
    if format == "hdf5":
        from partial_relevance.data.stores.hdf5 import Hdf5Store

        return Hdf5Store(path, expected_dim, **kwargs)
    if format == "lmdb":
        from partial_relevance.data.stores.lmdb import LmdbStore

        return LmdbStore(path, expected_dim, **kwargs)
    raise ValueError(f"unknown feature store format {format!r}; valid: {', '.join(STORE_FORMATS)}")


def require_keys(store: FeatureStore, keys: Iterable[str], source: str | Path) -> None:
    """Raise DataError, naming `source` and the first missing key, unless `store` has every key.

    `source` is the annotation (or split) file the keys come from: the error points at the
    file that asks for features the store does not have, e.g. a caption of a video without
    features.
    """
    available = set(store.keys())
    missing = [key for key in dict.fromkeys(keys) if key not in available]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            source,
            f"key {missing[0]!r}{more} has no features in {store.path}",
            "is the feature store for the same dataset and split?",
        )


def require_nonempty(store: FeatureStore, keys: Iterable[str], source: str | Path) -> None:
    """Raise DataError naming the store, the key and `source` for a key with zero rows (an
    empty query or video), where the store knows lengths without reading (BigFile, HDF5);
    other stores catch it when the key is read."""
    for key in keys:
        if store.length(key) == 0:
            raise DataError(
                store.path, f"key {key!r} (from {Path(source).name}) holds zero rows (empty)"
            )


__all__ = [
    "STORE_FORMATS",
    "DataError",
    "FeatureStore",
    "open_store",
    "require_keys",
    "require_nonempty",
]
