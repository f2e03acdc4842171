"""Write a random-feature collection in the MS-SL layout (SPEC §1.2) for the benchmarks.

`<root>/<collection>/TextData/<collection>{split}.caption.txt`,
`TextData/roberta_<collection>_query_feat.hdf5` (key cap_id -> float32 `[n_tokens, Dq]`) and
`FeatureData/<feature>/` (a BigFile written with the suite's `write_bigfile`), so the suite's
real readers (`PrvrCorpus`, `PrvrDataModule`) load it. Features are Gaussian noise: the
benchmarks measure speed and memory, never accuracy.
"""

from __future__ import annotations

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
