"""Each feature store on files written in its exact on-disk format (SPEC §1.2), and bad input."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import re
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

from partial_relevance.data.annotations import read_caption_file
from partial_relevance.data.errors import DataError
from partial_relevance.data.preprocess import vcmr_video_inputs
from partial_relevance.data.stores import STORE_FORMATS, open_store, require_keys
from partial_relevance.data.stores.bigfile import BigFileStore, write_bigfile
from partial_relevance.data.stores.hdf5 import Hdf5Store
from partial_relevance.data.stores.lmdb import LmdbStore, encode_value, write_lmdb

RNG = np.random.default_rng(0)


def _videos(dim: int = 6, lengths: tuple[int, ...] = (5, 1, 9)) -> dict[str, np.ndarray]:
    return {
        f"vid_{i}": RNG.standard_normal((n, dim)).astype(np.float32) for i, n in enumerate(lengths)
    }


def assert_store_holds(store, expected: dict[str, np.ndarray], dim: int, ordered: bool) -> None:
    """`store` has `expected`'s keys (in its order when `ordered`) at dim `dim`, and gives each
    back as float32 equal to `expected`'s array."""
    keys = list(store.keys())
    assert (keys if ordered else sorted(keys)) == (list(expected) if ordered else sorted(expected))
    assert store.dim == dim
    for key, array in expected.items():
        out = store.get(key)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, array)
        assert key in store
    assert "nope" not in store


def assert_store_errors(
    store_class: type,
    path: Path,
    dim: int,
    wrong_dim: int,
    key_path: Path,
    missing_key: str,
    absent: Path,
) -> None:
    """The DataErrors every store gives, each naming its file: `path` (of dim `dim`) opened
    expecting `wrong_dim`, `missing_key` read from `key_path`, and a path that is `absent`."""
    expected = f"dim is {dim} but the config expects {wrong_dim}"
    with pytest.raises(DataError, match=rf"{re.escape(path.name)}.*{expected}"):
        store_class(path, expected_dim=wrong_dim)
    missing = rf"{re.escape(key_path.name)}.*key '{missing_key}' not found"
    with pytest.raises(DataError, match=missing):
        store_class(key_path).get(missing_key)
    with pytest.raises(DataError, match=rf"{re.escape(absent.name)}.*not found"):
        store_class(absent)


# ------------------------------------------------------------------ BigFile (MS-SL)


def test_bigfile_roundtrip(tmp_path: Path) -> None:
    videos = _videos()
    write_bigfile(tmp_path / "i3d", videos)
    store = open_store("bigfile", tmp_path / "i3d", expected_dim=6)
    assert isinstance(store, BigFileStore)
    assert_store_holds(store, videos, 6, ordered=True)


def test_bigfile_bad_input(tmp_path: Path) -> None:
    write_bigfile(tmp_path / "feat", _videos())
    feat = tmp_path / "feat"
    assert_store_errors(BigFileStore, feat, 6, 8, feat, "nope", tmp_path / "missing_dir")
    bin_path = tmp_path / "feat" / "feature.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-4])  # one float short
    with pytest.raises(DataError, match=r"feature\.bin.*truncated"):
        BigFileStore(tmp_path / "feat")


# ------------------------------------------------------------------ HDF5 (XML / TVRetrieval)


def _write_xml_files(root: Path) -> tuple[dict, dict, dict, dict]:
    """Video, subtitle (+ `-mask`) and query HDF5 files laid out as XML's release."""
    video = _videos(dim=8)
    sub, masks = {}, {}
    for key, array in video.items():
        mask = (RNG.random(len(array)) > 0.4).astype(np.float32)
        sub[key] = RNG.standard_normal((len(array), 4)).astype(np.float32) * mask[:, None]
        masks[key] = mask
    query = {str(desc_id): RNG.standard_normal((n, 4)).astype(np.float32)
             for desc_id, n in [(90200, 7), (94603, 30)]}  # fmt: skip
    with h5py.File(root / "video.h5", "w") as f:
        for key, array in video.items():
            f.create_dataset(key, data=array)
    with h5py.File(root / "sub.h5", "w") as f:
        for key, array in sub.items():
            f.create_dataset(key, data=array)
            f.create_dataset(key + "-mask", data=masks[key])
    with h5py.File(root / "query.h5", "w") as f:
        for key, array in query.items():
            f.create_dataset(key, data=array)
    return video, sub, masks, query


def test_hdf5_xml_layout(tmp_path: Path) -> None:
    video, sub, masks, query = _write_xml_files(tmp_path)
    vstore = open_store("hdf5", tmp_path / "video.h5", expected_dim=8)
    sstore = open_store("hdf5", tmp_path / "sub.h5", expected_dim=4)
    qstore = open_store("hdf5", tmp_path / "query.h5", expected_dim=4)
    assert sorted(vstore.keys()) == sorted(video)
    assert sorted(sstore.keys()) == sorted(sub)  # `-mask` datasets are not features
    assert sorted(qstore.keys()) == ["90200", "94603"]
    for key in video:
        np.testing.assert_array_equal(vstore.get(key), video[key])
        np.testing.assert_array_equal(sstore.get(key), sub[key])
        np.testing.assert_array_equal(sstore.get_mask(key), masks[key])
    assert vstore.get_mask("vid_0") is None
    np.testing.assert_array_equal(qstore.get("94603"), query["94603"])
    clone = pickle.loads(pickle.dumps(vstore))
    np.testing.assert_array_equal(clone.get("vid_1"), video["vid_1"])


def _write_compact(root: h5py.Group, key: str, array: np.ndarray) -> None:
    """A dataset stored in its object header (compact layout: no byte offset of its own)."""
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create_simple(array.shape)
    dataset = h5py.h5d.create(root.id, key.encode(), h5py.h5t.py_create(array.dtype), space, plist)
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)


@pytest.mark.parametrize(
    "storage",
    [
        "contiguous",
        "chunked",
        "gzip",
        "compact",
        "external",
        "float16",
        "big-endian",
        "userblock",
        "group",
    ],
)
def test_hdf5_direct_read_equals_h5py(tmp_path: Path, storage: str) -> None:
    """Contiguous datasets are read at their byte offset (one preadv), everything else through
    h5py: either way `length` and `get` return what h5py reads, every pass, after pickling
    too, and an absent key stays a DataError naming it."""
    rng = np.random.default_rng(0)
    dtype = {"float16": "<f2", "big-endian": ">f4"}.get(storage, "<f4")
    arrays = {f"q{i}": rng.standard_normal((3 + i, 4)).astype(dtype) for i in range(5)}
    path = tmp_path / "query.h5"
    options = {"chunked": {"chunks": (1, 4)}, "gzip": {"compression": "gzip"}}.get(storage, {})
    with h5py.File(path, "w", userblock_size=512 if storage == "userblock" else 0) as f:
        root = f.create_group("query") if storage == "group" else f
        for key, array in arrays.items():
            if storage == "compact":
                _write_compact(root, key, array)
            elif storage == "external":  # raw bytes in another file
                external = [(str(tmp_path / f"{key}.raw"), 0, array.nbytes)]
                root.create_dataset(key, data=array, external=external)
            else:
                root.create_dataset(key, data=array, **options)
    store = Hdf5Store(path, expected_dim=4, group="query" if storage == "group" else None)
    # Lengths first (as the evaluation loaders order queries), then reads.
    assert [store.length(key) for key in arrays] == [3 + i for i in range(5)]
    for _ in range(2):  # the first pass locates each dataset, the second reuses that
        for key, array in arrays.items():
            np.testing.assert_array_equal(store.get(key), array.astype(np.float32))
    direct = [location is not None for location in store._locations.values()]
    assert (
        all(direct)
        if storage in ("contiguous", "float16", "big-endian", "group")
        else not any(direct)
    )
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.get("q4"), arrays["q4"].astype(np.float32))
    with pytest.raises(DataError, match="'absent' not found"):
        store.get("absent")
    with pytest.raises(DataError, match="'absent' not found"):
        store.length("absent")
    store.close()


def test_hdf5_bad_input(tmp_path: Path) -> None:
    _write_xml_files(tmp_path)
    video, query, absent = (tmp_path / f"{name}.h5" for name in ("video", "query", "absent"))
    assert_store_errors(Hdf5Store, video, 8, 3072, query, "1", absent)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"junk\.h5.*cannot be opened"):
        Hdf5Store(tmp_path / "junk.h5")


# ------------------------------------------------------------------ LMDB (HERO / CONQUER)


@pytest.mark.parametrize(
    ("encoding", "dtype"),
    [
        ("msgpack", np.float16),
        ("msgpack", np.float32),
        ("npz", np.float32),
        ("npz", np.float16),
        ("npz_compressed", np.float16),
    ],
)
def test_lmdb_encodings(tmp_path: Path, encoding: str, dtype: type) -> None:
    videos = _videos(dim=10)
    write_lmdb(tmp_path / "db", videos, encoding=encoding, dtype=dtype)
    store = open_store("lmdb", tmp_path / "db", expected_dim=10)
    assert isinstance(store, LmdbStore)
    stored = {key: array.astype(dtype).astype(np.float32) for key, array in videos.items()}
    assert_store_holds(store, stored, 10, ordered=False)


def test_lmdb_mixed_encodings_detected_per_value(tmp_path: Path) -> None:
    arrays = _videos(dim=3, lengths=(2, 3, 4))
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for (key, array), enc in zip(arrays.items(), ["msgpack", "npz", "npz_compressed"]):
            txn.put(key.encode(), encode_value(array.astype(np.float16), enc))
    env.close()
    store = LmdbStore(tmp_path / "db")
    for key, array in arrays.items():
        np.testing.assert_array_equal(store.get(key), array.astype(np.float16).astype(np.float32))


def test_lmdb_id2nframe_truncates(tmp_path: Path) -> None:
    # HERO layout: <img_db>/id2nframe.json beside <img_db>/<feat>_1.5_compressed/ (padded arrays)
    padded = _videos(dim=4, lengths=(8, 8, 8))
    true_counts = {"vid_0": 5, "vid_1": 8, "vid_2": 1}
    db = tmp_path / "tv" / "resnet_slowfast_1.5_compressed"
    write_lmdb(db, padded, encoding="npz_compressed", dtype=np.float16)
    (tmp_path / "tv" / "id2nframe.json").write_text(json.dumps(true_counts))
    store = LmdbStore(db)
    for key, n in true_counts.items():
        assert store.get(key).shape == (n, 4)
    np.testing.assert_array_equal(store.get("vid_0"), padded["vid_0"][:5].astype(np.float16))
    assert LmdbStore(db, id2nframe=None).get("vid_0").shape == (8, 4)
    explicit = tmp_path / "counts.json"
    explicit.write_text(json.dumps({"vid_1": 2}))
    assert LmdbStore(db, id2nframe=explicit).get("vid_1").shape == (2, 4)
    assert LmdbStore(db, id2nframe=explicit).get("vid_0").shape == (8, 4)  # unlisted: as stored


def _sum_of(store: LmdbStore) -> float:
    return float(store.get("vid_0").sum())


def test_lmdb_pickle_and_fork(tmp_path: Path) -> None:
    videos = _videos(dim=4)
    write_lmdb(tmp_path / "db", videos, encoding="msgpack", dtype=np.float32)
    store = LmdbStore(tmp_path / "db")
    expected = float(videos["vid_0"].sum())
    clone = pickle.loads(pickle.dumps(store))  # same process, same path: shares the env
    assert _sum_of(clone) == pytest.approx(expected)
    with multiprocessing.get_context("fork").Pool(2) as pool:  # workers reopen the env
        assert pool.map(_sum_of, [store, store]) == pytest.approx([expected, expected])
    assert _sum_of(store) == pytest.approx(expected)
    store.close()
    assert _sum_of(store) == pytest.approx(expected)  # reopens lazily after close


def test_lmdb_bad_input(tmp_path: Path) -> None:
    write_lmdb(tmp_path / "db", _videos(dim=4), encoding="msgpack")
    # Corrupt entries are written before any store opens the path (py-lmdb allows one
    # environment per path and process); keys sort after vid_0, which sets the store's dim.
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"vid_bad", encode_value(np.zeros((2, 4)), "npz")[:40])  # truncated npz
        txn.put(b"vid_wide", encode_value(np.zeros((2, 5)), "msgpack"))
    env.close()
    with pytest.raises(DataError, match=r"db.*dim is 4 but the config expects 4352"):
        LmdbStore(tmp_path / "db", expected_dim=4352)
    store = LmdbStore(tmp_path / "db")
    with pytest.raises(DataError, match=r"db.*key 'nope' not found"):
        store.get("nope")
    with pytest.raises(DataError, match=r"db.*key 'vid_bad'.*cannot decode"):
        store.get("vid_bad")
    with pytest.raises(DataError, match=r"db.*key 'vid_wide'.*dim 5"):
        store.get("vid_wide")
    with pytest.raises(DataError, match=r"no_such_db.*not found"):
        LmdbStore(tmp_path / "no_such_db")
    with pytest.raises(DataError, match=r"absent\.json.*not found"):
        LmdbStore(tmp_path / "db", id2nframe=tmp_path / "absent.json")
    store.close()


# ------------------------------------------------------------------ shared helpers


def test_open_store_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bigfile, hdf5, lmdb"):
        open_store("parquet", tmp_path)
    assert STORE_FORMATS == ("bigfile", "hdf5", "lmdb")


def test_caption_video_without_features(tmp_path: Path) -> None:
    write_bigfile(tmp_path / "feat", _videos())
    captions = tmp_path / "tvrtrain.caption.txt"
    captions.write_text("vid_0#enc#0 a man walks\nvid_9#enc#0 nobody filmed this\n")
    queries = read_caption_file(captions)
    store = BigFileStore(tmp_path / "feat")
    require_keys(store, [q.video_id for q in queries[:1]], captions)  # present: no error
    with pytest.raises(DataError, match=r"tvrtrain\.caption\.txt.*key 'vid_9' has no features"):
        require_keys(store, [q.video_id for q in queries], captions)


def test_visual_and_subtitle_clip_counts_differ() -> None:
    visual = RNG.standard_normal((12, 8)).astype(np.float32)
    subtitle = RNG.standard_normal((10, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"'vid_x': 12 visual clips but 10 subtitle clips"):
        v, s, mask, scale = vcmr_video_inputs(visual, subtitle, None, video_id="vid_x")
    assert v.shape == (10, 8) and s.shape == (10, 4) and mask.shape == (10,) and scale == 1.0
