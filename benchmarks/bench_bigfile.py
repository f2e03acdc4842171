"""BigFile read rate: the suite's `BigFileStore` (one read per video) vs the peers' per-frame
reader.

MS-SL and GMMFormer read `FeatureData/<feature>/feature.bin` one frame at a time: for each
frame id, open the file, seek to its row, read D floats into an `array.array('f')`, close,
`.tolist()`, and finally `np.array(list_of_frames)`. `BigFileStore` reads a video whose rows
are consecutive with one `os.preadv` into its array (other row orders: one `np.memmap`).
Both readers run on the same file; the page cache is warm for both (the file was just
written or read once before timing).

    .venv/bin/python benchmarks/bench_bigfile.py                      # generated Charades-like
    .venv/bin/python benchmarks/bench_bigfile.py --root R --collection C --feature F
"""

from __future__ import annotations

import array
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Stopwatch,
    add_generated_size_arguments,
    dataset_parser,
    machine_facts,
    peak_rss_mb,
    record_result,
)

from partial_relevance.data.preprocess import prvr_video_inputs
from partial_relevance.data.stores.bigfile import (
    BigFileStore,
    read_shape,
    write_bigfile,
)


class PerFrameBigFile:
    """The MS-SL/GMMFormer `BigFile` reader: one open + seek + read per frame."""

    def __init__(self, feature_dir: Path) -> None:
        self.num_rows, self.dim = read_shape(feature_dir / "shape.txt")
        names = (feature_dir / "id.txt").read_text().split()
        self.name2index = dict(zip(names, range(self.num_rows)))
        self.binary_file = str(feature_dir / "feature.bin")

    def read_one(self, name: str) -> list[float]:
        """One frame, as the peers return it (a Python list of floats)."""
        index = self.name2index[name]
        vec = array.array("f")
        with open(self.binary_file, "rb") as handle:
            handle.seek(index * self.dim * 4)
            vec.fromfile(handle, self.dim)
        return vec.tolist()

    def read_video(self, frame_ids: list[str]) -> np.ndarray:
        """`[n_frames, D]` float32, built the way the peers' datasets build it."""
        return np.array([self.read_one(f) for f in frame_ids], dtype=np.float32)


def generate(feature_dir: Path, videos: int, frames: int, dim: int, seed: int) -> None:
    """Write a Charades-like BigFile (`videos` × `frames` × `dim` float32)."""
    rng = np.random.default_rng(seed)
    data = {
        f"v{i:05d}": rng.standard_normal((frames, dim), dtype=np.float32) for i in range(videos)
    }
    write_bigfile(feature_dir, data)


def time_reader(read, video_ids: list[str], max_seconds: float) -> tuple[int, float, int]:
    """Read videos in order until all are read or `max_seconds` pass -> (videos, s, bytes)."""
    start = time.perf_counter()
    count = nbytes = 0
    for video in video_ids:
        nbytes += read(video).nbytes
        count += 1
        if time.perf_counter() - start > max_seconds:
            break
    return count, time.perf_counter() - start, nbytes


def main() -> None:
    parser = dataset_parser(__doc__, collection="charades", feature="i3d_rgb_lgi")
    add_generated_size_arguments(parser, videos=300, frames=128)
    parser.add_argument("--dim", type=int, default=1024, help="generated feature dim")
    parser.add_argument("--limit", type=int, default=300, help="videos read per reader (max)")
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="stop the per-frame reader after this"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed passes of BigFileStore")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench_bigfile_") as tmp:
        watch = Stopwatch()
        if args.root is None:
            feature_dir = Path(tmp) / "FeatureData" / "generated"
            with watch.stage("generate"):
                generate(feature_dir, args.videos, args.frames, args.dim, args.seed)
            source = f"generated {args.videos} videos × {args.frames} frames × {args.dim}-d"
        else:
            feature_dir = args.root / args.collection / "FeatureData" / args.feature
            source = str(feature_dir)
        with watch.stage("open_store"):
            store = BigFileStore(feature_dir)
        per_frame = PerFrameBigFile(feature_dir)
        video_ids = list(store.keys())[: args.limit]

        # Warm the page cache once so both readers see the same cache state.
        time_reader(store.get, video_ids, float("inf"))

        memmap_runs = [time_reader(store.get, video_ids, float("inf")) for _ in range(args.reps)]
        n_mm, s_mm, bytes_mm = min(memmap_runs, key=lambda run: run[1])
        n_pp, s_pp, _ = time_reader(
            lambda v: prvr_video_inputs(store.get(v))[1], video_ids, float("inf")
        )
        n_pf, s_pf, _ = time_reader(
            lambda v: per_frame.read_video(store.video2frames[v]), video_ids, args.max_seconds
        )
        # Check both readers return the same numbers.
        first = video_ids[0]
        same = bool(
            np.array_equal(store.get(first), per_frame.read_video(store.video2frames[first]))
        )

    frames_mean = bytes_mm / n_mm / (4 * store.dim)
    rate_mm, rate_pf, rate_pp = n_mm / s_mm, n_pf / s_pf, n_pp / s_pp
    rows = [
        {
            "reader": "BigFileStore (one read per video)",
            "videos": n_mm,
            "seconds": round(s_mm, 4),
            "videos/s": round(rate_mm, 1),
            "MB/s": round(bytes_mm / s_mm / 1e6, 1),
            "speed-up": round(rate_mm / rate_pf, 1),
        },
        {
            "reader": "BigFileStore + prvr_video_inputs (pool, L2)",
            "videos": n_pp,
            "seconds": round(s_pp, 4),
            "videos/s": round(rate_pp, 1),
            "speed-up": round(rate_pp / rate_pf, 1),
        },
        {
            "reader": "per-frame open/seek/read (MS-SL, GMMFormer)",
            "videos": n_pf,
            "seconds": round(s_pf, 4),
            "videos/s": round(rate_pf, 1),
            "MB/s": round(n_pf * frames_mean * 4 * store.dim / s_pf / 1e6, 1),
            "speed-up": 1.0,
        },
    ]
    stages = {k: round(v, 2) for k, v in watch.seconds.items()}
    notes = [
        f"source: {source}; {frames_mean:.1f} frames/video on average, dim {store.dim}",
        "page cache warm for both readers (one untimed pass first); BigFileStore: best of "
        f"{args.reps} passes; per-frame reader capped at {args.max_seconds} s",
        f"readers return identical arrays: {same}",
        f"peak RSS {peak_rss_mb()} MiB; stage seconds {stages}",
    ]
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    for line in notes:
        print(line)
    for row in rows:
        print(row)
    record_result("bench_bigfile", rows, machine, params, notes, save=not args.no_save)


if __name__ == "__main__":
    main()
