"""Helpers of the PREM localizer tests: a tiny localizer datamodule over a ranking file that
the test writes (random top-k lists, so no retriever has to be trained)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partial_relevance.data.rankings import SplitRanking, write_rankings
from partial_relevance.data.vcmr import VcmrRetrieverDataModule
from partial_relevance.data.vcmr_localizer import VcmrLocalizerDataModule
from support import TINY_SYNTHETIC, TINY_VCMR_DIMS

# Keyword arguments of a tiny PremRetriever / PremLocalizer on the TINY_SYNTHETIC corpus.
TINY_PREM_NET = {
    **TINY_VCMR_DIMS,
    "hidden_dim": 16,
    "num_heads": 2,
    "ffn_dim": 32,
    "dropout": 0.0,
}


def write_random_rankings(
    cache_dir: Path, path: Path, seed: int = 0, splits: tuple[str, ...] = ("train", "val", "test")
) -> Path:
    """A ranking file over the tiny corpus: each query's videos in a random order, scores
    decreasing (the file's query rows are shuffled, to exercise alignment by id)."""
    base = VcmrRetrieverDataModule(
        synthetic=dict(TINY_SYNTHETIC), cache_dir=str(cache_dir), subtitle_dim=None
    )
    base.setup()
    rng = np.random.default_rng(seed)
    rankings = {}
    for name in splits:
        split = base.all_splits()[name]
        order = rng.permutation(len(split.queries))
        V = split.num_videos
        video_idx = np.stack([rng.permutation(V) for _ in order])  # [Q, V]
        scores = np.sort(rng.uniform(-1, 1, size=video_idx.shape), axis=1)[:, ::-1]
        rankings[name] = SplitRanking(
            name,
            [split.queries[i].query_id for i in order],
            list(split.video_ids),
            video_idx,
            scores.astype(np.float32),
            split.query_video[order],
        )
    return write_rankings(path, rankings)


def tiny_localizer_datamodule(
    cache_dir: Path, ranking_file: Path, **kwargs
) -> VcmrLocalizerDataModule:
    """The localizer datamodule on the tiny corpus, set up."""
    options = {"batch_size": 4, "eval_batch_size": 8, "n_neg": 3, "cache_videos": True}
    options.setdefault("subtitle_dim", None)
    options.update(kwargs)
    dm = VcmrLocalizerDataModule(
        ranking_file=str(ranking_file),
        synthetic=dict(TINY_SYNTHETIC),
        cache_dir=str(cache_dir),
        **options,
    )
    dm.setup()
    return dm
