"""The localizer datamodule: ranked negatives (SPEC §5) and the evaluation side (SPEC §6)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from partial_relevance.data.errors import DataError
from partial_relevance.data.vcmr_localizer import sample_negatives
from prem_support import tiny_localizer_datamodule, write_random_rankings


@pytest.fixture(scope="module")
def ranking_file(tmp_path_factory, synthetic_cache, tiny_corpus):
    return write_random_rankings(synthetic_cache, tmp_path_factory.mktemp("rank") / "r.h5")


def test_negatives_come_from_top_k_exclude_gt_and_are_redrawn(synthetic_cache, ranking_file):
    dm = tiny_localizer_datamodule(synthetic_cache, ranking_file, n_neg=3, neg_pool=5)
    dataset = dm.train_dataset()
    torch.manual_seed(0)
    draws = []
    for _ in range(20):
        item = dataset[0]
        qi = item["query_index"]
        gt = int(dm.splits["train"].query_video[qi])
        assert item["videos"][0] == gt
        negatives = item["videos"][1:]
        assert len(negatives) == 3 and gt not in negatives and len(set(negatives)) == 3
        assert set(negatives) <= set(dm.rankings["train"].video_idx[qi, :5].tolist())
        draws.append(tuple(sorted(negatives)))
    assert len(set(draws)) > 1  # redrawn each time the item is loaded


def test_ranking_rows_are_aligned_by_query_id(synthetic_cache, ranking_file):
    dm = tiny_localizer_datamodule(synthetic_cache, ranking_file)
    split = dm.splits["val"]
    with h5py.File(ranking_file, "r") as f:
        ids = [s.decode() for s in f["val/query_id"][()]]
        raw = f["val/video_idx"][()]
    for qi, query in enumerate(split.queries):
        np.testing.assert_array_equal(
            dm.rankings["val"].video_idx[qi], raw[ids.index(query.query_id)]
        )


def test_training_batch_shapes(synthetic_cache, ranking_file):
    dm = tiny_localizer_datamodule(synthetic_cache, ranking_file, n_neg=3, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    B, K = batch["video_index"].shape
    assert (B, K) == (4, 4)
    P, L, _ = batch["visual"].shape
    assert P == B * K and batch["clip_mask"].shape == (P, L)
    assert batch["pos_spans"].shape[:2] == batch["pos_mask"].shape
    # the GT span is the first positive; every span lies inside the GT video
    assert torch.equal(batch["pos_spans"][:, 0], batch["span"])
    gt_clips = batch["clip_mask"].view(B, K, L)[:, 0].sum(1)
    assert bool(
        (
            batch["pos_spans"][..., 1][batch["pos_mask"]]
            < gt_clips.repeat_interleave(batch["pos_mask"].sum(1))
        ).all()
    )


def test_eval_loaders_carry_topk_and_vr_lists(synthetic_cache, ranking_file):
    dm = tiny_localizer_datamodule(synthetic_cache, ranking_file, k_videos=10)
    videos, queries = dm.split_loaders("val")
    vb = next(iter(videos))
    assert {"scale", "duration"} <= set(vb) and bool((vb["duration"] > 0).all())
    qb = next(iter(queries))
    assert qb["topk_video"].shape[1] == 10 and qb["vr_video"].shape[1] == 12
    assert torch.equal(qb["topk_video"], qb["vr_video"][:, :10])


def test_sample_negatives_with_a_small_pool():
    out = sample_negatives(np.array([3, 1]), gt_video=3, n_neg=4)
    assert out.tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="no negative"):
        sample_negatives(np.array([3]), gt_video=3, n_neg=2)


def test_missing_ranking_file_or_split_is_a_clear_error(synthetic_cache, tmp_path):
    with pytest.raises(DataError, match="ranking file"):
        tiny_localizer_datamodule(synthetic_cache, tmp_path / "absent.h5")
    partial = write_random_rankings(synthetic_cache, tmp_path / "r.h5", splits=("train",))
    with pytest.raises(DataError, match="split 'val' not found") as err:
        tiny_localizer_datamodule(synthetic_cache, partial)
    assert str(partial) in str(err.value)
