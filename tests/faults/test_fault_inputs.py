"""Fault injection: each test writes one bad input into a copy of the synthetic corpus and
asserts that it stops with a `DataError` naming the file and the key (or line, or row), never a
wrong number, a traceback without a path or a signal (issue #18).

In-process and fast; the command-line and kill cases are in `test_kills_slow.py`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from partial_relevance.data.annotations import read_tvr_jsonl, read_video2dur_idx
from partial_relevance.data.convert import convert
from partial_relevance.data.convert import main as convert_main
from partial_relevance.data.errors import DataError
from partial_relevance.data.prvr import PrvrCorpus
from partial_relevance.data.rankings import SplitRanking, read_rankings, write_rankings
from partial_relevance.data.stores import open_store
from partial_relevance.data.stores.lmdb import write_lmdb
from partial_relevance.data.synthetic import COLLECTION, PRVR_FEATURE
from partial_relevance.data.vcmr import VcmrCorpus
from partial_relevance.evaluate import check_checkpoint_fits, load_checkpoint_state

VIDEO = "val_video_00003"  # the video (and its first query) each case corrupts


# ------------------------------------------------------------------------------- helpers
def prvr_corpus(root: Path) -> PrvrCorpus:
    return PrvrCorpus(root / "prvr", COLLECTION, PRVR_FEATURE)


def prvr_paths(root: Path) -> tuple[Path, Path, Path]:
    collection = root / "prvr" / COLLECTION
    return (
        collection / "FeatureData" / PRVR_FEATURE,
        collection / "TextData" / f"roberta_{COLLECTION}_query_feat.hdf5",
        collection / "TextData" / f"{COLLECTION}val.caption.txt",
    )


def vcmr_corpus(root: Path, video_format: str = "hdf5", video_path: Path | None = None):
    vcmr = root / "vcmr"
    return VcmrCorpus.from_config(
        {"format": video_format, "path": str(video_path or vcmr / "video_feature.h5")},
        {"format": "hdf5", "path": str(vcmr / "sub_feature.h5")},
        {"format": "hdf5", "path": str(vcmr / "query_feature.h5")},
    )


def load_vcmr_val(root: Path, corpus: VcmrCorpus | None = None):
    vcmr = root / "vcmr"
    index = vcmr / "synthetic_video2dur_idx.json"
    corpus = corpus or vcmr_corpus(root)
    split = corpus.load_split(
        "val",
        vcmr / "synthetic_val_release.jsonl",
        "tvr",
        video2dur=read_video2dur_idx(index),
        video2dur_split="val",
        video2dur_path=index,
    )
    return corpus, split


def replace_dataset(path: Path, key: str, edit) -> None:
    """Rewrite dataset `key` of an HDF5 file with `edit(array)`."""
    with h5py.File(path, "r+") as handle:
        array = np.asarray(handle[key][()], dtype=np.float32)
        del handle[key]
        handle.create_dataset(key, data=edit(array))


def with_nan(row: int = 2, value: float = np.nan):
    def edit(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array[min(row, len(array) - 1), 0] = value
        return array

    return edit


def first_query(path: Path, video: str = VIDEO) -> str:
    with h5py.File(path, "r") as handle:
        return next(k for k in handle if k.startswith(video))


def bigfile_set(feature_dir: Path, video: str, rows: slice, value: float) -> int:
    """Write `value` into frames `rows` of `video` in feature.bin; returns its first row."""
    ids = (feature_dir / "id.txt").read_text().split()
    first = ids.index(f"{video}_0")
    dim = int((feature_dir / "shape.txt").read_text().split()[1])
    features = np.memmap(feature_dir / "feature.bin", dtype="<f4", mode="r+").reshape(-1, dim)
    features[first + rows.start : first + rows.stop] = value
    features.flush()
    return first


def jsonl_edit(path: Path, line: int, **fields) -> None:
    lines = path.read_text().splitlines()
    record = json.loads(lines[line - 1])
    record.update(fields)
    lines[line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def vcmr_lmdb(root: Path, edit: dict | None = None) -> Path:
    """The VCMR video features as a HERO LMDB (msgpack, float16), with `edit` applied."""
    with h5py.File(root / "vcmr" / "video_feature.h5", "r") as handle:
        arrays = {k: np.asarray(handle[k][()], dtype=np.float32) for k in handle}
    arrays.update(edit or {})
    path = root / "vcmr" / "video_lmdb"
    write_lmdb(path, arrays, encoding="msgpack", dtype=np.float16)
    return path


# ---------------------------------------------------------------------- PRVR readers
def test_prvr_nan_frames_in_a_video_name_file_key_row(corpus_copy):
    feature_dir, _, _ = prvr_paths(corpus_copy)
    bigfile_set(feature_dir, VIDEO, slice(3, 8), np.nan)  # five NaN frames (issue #18, 1.)
    corpus = prvr_corpus(corpus_copy)
    with pytest.raises(DataError, match=rf"{PRVR_FEATURE}.*{VIDEO}.*row 3.*non-finite"):
        corpus.video_inputs(VIDEO)


def test_prvr_inf_frame_is_refused(corpus_copy):
    feature_dir, _, _ = prvr_paths(corpus_copy)
    bigfile_set(feature_dir, VIDEO, slice(0, 1), np.inf)
    with pytest.raises(DataError, match=rf"{VIDEO}.*row 0.*inf"):
        prvr_corpus(corpus_copy).video_inputs(VIDEO)


def test_prvr_eval_loaders_built_in_place_refuse_non_finite_inputs(corpus_copy):
    """The evaluation loaders build whole batches (`__getitems__`): a NaN frame or query token
    still stops them with the DataError naming the file, key and row."""
    from partial_relevance.data.prvr import PrvrDataModule

    feature_dir, query_file, _ = prvr_paths(corpus_copy)
    bigfile_set(feature_dir, VIDEO, slice(2, 3), np.nan)
    key = first_query(query_file)
    replace_dataset(query_file, key, with_nan(row=1))
    dm = PrvrDataModule(root=str(corpus_copy / "prvr"), eval_video_batch_size=64)
    dm.setup("validate")
    videos, queries = dm.val_dataloader()
    with pytest.raises(DataError, match=rf"{PRVR_FEATURE}.*{VIDEO}.*row 2.*non-finite"):
        list(videos)
    with pytest.raises(DataError, match=rf"query_feat\.hdf5.*{re.escape(key)}.*row 1"):
        list(queries)


def test_prvr_nan_query_token_names_hdf5_and_cap_id(corpus_copy):
    _, query_file, _ = prvr_paths(corpus_copy)
    key = first_query(query_file)
    replace_dataset(query_file, key, with_nan(row=1))
    with pytest.raises(DataError, match=rf"query_feat\.hdf5.*{re.escape(key)}.*row 1"):
        prvr_corpus(corpus_copy).query_input(key)


def test_prvr_zero_token_query_is_refused_at_load(corpus_copy):
    _, query_file, _ = prvr_paths(corpus_copy)
    key = first_query(query_file)
    replace_dataset(query_file, key, lambda a: a[:0])
    with pytest.raises(DataError, match=rf"query_feat\.hdf5.*{re.escape(key)}.*zero rows"):
        prvr_corpus(corpus_copy).load_split("val")


def test_prvr_query_of_another_dim_names_key(corpus_copy):
    _, query_file, _ = prvr_paths(corpus_copy)
    key = first_query(query_file)
    replace_dataset(query_file, key, lambda a: np.concatenate([a, a], axis=1))
    with pytest.raises(DataError, match=rf"{re.escape(key)}.*feature dim 32"):
        prvr_corpus(corpus_copy).query_input(key)


def test_prvr_zero_frame_video_is_refused_at_open(corpus_copy):
    feature_dir, _, _ = prvr_paths(corpus_copy)
    v2f = feature_dir / "video2frames.txt"
    text = v2f.read_text()
    frames = re.search(rf"'{VIDEO}': \[[^\]]*\]", text)
    assert frames is not None
    v2f.write_text(text.replace(frames.group(0), f"'{VIDEO}': []"))
    with pytest.raises(DataError, match=rf"video2frames\.txt.*{VIDEO}.*no frames"):
        prvr_corpus(corpus_copy)


def test_prvr_truncated_feature_bin(corpus_copy):
    feature_dir, _, _ = prvr_paths(corpus_copy)
    path = feature_dir / "feature.bin"
    os.truncate(path, path.stat().st_size - 7)
    with pytest.raises(DataError, match=r"feature\.bin.*truncated"):
        prvr_corpus(corpus_copy)


def test_prvr_caption_without_features_names_caption_file(corpus_copy):
    _, _, caption = prvr_paths(corpus_copy)
    caption.write_text(caption.read_text() + "ghost_video#enc#0 a caption of nothing\n")
    with pytest.raises(DataError, match=r"ghost_video#enc#0.*synthetic" + "val"):
        prvr_corpus(corpus_copy).load_split("val")


def test_prvr_nan_training_video_stops_train(corpus_copy, tmp_path, synthetic_cache):
    """End to end (issue #18, 1.): NaN frames gave R@1 100 with exit 0; now a DataError."""
    from partial_relevance.train import train
    from support import TINY_RUN_OVERRIDES, compose_train_config

    feature_dir, _, _ = prvr_paths(corpus_copy)
    bigfile_set(feature_dir, "train_video_00002", slice(0, 5), np.nan)
    overrides = [
        "experiment=prvr_synthetic",
        "logger=none",
        *TINY_RUN_OVERRIDES,
        "data.synthetic=null",
        f"data.root={corpus_copy / 'prvr'}",
        "data.video_dim=32",
        "data.query_dim=16",
    ]
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"train_video_00002.*row 0.*non-finite"):
        train(compose_train_config(overrides, run, synthetic_cache))
    assert not (run / "metrics.json").exists()


# ---------------------------------------------------------------------- VCMR readers
@pytest.mark.parametrize("store", ["video_feature.h5", "sub_feature.h5"])
def test_vcmr_nan_clip_names_store_and_video(corpus_copy, store):
    replace_dataset(corpus_copy / "vcmr" / store, VIDEO, with_nan(row=4))
    corpus, _ = load_vcmr_val(corpus_copy)
    with pytest.raises(DataError, match=rf"{store}.*{VIDEO}.*row 4.*non-finite"):
        corpus.video_inputs(VIDEO)


def test_vcmr_nan_query_names_query_store(corpus_copy):
    query_file = corpus_copy / "vcmr" / "query_feature.h5"
    replace_dataset(query_file, "7", with_nan(row=0))
    with pytest.raises(DataError, match=r"query_feature\.h5.*'7'.*row 0"):
        vcmr_corpus(corpus_copy).query_input("7")


def test_vcmr_zero_token_query_is_refused_at_load(corpus_copy):
    query_file = corpus_copy / "vcmr" / "query_feature.h5"
    jsonl = corpus_copy / "vcmr" / "synthetic_val_release.jsonl"
    key = str(json.loads(jsonl.read_text().splitlines()[0])["desc_id"])
    replace_dataset(query_file, key, lambda a: a[:0])
    with pytest.raises(DataError, match=rf"query_feature\.h5.*'{key}'.*zero rows"):
        load_vcmr_val(corpus_copy)


def test_vcmr_zero_clip_video_names_key(corpus_copy):
    replace_dataset(corpus_copy / "vcmr" / "video_feature.h5", VIDEO, lambda a: a[:0])
    corpus, _ = load_vcmr_val(corpus_copy)
    with pytest.raises(DataError, match=rf"video_feature\.h5.*{VIDEO}.*zero rows"):
        corpus.video_inputs(VIDEO)


def test_vcmr_video_of_another_dim_names_key(corpus_copy):
    path = corpus_copy / "vcmr" / "video_feature.h5"
    replace_dataset(path, VIDEO, lambda a: a[:, :20])
    corpus, _ = load_vcmr_val(corpus_copy)
    with pytest.raises(DataError, match=rf"video_feature\.h5.*{VIDEO}.*feature dim 20"):
        corpus.video_inputs(VIDEO)


def test_moment_beyond_duration_names_file_and_line(corpus_copy):
    path = corpus_copy / "vcmr" / "synthetic_val_release.jsonl"
    duration = json.loads(path.read_text().splitlines()[4])["duration"]
    jsonl_edit(path, 5, ts=[1.0, duration + 1.6])
    with pytest.raises(DataError, match=r"synthetic_val_release\.jsonl.*line 5.*duration"):
        read_tvr_jsonl(path)


def test_moment_within_one_clip_of_the_end_is_accepted(corpus_copy):
    path = corpus_copy / "vcmr" / "synthetic_val_release.jsonl"
    duration = json.loads(path.read_text().splitlines()[4])["duration"]
    jsonl_edit(path, 5, ts=[1.0, duration + 1.4])
    assert read_tvr_jsonl(path)[4].span == (1.0, duration + 1.4)


def test_negative_moment_names_file_and_line(corpus_copy):
    path = corpus_copy / "vcmr" / "synthetic_val_release.jsonl"
    jsonl_edit(path, 2, ts=[-3.0, 4.0])
    with pytest.raises(DataError, match=r"synthetic_val_release\.jsonl.*line 2.*0 <= st"):
        load_vcmr_val(corpus_copy)


def test_lmdb_nan_value_names_key(corpus_copy):
    bad = np.ones((6, 32), dtype=np.float32)
    bad[5, 3] = np.nan
    path = vcmr_lmdb(corpus_copy, {VIDEO: bad})
    corpus = vcmr_corpus(corpus_copy, "lmdb", path)
    with pytest.raises(DataError, match=rf"video_lmdb.*{VIDEO}.*row 5.*non-finite"):
        corpus.video_inputs(VIDEO)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_lmdb_float16_overflow_is_refused(corpus_copy):
    path = vcmr_lmdb(corpus_copy, {VIDEO: np.full((4, 32), 1e6, dtype=np.float32)})
    with pytest.raises(DataError, match=rf"{VIDEO}.*row 0.*inf"):
        open_store("lmdb", path).get(VIDEO)


def test_lmdb_zero_clip_video_names_key(corpus_copy):
    path = vcmr_lmdb(corpus_copy, {VIDEO: np.zeros((0, 32), dtype=np.float32)})
    with pytest.raises(DataError, match=rf"video_lmdb.*{VIDEO}.*zero rows"):
        open_store("lmdb", path).get(VIDEO)


def test_truncated_lmdb_is_a_data_error_not_sigbus(corpus_copy):
    path = vcmr_lmdb(corpus_copy)
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(DataError, match=r"data\.mdb.*truncated"):
        open_store("lmdb", path)


# ---------------------------------------------------------------------- the converter
def test_converter_refuses_nan(corpus_copy, tmp_path):
    replace_dataset(corpus_copy / "vcmr" / "video_feature.h5", VIDEO, with_nan(row=1))
    out = tmp_path / "out.h5"
    with pytest.raises(DataError, match=rf"video_feature\.h5.*{VIDEO}.*row 1"):
        convert(out, corpus_copy / "vcmr" / "video_feature.h5", "hdf5", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_converter_cli_truncated_lmdb_one_line_exit_1(corpus_copy, tmp_path, capsys):
    path = vcmr_lmdb(corpus_copy)
    os.truncate(path / "data.mdb", (path / "data.mdb").stat().st_size // 3)
    with pytest.raises(SystemExit) as stop:
        convert_main(["--video", str(path), "--out", str(tmp_path / "o.h5"), "--no-progress"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.mdb" in err and "truncated" in err


def test_converter_cli_zero_frame_bigfile_one_line(corpus_copy, tmp_path, capsys):
    feature_dir, _, _ = prvr_paths(corpus_copy)
    v2f = feature_dir / "video2frames.txt"
    v2f.write_text(v2f.read_text().replace(f"'{VIDEO}': [", f"'{VIDEO}': [], 'x': ["))
    argv = ["--video-format", "bigfile", "--video", str(feature_dir)]
    with pytest.raises(SystemExit) as stop:
        convert_main([*argv, "--out", str(tmp_path / "o.h5"), "--no-progress"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and VIDEO in err and "video2frames.txt" in err


# ---------------------------------------------------------------------- evaluate's checkpoints
def test_truncated_checkpoint_names_path(tmp_path):
    path = tmp_path / "epoch_003.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(64, 64)}}, path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(DataError, match=r"epoch_003\.ckpt.*not a readable checkpoint"):
        load_checkpoint_state(path)


def test_foreign_file_as_checkpoint_names_path(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint at all")
    with pytest.raises(DataError, match=r"notes\.ckpt.*not a readable checkpoint"):
        load_checkpoint_state(path)


def test_checkpoint_without_state_dict_names_path(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(DataError, match=r"weights\.pt.*no 'state_dict'"):
        load_checkpoint_state(path)


def test_checkpoint_of_another_model_names_path_and_parameter(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(5)}}, other)
    with pytest.raises(DataError, match=r"other\.ckpt.*'0\.weight' has shape \(5, 4\)"):
        check_checkpoint_fits(other, model)
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3, 4)}}, other)
    with pytest.raises(DataError, match=r"other\.ckpt.*another model.*'0\.weight'"):
        check_checkpoint_fits(other, model)


# ---------------------------------------------------------------------- the ranking file
def _ranking(scores: np.ndarray, video_idx: np.ndarray | None = None) -> SplitRanking:
    video_idx = np.array([[0, 1, 2], [2, 1, 0]]) if video_idx is None else video_idx
    return SplitRanking("val", ["7", "8"], ["a", "b", "c"], video_idx, scores, np.array([0, 2]))


def test_ranking_file_nan_score_names_file_split_row(tmp_path):
    scores = np.array([[0.9, 0.5, 0.1], [0.8, np.nan, 0.0]])
    path = write_rankings(tmp_path / "rankings.h5", {"val": _ranking(scores)})
    with pytest.raises(DataError, match=r"rankings\.h5.*'val'.*row 1 \('8'\).*non-finite"):
        read_rankings(path, "val")


def test_ranking_file_index_out_of_range_names_row(tmp_path):
    scores = np.zeros((2, 3))
    ranking = _ranking(scores, np.array([[0, 1, 2], [2, 9, 0]]))
    path = write_rankings(tmp_path / "rankings.h5", {"val": ranking})
    with pytest.raises(DataError, match=r"rankings\.h5.*row 1.*video_idx out of range"):
        read_rankings(path, "val")


def test_ranking_file_shape_mismatch_names_file(tmp_path):
    path = write_rankings(tmp_path / "rankings.h5", {"val": _ranking(np.zeros((2, 3)))})
    with h5py.File(path, "r+") as handle:
        del handle["val/scores"]
        handle["val/scores"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(DataError, match=r"rankings\.h5.*scores"):
        read_rankings(path, "val")
