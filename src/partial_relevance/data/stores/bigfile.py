"""MS-SL `FeatureData/<feature>/` BigFile: `feature.bin` read a whole video at a time.

Layout (SPEC §1.2): `shape.txt` ("N D"), `id.txt` (N frame ids in row order), `feature.bin`
(raw little-endian float32 `[N, D]`) and `video2frames.txt` (a dict literal, temporal order).
The peers open and seek the file once per frame; here a video whose frames are contiguous
rows (every MS-SL file) is one `preadv` straight into its array, and any other row order goes
through one memmap. Reading (rather than slicing a memmap) keeps a pass over a large corpus
from accumulating the file's mapped pages in the process's resident memory.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.data.stores.base import FeatureStore, read_into


def read_shape(path: Path) -> tuple[int, int]:
    """Parse `shape.txt` ("N D")."""
    parts = require_exists(path, "BigFile shape.txt").read_text().split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DataError(path, f"expected 'N D' (two integers), found {' '.join(parts)!r}")
    return int(parts[0]), int(parts[1])


def read_video2frames(path: Path) -> dict[str, list[str]]:
    """Parse `video2frames.txt` with `ast.literal_eval` (never `eval`)."""
    text = require_exists(path, "BigFile video2frames.txt").read_text()
    try:
        mapping = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise DataError(path, f"not a Python dict literal: {error}") from None
    if not isinstance(mapping, dict):
        raise DataError(path, f"expected a dict literal, found {type(mapping).__name__}")
    return {str(k): [str(f) for f in v] for k, v in mapping.items()}


class BigFileStore(FeatureStore):
    """Video id -> `[n_frames, D]` float32, read from one memmap of `feature.bin`."""

    def __init__(self, feature_dir: str | Path, expected_dim: int | None = None) -> None:
        self.path = require_exists(feature_dir, "BigFile feature directory")
        self.num_rows, self._dim = read_shape(self.path / "shape.txt")
        self.check_dim(expected_dim, "video feature")
        bin_path = require_exists(self.path / "feature.bin", "BigFile feature.bin")
        expected_bytes = self.num_rows * self._dim * 4
        actual_bytes = bin_path.stat().st_size
        if actual_bytes != expected_bytes:
            raise DataError(
                bin_path,
                f"holds {actual_bytes} bytes but shape.txt says {self.num_rows} x {self._dim} "
                f"float32 = {expected_bytes} bytes (truncated or wrong shape.txt?)",
            )
        id_path = require_exists(self.path / "id.txt", "BigFile id.txt")
        frame_ids = id_path.read_text().split()
        if len(frame_ids) != self.num_rows:
            raise DataError(
                id_path, f"lists {len(frame_ids)} frame ids but shape.txt says {self.num_rows}"
            )
        self.row_of = {frame_id: row for row, frame_id in enumerate(frame_ids)}
        v2f_path = self.path / "video2frames.txt"
        self.video2frames = read_video2frames(v2f_path)
        self._rows: dict[str, np.ndarray] = {}
        for video, frames in self.video2frames.items():
            if not frames:
                raise DataError(v2f_path, f"video {video!r} lists no frames (a zero-frame video)")
            try:
                self._rows[video] = np.fromiter((self.row_of[f] for f in frames), dtype=np.int64)
            except KeyError as error:
                raise DataError(
                    v2f_path, f"video {video!r} lists frame {error.args[0]!r}, absent from id.txt"
                ) from None
        self._bin_path = bin_path
        self._memmap: np.memmap | None = None
        self._fd: int | None = None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def features(self) -> np.memmap:
        """The whole `[N, D]` matrix as a read-only memmap (opened lazily, per process)."""
        if self._memmap is None:
            self._memmap = np.memmap(
                self._bin_path, dtype="<f4", mode="r", shape=(self.num_rows, self._dim)
            )
        return self._memmap

    def keys(self) -> Iterable[str]:
        return self.video2frames.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def length(self, key: str) -> int:
        """Frames of `key` from video2frames.txt (no read)."""
        if key not in self._rows:
            raise DataError(self.path, f"key {key!r} not found in feature store")
        return len(self._rows[key])

    def _get(self, key: str) -> np.ndarray:
        rows = self._rows[key]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            return self._read_rows(int(rows[0]), len(rows))  # one contiguous read
        return self.features[rows]

    def _read_rows(self, first: int, count: int) -> np.ndarray:
        """Rows [first, first + count) of feature.bin as float32 `[count, D]`, one syscall."""
        if self._fd is None:
            self._fd = os.open(self._bin_path, os.O_RDONLY)
        out = np.empty((count, self._dim), dtype="<f4")
        offset = first * self._dim * 4
        return read_into(self._fd, out, offset, self._bin_path, f"rows from {first}")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memmap = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_memmap"] = None  # reopen in worker processes
        state["_fd"] = None
        return state


def write_bigfile(
    feature_dir: str | Path, videos: dict[str, np.ndarray], frame_prefix_sep: str = "_"
) -> None:
    """Write videos (`id -> [n_frames, D]`) in the MS-SL BigFile layout (frames `vid_k`)."""
    feature_dir = Path(feature_dir)
    feature_dir.mkdir(parents=True, exist_ok=True)
    dims = {v.shape[1] for v in videos.values()}
    if len(dims) != 1:
        raise ValueError(f"all videos must share one feature dim, found {sorted(dims)}")
    (dim,) = dims
    frame_ids: list[str] = []
    video2frames: dict[str, list[str]] = {}
    with open(feature_dir / "feature.bin", "wb") as handle:
        for video, frames in videos.items():
            ids = [f"{video}{frame_prefix_sep}{k}" for k in range(len(frames))]
            video2frames[video] = ids
            frame_ids.extend(ids)
            handle.write(np.ascontiguousarray(frames, dtype="<f4").tobytes())
    (feature_dir / "shape.txt").write_text(f"{len(frame_ids)} {dim}")
    (feature_dir / "id.txt").write_text(" ".join(frame_ids))
    (feature_dir / "video2frames.txt").write_text(repr(video2frames))
