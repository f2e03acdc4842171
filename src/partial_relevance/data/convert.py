"""Convert any feature store(s) into one consolidated HDF5 file, once, for fast training.

    python -m partial_relevance.data.convert --video-format lmdb --video PATH \\
        [--sub-format hdf5 --sub PATH] [--query-format hdf5 --query PATH] \\
        [--split-keys FILE] --out OUT.h5 [--force]

Output layout (read back with `Hdf5Store(out, group="video" | "sub" | "query")`):
- `video/<vid_name>`: float32 `[n_clips, Dv]`;
- `sub/<vid_name>` float32 `[n_clips, Ds]` and `sub/<vid_name>-mask` float32 `[n_clips]` (from
  the source's `-mask` datasets, or rows with a nonzero norm when the source has none);
- `query/<query_id>`: float32 `[n_tokens, Dq]`;
- `index/video_keys`, `index/sub_keys`, `index/query_keys` (variable-length utf-8, in the
  order written), `index/video_lengths` (int64 rows per video), and attributes on `index`:
  `<group>_count`, `<group>_dim`, `<group>_format`, `<group>_source`.

`--split-keys` restricts the output to one split: a text file with one video key a line, or a
jsonl annotation file (TVR / DiDeMo style) whose `vid_name` values restrict `video`/`sub` and
whose `desc_id` values restrict `query`. Every listed key must exist in its store.

The file is written to a temporary name beside the output, re-opened and checked (counts,
dims and every dataset's shape), and only then renamed over the output (atomically), so a
crash or a failed check never leaves a half-written file under the final name.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from partial_relevance.cli import one_line_errors
from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.data.stores import STORE_FORMATS, FeatureStore, open_store, require_keys
from partial_relevance.data.stores.hdf5 import MASK_SUFFIX, Hdf5Store


@dataclass
class SplitKeys:
    """Keys one split keeps: video keys (for `video` and `sub`) and query keys (or None = all)."""

    path: Path
    videos: list[str] | None = None
    queries: list[str] | None = None


@dataclass
class GroupSummary:
    """What was written for one group (checked against the re-opened file)."""

    count: int
    dim: int
    lengths: dict[str, int] = field(default_factory=dict)


def read_split_keys(path: str | Path) -> SplitKeys:
    """Parse a `--split-keys` file: one video key a line, or jsonl annotations (see module doc)."""
    path = require_exists(path, "split keys file")
    keys = SplitKeys(path)
    lines = [
        (n, line.strip())
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip()
    ]
    if not lines:
        raise DataError(path, "lists no keys")
    if not lines[0][1].startswith("{"):
        keys.videos = list(dict.fromkeys(line for _, line in lines))
        return keys
    videos: list[str] = []
    queries: list[str] = []
    for line_number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(path, f"line {line_number}: malformed JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(path, f"line {line_number}: expected a JSON object")
        if "vid_name" in record:
            videos.append(str(record["vid_name"]))
        if "desc_id" in record:
            queries.append(str(record["desc_id"]))
    keys.videos = list(dict.fromkeys(videos)) or None
    keys.queries = list(dict.fromkeys(queries)) or None
    return keys


def _subtitle_mask(store: FeatureStore, key: str, features: np.ndarray) -> np.ndarray:
    """The source's `-mask` when it has one, else 1 for rows with a nonzero norm (SPEC §1.2)."""
    get_mask = getattr(store, "get_mask", None)
    mask = get_mask(key) if get_mask is not None else None
    if mask is None:
        return (np.linalg.norm(features, axis=-1) > 0).astype(np.float32)
    mask = np.asarray(mask, dtype=np.float32).reshape(-1)
    if len(mask) != len(features):
        raise DataError(
            store.path, f"key {key!r}: mask has {len(mask)} rows but the features {len(features)}"
        )
    return mask


def _write_group(
    out: h5py.File,
    name: str,
    store: FeatureStore,
    keys: list[str],
    progress: bool,
) -> GroupSummary:
    """Copy `keys` of `store` into group `name` as float32 (plus masks for `sub`)."""
    group = out.create_group(name)
    summary = GroupSummary(count=len(keys), dim=store.dim)
    for key in tqdm(keys, desc=f"{name:5s}", unit="key", disable=not progress, leave=False):
        if "/" in key or key.endswith(MASK_SUFFIX):
            raise DataError(store.path, f"key {key!r} cannot be an HDF5 dataset name here")
        features = store.get(key)
        if features.ndim != 2 or features.shape[1] != store.dim:
            raise DataError(
                store.path, f"key {key!r}: shape {features.shape}, expected [n, {store.dim}]"
            )
        group.create_dataset(key, data=features)
        if name == "sub":
            group.create_dataset(key + MASK_SUFFIX, data=_subtitle_mask(store, key, features))
        summary.lengths[key] = len(features)
    return summary


def _verify(path: Path, summaries: dict[str, GroupSummary]) -> None:
    """Re-open the written file and check every group against what was written."""
    with h5py.File(path, "r") as handle:
        index = handle["index"]
        for name, summary in summaries.items():
            store = Hdf5Store(path, group=name)
            try:
                keys = list(store.keys())
                problems = []
                if len(keys) != summary.count:
                    problems.append(f"{len(keys)} keys, wrote {summary.count}")
                if store.dim != summary.dim:
                    problems.append(f"dim {store.dim}, source dim {summary.dim}")
                if int(index.attrs[f"{name}_count"]) != summary.count:
                    problems.append("index count differs")
                if len(index[f"{name}_keys"]) != summary.count:
                    problems.append("index key list length differs")
                group = handle[name]
                for key, length in summary.lengths.items():
                    if key not in group:
                        problems.append(f"key {key!r} is missing")
                        break
                    if group[key].shape != (length, summary.dim):
                        problems.append(f"key {key!r} has shape {group[key].shape}")
                        break
                    if name == "sub" and group[key + MASK_SUFFIX].shape != (length,):
                        problems.append(f"key {key!r} has a mask of the wrong length")
                        break
            finally:
                store.close()
            if problems:
                raise DataError(
                    path, f"verification of group {name!r} failed: {'; '.join(problems)}"
                )


def convert(
    out: str | Path,
    video: str | Path,
    video_format: str = "lmdb",
    sub: str | Path | None = None,
    sub_format: str = "hdf5",
    query: str | Path | None = None,
    query_format: str = "hdf5",
    split_keys: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, GroupSummary]:
    """Write one consolidated HDF5 (`video`, optional `sub` and `query`, `index`); see module doc.

    Raises FileExistsError when `out` exists and not `force`, DataError on bad inputs or a
    failed verification. Returns each group's written count, dim and per-key lengths.
    """
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force (force=True) to overwrite it")
    sources = {
        "video": (video_format, video),
        "sub": (sub_format, sub),
        "query": (query_format, query),
    }
    stores = {
        name: open_store(fmt, path) for name, (fmt, path) in sources.items() if path is not None
    }
    split = read_split_keys(split_keys) if split_keys is not None else None
    keys: dict[str, list[str]] = {}
    for name, store in stores.items():
        wanted = None
        if split is not None:
            wanted = split.queries if name == "query" else split.videos
        if wanted is None:
            keys[name] = list(store.keys())
        else:
            require_keys(store, wanted, split.path)
            keys[name] = wanted

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    summaries: dict[str, GroupSummary] = {}
    try:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["format"] = "partial_relevance consolidated features v1"
            for name, store in stores.items():
                summaries[name] = _write_group(handle, name, store, keys[name], progress)
            index = handle.create_group("index")
            strings = h5py.string_dtype(encoding="utf-8")
            for name, summary in summaries.items():
                index.create_dataset(f"{name}_keys", data=keys[name], dtype=strings)
                index.attrs[f"{name}_count"] = summary.count
                index.attrs[f"{name}_dim"] = summary.dim
                index.attrs[f"{name}_format"] = sources[name][0]
                index.attrs[f"{name}_source"] = str(sources[name][1])
            if "video" in summaries:
                lengths = [summaries["video"].lengths[k] for k in keys["video"]]
                index.create_dataset("video_lengths", data=np.asarray(lengths, dtype=np.int64))
            if split is not None:
                index.attrs["split_keys"] = str(split.path)
        _verify(tmp, summaries)
        os.replace(tmp, out)
    finally:
        for store in stores.values():
            store.close()
        if tmp.exists():
            tmp.unlink()
    return summaries


def build_parser() -> argparse.ArgumentParser:
    """The CLI of `python -m partial_relevance.data.convert`."""
    parser = argparse.ArgumentParser(
        prog="python -m partial_relevance.data.convert",
        description="Convert feature stores (BigFile, HDF5, LMDB) into one consolidated HDF5.",
    )
    formats = list(STORE_FORMATS)
    parser.add_argument("--video-format", choices=formats, default="lmdb")
    parser.add_argument("--video", required=True, type=Path, help="video feature store")
    parser.add_argument("--sub-format", choices=formats, default="hdf5")
    parser.add_argument("--sub", type=Path, help="subtitle feature store (optional)")
    parser.add_argument("--query-format", choices=formats, default="hdf5")
    parser.add_argument("--query", type=Path, help="query feature store (optional)")
    parser.add_argument(
        "--split-keys",
        type=Path,
        help="keep one split: a file of video keys (one a line) or a jsonl annotation file",
    )
    parser.add_argument("--out", required=True, type=Path, help="output .h5 file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: exit 2 on usage errors (existing output), 1 on bad data, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        with one_line_errors():  # bad data: one line on stderr, exit 1
            summaries = convert(
                args.out,
                video=args.video,
                video_format=args.video_format,
                sub=args.sub,
                sub_format=args.sub_format,
                query=args.query,
                query_format=args.query_format,
                split_keys=args.split_keys,
                force=args.force,
                progress=not args.no_progress,
            )
    except FileExistsError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")  # a usage error: exit code 2
    parts = [f"{s.count} {name} (dim {s.dim})" for name, s in summaries.items()]
    print(f"wrote {args.out}: {', '.join(parts)} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
