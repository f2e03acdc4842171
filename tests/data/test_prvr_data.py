"""The PRVR data layer on the synthetic corpus and on broken MS-SL directories."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from partial_relevance.data.errors import DataError
from partial_relevance.data.prvr import PrvrCorpus, PrvrDataModule
from partial_relevance.data.stores.bigfile import BigFileStore, write_bigfile
from partial_relevance.data.synthetic import COLLECTION, PRVR_FEATURE


def test_synthetic_corpus_reads_back_through_real_readers(tiny_corpus):
    corpus = PrvrCorpus(tiny_corpus.prvr_root, COLLECTION, PRVR_FEATURE, 32, 16)
    train = corpus.load_split("train")
    assert len(train.video_ids) == 24 and len(train.queries) == 72
    assert all(q.video_id == q.query_id.split("#")[0] for q in train.queries)
    moments, frames = corpus.video_inputs(train.video_ids[0])
    assert moments.shape == (32, 32) and frames.shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(moments, axis=1), 1.0, atol=1e-4)


def test_batches_are_video_centric(tiny_corpus):
    dm = PrvrDataModule(root=str(tiny_corpus.prvr_root), video_dim=32, query_dim=16, batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["moments"].shape == (5, 32, 32)
    assert batch["query_video"].tolist() == sorted(batch["query_video"].tolist())
    counts = torch.bincount(batch["query_video"], minlength=5)
    assert counts.tolist() == [3] * 5  # every video brings all of its queries
    assert batch["frame_mask"].sum(1).min() > 0
    videos, queries = dm.val_dataloader()
    assert len(videos.dataset) == 12 and len(queries.dataset) == 36


def test_train_holdout_selection(tiny_corpus):
    dm = PrvrDataModule(
        root=str(tiny_corpus.prvr_root), select_on="train_holdout", holdout_fraction=0.25
    )
    dm.setup()
    assert dm.num_videos("val") == 6 and dm.num_videos("train") == 18
    held = set(dm.splits["val"].video_ids)
    assert held.isdisjoint(dm.splits["train"].video_ids)


def _copy_collection(tiny_corpus, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(tiny_corpus.prvr_root, root)
    return root


def test_missing_dataset_root(tmp_path):
    with pytest.raises(DataError, match="PRVR dataset root not found") as info:
        PrvrCorpus(tmp_path / "nope", COLLECTION, PRVR_FEATURE)
    assert "nope" in str(info.value)


def test_missing_feature_bin(tiny_corpus, tmp_path):
    root = _copy_collection(tiny_corpus, tmp_path)
    (root / COLLECTION / "FeatureData" / PRVR_FEATURE / "feature.bin").unlink()
    with pytest.raises(DataError, match=r"feature\.bin.*not found"):
        PrvrCorpus(root, COLLECTION, PRVR_FEATURE)


def test_truncated_feature_bin(tiny_corpus, tmp_path):
    root = _copy_collection(tiny_corpus, tmp_path)
    path = root / COLLECTION / "FeatureData" / PRVR_FEATURE / "feature.bin"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="truncated") as info:
        PrvrCorpus(root, COLLECTION, PRVR_FEATURE)
    assert "feature.bin" in str(info.value)


def test_cap_id_absent_from_query_hdf5(tiny_corpus, tmp_path):
    root = _copy_collection(tiny_corpus, tmp_path)
    text = root / COLLECTION / "TextData"
    with h5py.File(text / f"roberta_{COLLECTION}_query_feat.hdf5", "a") as handle:
        del handle["train_video_00003#enc#1"]
    corpus = PrvrCorpus(root, COLLECTION, PRVR_FEATURE)
    with pytest.raises(DataError) as info:
        corpus.load_split("train")
    message = str(info.value)
    assert "train_video_00003#enc#1" in message and "query_feat.hdf5" in message
    assert "synthetictrain.caption.txt" in message


def test_feature_dim_disagrees_with_shape_txt(tiny_corpus, tmp_path):
    root = _copy_collection(tiny_corpus, tmp_path)
    with pytest.raises(DataError, match="dim is 32 but the config expects 64") as info:
        PrvrCorpus(root, COLLECTION, PRVR_FEATURE, video_dim=64)
    assert PRVR_FEATURE in str(info.value)


def test_shape_txt_disagrees_with_feature_bin(tmp_path):
    write_bigfile(tmp_path / "feat", {"v1": np.ones((4, 8), dtype=np.float32)})
    (tmp_path / "feat" / "shape.txt").write_text("4 16")
    with pytest.raises(DataError, match="shape.txt says 4 x 16"):
        BigFileStore(tmp_path / "feat")


def test_malformed_caption_line(tiny_corpus, tmp_path):
    root = _copy_collection(tiny_corpus, tmp_path)
    path = root / COLLECTION / "TextData" / f"{COLLECTION}val.caption.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, "this-line-has-no-cap-id")
    path.write_text("\n".join(lines) + "\n")
    corpus = PrvrCorpus(root, COLLECTION, PRVR_FEATURE)
    with pytest.raises(DataError, match="line 3") as info:
        corpus.load_split("val")
    assert "syntheticval.caption.txt" in str(info.value)


def test_caption_video_without_features(tiny_corpus, tmp_path):
    root = _copy_collection(tiny_corpus, tmp_path)
    path = root / COLLECTION / "TextData" / f"{COLLECTION}val.caption.txt"
    text = root / COLLECTION / "TextData"
    with h5py.File(text / f"roberta_{COLLECTION}_query_feat.hdf5", "a") as handle:
        handle["ghost#enc#0"] = np.ones((5, 16), dtype=np.float32)
    path.write_text(path.read_text() + "ghost#enc#0 a video nobody extracted\n")
    corpus = PrvrCorpus(root, COLLECTION, PRVR_FEATURE)
    with pytest.raises(DataError, match="'ghost'.*has no features"):
        corpus.load_split("val")


def test_eval_loaders_yield_longest_first_and_every_item_once(tiny_corpus):
    dm = PrvrDataModule(root=str(tiny_corpus.prvr_root), eval_batch_size=5)
    dm.setup("validate")
    assert dm.corpus is not None
    split = dm.splits["val"]
    frames = [dm.corpus.video_store.length(v) for v in split.video_ids]
    assert frames == [len(dm.corpus.video_store.get(v)) for v in split.video_ids]  # no read
    tokens = [dm.corpus.query_store.length(q.query_id) for q in split.queries]
    assert tokens == [len(dm.corpus.query_store.get(q.query_id)) for q in split.queries]
    videos, queries = dm.val_dataloader()
    seen = [(i, int(m.sum())) for b in videos for i, m in zip(b["video_index"], b["frame_mask"])]
    assert sorted(int(i) for i, _ in seen) == list(range(len(split.video_ids)))
    lengths = [n for _, n in seen]
    assert lengths == sorted(lengths, reverse=True)  # longest first: least padding
    order = [int(i) for b in queries for i in b["query_index"]]
    assert sorted(order) == list(range(len(split.queries)))
    unsorted = PrvrDataModule(
        root=str(tiny_corpus.prvr_root), eval_batch_size=5, sort_eval_by_length=False
    )
    unsorted.setup("validate")
    plain = [int(i) for b in unsorted.val_dataloader()[0] for i in b["video_index"]]
    assert plain == list(range(len(split.video_ids)))


def test_eval_batches_built_in_place_equal_the_collated_items(tiny_corpus):
    """The evaluation loaders build each batch whole (`__getitems__`): the same tensors, bit
    for bit, as collating the dataset's items one by one, videos and queries, for sorted and
    split order (queries truncated to max_words=4 included)."""
    from partial_relevance.data.collate import PrebuiltBatch
    from partial_relevance.data.prvr import collate_queries, collate_videos

    for sort in (True, False):
        dm = PrvrDataModule(
            root=str(tiny_corpus.prvr_root),
            eval_video_batch_size=5,
            eval_batch_size=7,
            sort_eval_by_length=sort,
            max_words=4,
        )
        dm.setup("validate")
        for loader, collate, count in zip(
            dm.val_dataloader(), (collate_videos, collate_queries), (3, 6), strict=True
        ):
            dataset = loader.dataset
            batches = list(loader)
            assert len(batches) == count  # 12 videos, 5 a batch; 36 queries, 7 a batch
            for batch, positions in zip(batches, loader.batch_sampler, strict=True):
                assert isinstance(dataset.__getitems__(positions), PrebuiltBatch)
                expected = collate([dataset[p] for p in positions])
                assert batch.keys() == expected.keys()
                for key, value in expected.items():
                    assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key


def test_training_batches_built_in_place_equal_the_collated_items(tiny_corpus):
    """Training batches (videos with every one of their queries) are built whole too: the
    tensors of collating the items one by one, bit for bit (frames pooled above max_frames=9,
    queries truncated to max_words=4), and every video once an epoch."""
    from partial_relevance.data.collate import PrebuiltBatch
    from partial_relevance.data.prvr import collate_videos

    dm = PrvrDataModule(root=str(tiny_corpus.prvr_root), batch_size=5, max_frames=9, max_words=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    dataset = loader.dataset
    orders = [list(indices) for indices in loader.batch_sampler]
    assert len(orders) == 5  # 24 videos, 5 a batch
    for indices in orders:
        batch = dataset.__getitems__(indices)
        assert isinstance(batch, PrebuiltBatch)
        expected = collate_videos([dataset[i] for i in indices])
        assert list(batch) == list(expected)
        for key, value in expected.items():
            assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
    seen = sorted(int(i) for batch in loader for i in batch["video_index"])
    assert seen == list(range(24))
