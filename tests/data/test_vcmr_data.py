"""VCMR corpus, datasets and the retriever datamodule (SPEC §1.2-§1.3, §4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from partial_relevance.data.annotations import read_tvr_jsonl, read_video2dur_idx
from partial_relevance.data.errors import DataError
from partial_relevance.data.preprocess import l2_normalize_rows
from partial_relevance.data.vcmr import (
    VcmrRetrieverDataModule,
    VcmrRetrieverTrainDataset,
    collate_retriever_batch,
)
from partial_relevance.losses.prem import in_batch_negative_mask
from support import TINY_SYNTHETIC, TINY_VCMR_DIMS, tiny_vcmr_datamodule

DIMS = TINY_VCMR_DIMS


def tiny_datamodule(cache: Path, **kwargs) -> VcmrRetrieverDataModule:
    return tiny_vcmr_datamodule(VcmrRetrieverDataModule, cache, **{"batch_size": 8, **kwargs})


@pytest.fixture(scope="module")
def dm(synthetic_cache, tiny_corpus) -> VcmrRetrieverDataModule:
    return tiny_datamodule(synthetic_cache)


def test_reads_the_synthetic_files_through_the_real_readers(dm, tiny_corpus):
    root = tiny_corpus.vcmr_root
    index = read_video2dur_idx(root / "synthetic_video2dur_idx.json")
    for name in ("train", "val", "test"):
        split = dm.splits[name]
        queries = read_tvr_jsonl(root / f"synthetic_{name}_release.jsonl")
        assert [q.query_id for q in split.queries] == [q.query_id for q in queries]
        assert split.video_ids == list(index[name])
        assert dm.num_videos(name) == TINY_SYNTHETIC[f"num_{name}_videos"]
        assert [split.video_ids[v] for v in split.query_video] == [q.video_id for q in queries]
    # Features: the stored rows, L2-normalised; subtitles masked by the `-mask` dataset.
    video_id = dm.splits["val"].video_ids[3]
    inputs = dm.corpus.video_inputs(video_id)
    with h5py.File(root / "video_feature.h5") as f:
        np.testing.assert_allclose(inputs.visual, l2_normalize_rows(f[video_id][()]), atol=1e-6)
    with h5py.File(root / "sub_feature.h5") as f:
        np.testing.assert_array_equal(inputs.sub_mask, f[video_id + "-mask"][()])
    assert inputs.scale == 1.0 and inputs.subtitle.shape == (inputs.num_clips, DIMS["subtitle_dim"])
    norms = np.linalg.norm(inputs.subtitle, axis=1)
    np.testing.assert_allclose(norms[inputs.sub_mask > 0], 1.0, atol=1e-4)
    assert np.all(norms[inputs.sub_mask == 0] == 0)
    tokens = dm.corpus.query_input(dm.splits["val"].queries[0].query_id)
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=1), 1.0, atol=1e-4)


def test_span_labels_are_on_the_1_5s_grid_with_inclusive_end(dm):
    dataset = VcmrRetrieverTrainDataset(dm.corpus, dm.splits["train"])
    for index in range(len(dataset)):
        item = dataset[index]
        st, ed = dm.splits["train"].queries[item["query_index"]].span
        num_clips = len(item["visual"])
        expected = (math.floor(st / 1.5), min(math.ceil(ed / 1.5) - 1, num_clips - 1))
        assert item["span"] == (expected[0], max(expected))
        assert 0 <= item["span"][0] <= item["span"][1] < num_clips


def test_batch_videos_are_deduplicated_and_shared_videos_are_never_negatives(dm):
    dataset = VcmrRetrieverTrainDataset(dm.corpus, dm.splits["train"])
    by_video: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        by_video.setdefault(int(dm.splits["train"].query_video[dataset.indices[i]]), []).append(i)
    (v0, (a, b, *_)), (v1, (c, *_)) = list(by_video.items())[:2]
    batch = collate_retriever_batch([dataset[a], dataset[c], dataset[b]])
    assert batch["visual"].shape[0] == 2  # two distinct videos, one column each
    assert batch["query_video"].tolist() == [0, 1, 0]
    assert batch["video_index"].tolist() == [v0, v1]
    assert batch["span"].shape == (3, 2) and batch["query_tokens"].shape[0] == 3
    negatives = in_batch_negative_mask(
        batch["video_index"][batch["query_video"]], batch["video_index"]
    )
    assert negatives.tolist() == [[False, True], [True, False], [False, True]]
    # Every loader batch: one column per distinct video; clip/sub masks padded with False.
    for loader_batch in dm.train_dataloader():
        ids = loader_batch["video_index"]
        assert len(set(ids.tolist())) == len(ids)
        assert torch.equal(ids[loader_batch["query_video"]].unique(), ids.sort().values)
        assert not (loader_batch["sub_mask"] & ~loader_batch["clip_mask"]).any()


def test_no_subtitle_store_gives_zero_masked_subtitles(synthetic_cache, tiny_corpus):
    dm = tiny_datamodule(synthetic_cache, subtitles=False)
    assert dm.corpus.sub_store is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["subtitle"].shape[-1] == DIMS["subtitle_dim"]
    assert not batch["subtitle"].any() and not batch["sub_mask"].any()
    assert batch["clip_mask"].any()


def write_hand_corpus(root: Path, with_test_public: bool = True) -> dict:
    """Two videos (one of 150 clips, pooled to 100) in the XML HDF5 layout, no subtitles."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "video.h5", "w") as f:
        f["long"] = rng.standard_normal((150, 6)).astype(np.float32)
        f["short"] = rng.standard_normal((20, 6)).astype(np.float32)
    with h5py.File(root / "query.h5", "w") as f:
        for desc_id in range(4):
            f[str(desc_id)] = rng.standard_normal((40, 5)).astype(np.float32)
    lines = [
        {"vid_name": "long", "duration": 225.0, "ts": [30.0, 45.0], "desc": "a", "desc_id": 0},
        {"vid_name": "short", "duration": 30.0, "ts": [1.6, 4.4], "desc": "b", "desc_id": 1},
    ]
    (root / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (root / "val.jsonl").write_text(json.dumps(lines[1]) + "\n")
    public = [{"desc": "c", "desc_id": 2}, {"desc": "d", "desc_id": 3}]
    (root / "test.jsonl").write_text("\n".join(json.dumps(x) for x in public) + "\n")
    index = {
        "train": {"long": [225.0, 0], "short": [30.0, 1]},
        "val": {"short": [30.0, 1]},
        "test_public": {"long": [225.0, 0]},
    }
    (root / "video2dur.json").write_text(json.dumps(index))
    splits = {
        "train": {"annotations": str(root / "train.jsonl"), "video2dur_split": "train"},
        "val": {"annotations": str(root / "val.jsonl"), "video2dur_split": "val"},
    }
    if with_test_public:
        splits["test"] = {"annotations": str(root / "test.jsonl"), "video2dur_split": "test_public"}
    return {
        "splits": splits,
        "video2dur_idx": str(root / "video2dur.json"),
        "video_store": {"format": "hdf5", "path": str(root / "video.h5")},
        "sub_store": None,
        "query_store": {"format": "hdf5", "path": str(root / "query.h5"), "options": {}},
        "visual_dim": 6,
        "subtitle_dim": 7,
        "query_dim": 5,
    }


def test_real_paths_pooling_scale_labels_and_unlabelled_test(tmp_path):
    dm = VcmrRetrieverDataModule(**write_hand_corpus(tmp_path), batch_size=4)
    dm.setup()
    assert set(dm.splits) == {"train", "val"} and set(dm.unlabelled_splits) == {"test"}
    assert list(dm.all_splits()) == ["train", "val", "test"] and dm.num_videos("test") == 1
    long_video = dm.corpus.video_inputs("long")
    assert long_video.visual.shape == (100, 6) and long_video.scale == 1.5
    assert long_video.subtitle.shape == (100, 7) and not long_video.sub_mask.any()
    dataset = VcmrRetrieverTrainDataset(dm.corpus, dm.splits["train"])
    # 150 clips pooled to 100: 2.25 s a clip; [30, 45] s -> [floor(13.3), ceil(20) - 1].
    assert dataset[0]["span"] == (13, 19)
    assert dataset[1]["span"] == (1, 2)  # [1.6, 4.4] s on the 1.5 s grid
    assert dm.corpus.query_input("0").shape == (30, 5)  # truncated to 30 tokens
    _videos, queries = dm.split_loaders("test")
    assert next(iter(queries))["video_index"].tolist() == [-1, -1]


def test_bad_inputs_raise_data_errors_naming_the_file(tmp_path, synthetic_cache, tiny_corpus):
    with pytest.raises(DataError, match=r"video_feature\.h5.*dim is 32 but the config expects 33"):
        tiny_datamodule(synthetic_cache, visual_dim=33)
    config = write_hand_corpus(tmp_path / "missing")
    with h5py.File(tmp_path / "missing" / "query.h5", "a") as f:
        del f["1"]
    with pytest.raises(DataError, match=r"train\.jsonl.*key '1'.*query\.h5"):
        VcmrRetrieverDataModule(**config).setup()
    config = write_hand_corpus(tmp_path / "unknown_video", with_test_public=False)
    index = json.loads(Path(config["video2dur_idx"]).read_text())
    del index["val"]["short"]
    index["val"]["other"] = [1.0, 5]
    Path(config["video2dur_idx"]).write_text(json.dumps(index))
    with h5py.File(tmp_path / "unknown_video" / "video.h5", "a") as f:
        f["other"] = np.zeros((3, 6), dtype=np.float32)
    with pytest.raises(DataError, match=r"val\.jsonl.*desc_id 1: video 'short' is not in split"):
        VcmrRetrieverDataModule(**config).setup()
