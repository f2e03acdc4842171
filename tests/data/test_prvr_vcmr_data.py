"""The PRVR view of a VCMR corpus (data.prvr_vcmr): one corpus, PRVR batches (SPEC §3, §1.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partial_relevance.data.preprocess import l2_normalize_rows, mean_pool
from partial_relevance.data.prvr_vcmr import PrvrVcmrDataModule, prvr_clip_features
from support import TINY_VCMR_DIMS, tiny_vcmr_datamodule

DIMS = TINY_VCMR_DIMS


def prvr_view(cache: Path, **kwargs) -> PrvrVcmrDataModule:
    return tiny_vcmr_datamodule(PrvrVcmrDataModule, cache, **{"batch_size": 4, **kwargs})


@pytest.fixture(scope="module")
def dm(synthetic_cache, tiny_corpus) -> PrvrVcmrDataModule:
    return prvr_view(synthetic_cache, num_moments=4, max_frames=6)


def test_branches_read_the_vcmr_clips(dm):
    split = dm.splits["val"]
    video_id = split.video_ids[2]
    clips = dm.corpus.video_inputs(video_id).visual  # [L, Dv], the retriever's input
    moments, frames = dm.view.video_inputs(video_id)
    np.testing.assert_allclose(moments, l2_normalize_rows(mean_pool(clips, 4)), atol=1e-6)
    expected = clips if len(clips) <= 6 else mean_pool(clips, 6)
    np.testing.assert_allclose(frames, l2_normalize_rows(expected), atol=1e-6)
    assert moments.shape == (4, DIMS["visual_dim"]) and len(frames) == min(len(clips), 6)


def test_training_batch_is_video_centric_with_every_query(dm):
    batch = next(iter(dm.train_dataloader()))
    split = dm.splits["train"]
    b = len(batch["video_index"])
    assert batch["moments"].shape == (b, 4, DIMS["visual_dim"])
    assert batch["frames"].shape[0] == b and batch["frame_mask"].shape == batch["frames"].shape[:2]
    # Every query of every batch video, each pointing at its video's column.
    for column, vi in enumerate(batch["video_index"].tolist()):
        own = np.flatnonzero(split.query_video == vi).tolist()
        assert batch["query_index"][batch["query_video"] == column].tolist() == own
    tokens = dm.corpus.query_input(split.queries[int(batch["query_index"][0])].query_id)
    n = len(tokens)
    np.testing.assert_allclose(batch["query_tokens"][0, :n].numpy(), tokens, atol=1e-6)


def test_eval_loaders_cover_every_video_and_query_in_order(dm):
    for name, split in dm.all_splits().items():
        videos, queries = dm.split_loaders(name)
        video_index = [int(i) for batch in videos for i in batch["video_index"]]
        assert video_index == list(range(split.num_videos))
        q = [batch for batch in queries]
        assert [int(i) for b in q for i in b["query_index"]] == list(range(len(split.queries)))
        assert [int(i) for b in q for i in b["video_index"]] == split.query_video.tolist()
        assert all(set(b["query_type"].tolist()) <= {0, 1, 2} for b in q)


def test_subtitle_concat_switch_and_dim_check(synthetic_cache, tiny_corpus):
    visual = np.ones((3, 2), np.float32)
    subtitle = np.full((3, 1), 2.0, np.float32)
    out = prvr_clip_features(visual, subtitle, np.array([1, 0, 1]), "concat")
    np.testing.assert_array_equal(out, [[1, 1, 2], [1, 1, 0], [1, 1, 2]])
    assert prvr_clip_features(visual, subtitle, np.ones(3), "ignore") is visual
    both = DIMS["visual_dim"] + DIMS["subtitle_dim"]
    dm = prvr_view(synthetic_cache, subtitle_mode="concat", video_dim=both)
    assert dm.view.video_dim == both
    assert next(iter(dm.train_dataloader()))["moments"].shape[-1] == both
    with pytest.raises(ValueError, match="data.video_dim"):
        prvr_view(synthetic_cache, subtitle_mode="concat", video_dim=DIMS["visual_dim"])
    with pytest.raises(ValueError, match="subtitle_mode"):
        prvr_view(synthetic_cache, subtitle_mode="add")


def test_eval_video_batches_built_in_place_equal_the_collated_items(dm):
    """The view's evaluation video loader builds each batch whole: the tensors of collating
    its items one by one, bit for bit (clips pooled above max_frames=6 included)."""
    import torch

    from partial_relevance.data.prvr_vcmr import collate_prvr_vcmr_videos

    videos, _ = dm.split_loaders("val")
    for batch, positions in zip(videos, videos.batch_sampler, strict=True):
        expected = collate_prvr_vcmr_videos([videos.dataset[p] for p in positions])
        assert batch.keys() == expected.keys()
        assert all(torch.equal(batch[key], value) for key, value in expected.items())
