"""Write a random-feature collection in the MS-SL layout (SPEC §1.2) for the benchmarks.

`<root>/<collection>/TextData/<collection>{split}.caption.txt`,
`TextData/roberta_<collection>_query_feat.hdf5` (key cap_id -> float32 `[n_tokens, Dq]`) and
`FeatureData/<feature>/` (a BigFile written with the suite's `write_bigfile`), so the suite's
real readers (`PrvrCorpus`, `PrvrDataModule`) load it. Features are Gaussian noise: the
benchmarks measure speed and memory, never accuracy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from partial_relevance.data.stores.bigfile import write_bigfile


@dataclass(frozen=True)
class LayoutSpec:
    """Sizes of a generated MS-SL collection.

    `splits` maps split name -> number of videos; the videos of different splits are distinct.
    A split named in `copy_of` gets the first `copy_count` queries of another split instead of
    videos of its own (so a datamodule that insists on a split finds one, at no cost).
    """

    collection: str
    feature: str
    splits: dict[str, int]
    video_dim: int
    query_dim: int
    min_frames: int
    max_frames: int
    queries_per_video: int
    min_tokens: int
    max_tokens: int
    seed: int = 0
    copy_of: dict[str, str] | None = None
    copy_count: int = 10


def write_layout(root: Path, spec: LayoutSpec) -> dict[str, int]:
    """Write the collection under `root`; returns counts (videos, queries, frames, bytes)."""
    rng = np.random.default_rng(spec.seed)
    collection_dir = root / spec.collection
    text_dir = collection_dir / "TextData"
    text_dir.mkdir(parents=True, exist_ok=True)
    videos: dict[str, np.ndarray] = {}
    captions: dict[str, list[str]] = {}
    num_queries = 0
    with h5py.File(text_dir / f"roberta_{spec.collection}_query_feat.hdf5", "w") as queries:
        for split, count in spec.splits.items():
            lines: list[str] = []
            for v in range(count):
                video_id = f"{split}{v:06d}"
                frames = int(rng.integers(spec.min_frames, spec.max_frames + 1))
                videos[video_id] = rng.standard_normal((frames, spec.video_dim), dtype=np.float32)
                for k in range(spec.queries_per_video):
                    cap_id = f"{video_id}#enc#{k}"
                    tokens = int(rng.integers(spec.min_tokens, spec.max_tokens + 1))
                    queries[cap_id] = rng.standard_normal(
                        (tokens, spec.query_dim), dtype=np.float32
                    )
                    lines.append(f"{cap_id} a person does thing number {k} in {video_id}")
                    num_queries += 1
            captions[split] = lines
    for split, source in (spec.copy_of or {}).items():
        captions[split] = captions[source][: spec.copy_count]
    for split, lines in captions.items():
        (text_dir / f"{spec.collection}{split}.caption.txt").write_text("\n".join(lines) + "\n")
    feature_dir = collection_dir / "FeatureData" / spec.feature
    total_frames = sum(len(v) for v in videos.values())
    write_bigfile(feature_dir, videos)
    return {
        "videos": len(videos),
        "queries": num_queries,
        "frames": total_frames,
        "feature_bytes": (feature_dir / "feature.bin").stat().st_size,
    }


def add_layout_arguments(
    parser: argparse.ArgumentParser, *, video_dim: int, query_dim: int, max_tokens: int
) -> None:
    """The sizes of a generated collection every PRVR benchmark takes (defaults per dataset),
    plus the model width and loader workers they share."""
    parser.add_argument("--video-dim", type=int, default=video_dim, help="video feature dim")
    parser.add_argument("--query-dim", type=int, default=query_dim, help="query token dim")
    parser.add_argument("--queries-per-video", type=int, default=5, help="generated queries")
    parser.add_argument("--min-tokens", type=int, default=10, help="generated tokens, min")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help="tokens, max")
    parser.add_argument("--hidden", type=int, default=384, help="hidden size D (PRVR: 384)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")


def layout_from_args(
    args: argparse.Namespace,
    splits: dict[str, int],
    frames: tuple[int, int],
    copy_of: dict[str, str],
) -> LayoutSpec:
    """The LayoutSpec of `add_layout_arguments`' options: `splits` videos, `frames` (min,
    max) a video; a split in `copy_of` borrows a few queries of another."""
    return LayoutSpec(
        collection=args.collection,
        feature=args.feature,
        splits=splits,
        video_dim=args.video_dim,
        query_dim=args.query_dim,
        min_frames=frames[0],
        max_frames=frames[1],
        queries_per_video=args.queries_per_video,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        seed=args.seed,
        copy_of=copy_of,
    )
