"""Helpers of the PREM localizer tests: a tiny localizer datamodule over a ranking file that
the test writes (random top-k lists, so no retriever has to be trained)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_support import net_arguments
from partial_relevance.data.rankings import SplitRanking, write_rankings
from partial_relevance.data.vcmr import VcmrRetrieverDataModule
from partial_relevance.data.vcmr_localizer import VcmrLocalizerDataModule
from partial_relevance.models.prem_localizer import PremLocalizer
from partial_relevance.models.prem_retriever import PremRetriever
from support import TINY_SYNTHETIC, TINY_VCMR_DIMS

# Sizes of a tiny PremRetriever / PremLocalizer on the TINY_SYNTHETIC corpus (the other
# arguments come from the model config, `net_arguments`).
TINY_PREM_NET = {
    **TINY_VCMR_DIMS,
    "hidden_dim": 16,
    "num_heads": 2,
    "ffn_dim": 32,
    "dropout": 0.0,
}


def tiny_retriever(**overrides: Any) -> PremRetriever:
    """`PremRetriever` of `model=prem_retriever` at the TINY_PREM_NET sizes, with overrides."""
    return PremRetriever(**net_arguments("prem_retriever", **{**TINY_PREM_NET, **overrides}))


def tiny_localizer(**overrides: Any) -> PremLocalizer:
    """`PremLocalizer` of `model=prem_localizer` at the TINY_PREM_NET sizes, with overrides."""
    return PremLocalizer(**net_arguments("prem_localizer", **{**TINY_PREM_NET, **overrides}))


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


def prem_video_inputs(V: int, L: int, short_len: int):
    """Seeded inputs of a tiny PREM encoder: visual [V, L, 12], subtitle [V, L, 10], clip mask
    (video 1 has `short_len` clips), subtitle mask (video 2 has no subtitle at all)."""
    torch.manual_seed(1)
    visual = torch.randn(V, L, 12)
    subtitle = torch.randn(V, L, 10)
    clip_mask = torch.ones(V, L, dtype=torch.bool)
    clip_mask[1, short_len:] = False
    sub_mask = torch.rand(V, L) > 0.3
    sub_mask[2] = False  # a video without any subtitle
    return visual, subtitle, clip_mask, sub_mask


def padded_video_inputs(pad: int = 3):
    """One 4-clip video (clip 1 without subtitle) and the same video with `pad` padding clips
    (random features, clip mask off) appended: `(short, padded)`, each
    `(visual, subtitle, clip_mask, sub_mask)`; for padding-invariance checks."""
    torch.manual_seed(3)
    visual, subtitle = torch.randn(1, 4, 12), torch.randn(1, 4, 10)
    clip_mask = torch.ones(1, 4, dtype=torch.bool)
    sub_mask = torch.tensor([[True, False, True, True]])
    padded = (
        torch.cat([visual, torch.randn(1, pad, 12)], 1),
        torch.cat([subtitle, torch.randn(1, pad, 10)], 1),
        torch.cat([clip_mask, torch.zeros(1, pad, dtype=torch.bool)], 1),
        torch.cat([sub_mask, torch.ones(1, pad, dtype=torch.bool)], 1),
    )
    return (visual, subtitle, clip_mask, sub_mask), padded
