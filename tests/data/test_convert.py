"""The converter: every store format round-trips into the consolidated HDF5 (SPEC §1.2)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from partial_relevance.data import convert as convert_module
from partial_relevance.data.annotations import Query, write_tvr_jsonl
from partial_relevance.data.convert import convert, main
from partial_relevance.data.errors import DataError
from partial_relevance.data.stores import open_store
from partial_relevance.data.stores.bigfile import write_bigfile
from partial_relevance.data.stores.hdf5 import Hdf5Store
from partial_relevance.data.stores.lmdb import write_lmdb

RNG = np.random.default_rng(1)
LENGTHS = {"vid_a": 4, "vid_b": 7, "vid_c": 1}


def _arrays(dim: int, lengths: dict[str, int] = LENGTHS) -> dict[str, np.ndarray]:
    return {k: RNG.standard_normal((n, dim)).astype(np.float32) for k, n in lengths.items()}


def _write_hdf5(path: Path, arrays: dict[str, np.ndarray], masks: dict | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for key, array in arrays.items():
            f.create_dataset(key, data=array)
            if masks is not None:
                f.create_dataset(key + "-mask", data=masks[key])
    return path


def _assert_group_matches(out: Path, group: str, source_format: str, source: Path) -> None:
    """Every key of the source store comes back identical (as float32) from the output group."""
    src = open_store(source_format, source)
    dst = Hdf5Store(out, group=group)
    assert sorted(dst.keys()) == sorted(src.keys()) and dst.dim == src.dim
    for key in list(src.keys()):
        got = dst.get(key)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, src.get(key))
    src.close()
    dst.close()


@pytest.mark.parametrize(
    ("video_format", "encoding"),
    [
        ("bigfile", None),
        ("hdf5", None),
        ("lmdb", "msgpack"),
        ("lmdb", "npz"),
        ("lmdb", "npz_compressed"),
    ],
)
def test_video_roundtrip_each_format(tmp_path: Path, video_format: str, encoding: str) -> None:
    videos = _arrays(dim=12)
    if video_format == "bigfile":
        source = tmp_path / "FeatureData" / "i3d"
        write_bigfile(source, videos)
    elif video_format == "hdf5":
        source = _write_hdf5(tmp_path / "video.h5", videos)
    else:
        padded = {k: np.concatenate([v, np.ones((3, 12), np.float32)]) for k, v in videos.items()}
        source = tmp_path / "tv" / "resnet_slowfast_1.5_compressed"
        write_lmdb(source, padded, encoding=encoding, dtype=np.float16)
        (tmp_path / "tv" / "id2nframe.json").write_text(json.dumps(LENGTHS))
    out = tmp_path / "out" / "tvr_val.h5"
    summaries = convert(out, video=source, video_format=video_format, progress=False)
    assert summaries["video"].count == 3 and summaries["video"].dim == 12
    _assert_group_matches(out, "video", video_format, source)
    if video_format != "lmdb":  # float32 sources come back bit-identical to what was written
        store = Hdf5Store(out, group="video")
        for key, array in videos.items():
            np.testing.assert_array_equal(store.get(key), array)
    with h5py.File(out, "r") as f:
        assert set(f) == {"video", "index"}
        keys = [k.decode() for k in f["index/video_keys"][()]]
        assert sorted(keys) == sorted(LENGTHS)
        assert f["index"].attrs["video_count"] == 3 and f["index"].attrs["video_dim"] == 12
        lengths = dict(zip(keys, f["index/video_lengths"][()].tolist()))
        assert lengths == LENGTHS  # id2nframe truncation carried into the output
    assert not list(out.parent.glob(".*tmp*"))  # the temporary file was renamed away


def test_video_sub_query_xml_layout(tmp_path: Path) -> None:
    videos = _arrays(dim=8)
    masks = {k: (RNG.random(n) > 0.5).astype(np.float32) for k, n in LENGTHS.items()}
    subs = {k: v * masks[k][:, None] for k, v in _arrays(dim=4).items()}
    queries = _arrays(dim=4, lengths={"90200": 5, "94603": 30})
    _write_hdf5(tmp_path / "video.h5", videos)
    _write_hdf5(tmp_path / "sub.h5", subs, masks)
    _write_hdf5(tmp_path / "query.h5", queries)
    out = tmp_path / "all.h5"
    convert(
        out,
        video=tmp_path / "video.h5",
        video_format="hdf5",
        sub=tmp_path / "sub.h5",
        query=tmp_path / "query.h5",
        progress=False,
    )
    _assert_group_matches(out, "video", "hdf5", tmp_path / "video.h5")
    _assert_group_matches(out, "sub", "hdf5", tmp_path / "sub.h5")
    _assert_group_matches(out, "query", "hdf5", tmp_path / "query.h5")
    sub_store = Hdf5Store(out, group="sub")
    for key, mask in masks.items():
        np.testing.assert_array_equal(sub_store.get_mask(key), mask)  # the source's own masks
    with h5py.File(out, "r") as f:
        assert f["index"].attrs["sub_count"] == 3 and f["index"].attrs["query_dim"] == 4
        assert sorted(k.decode() for k in f["index/query_keys"][()]) == ["90200", "94603"]


def test_sub_without_masks_gets_nonzero_rows(tmp_path: Path) -> None:
    videos = _arrays(dim=6)
    subs = _arrays(dim=4)
    subs["vid_b"][[1, 4]] = 0.0  # clips without a subtitle
    write_lmdb(tmp_path / "video_db", videos, encoding="msgpack", dtype=np.float32)
    write_lmdb(tmp_path / "sub_db", subs, encoding="npz", dtype=np.float32)  # CONQUER: no masks
    out = tmp_path / "out.h5"
    convert(
        out,
        video=tmp_path / "video_db",
        sub=tmp_path / "sub_db",
        sub_format="lmdb",
        progress=False,
    )
    mask = Hdf5Store(out, group="sub").get_mask("vid_b")
    np.testing.assert_array_equal(mask, [1, 0, 1, 1, 0, 1, 1])


def test_split_keys_restrict_groups(tmp_path: Path) -> None:
    videos = _arrays(dim=4)
    queries = _arrays(dim=3, lengths={"1": 2, "2": 3, "3": 4})
    write_bigfile(tmp_path / "feat", videos)
    _write_hdf5(tmp_path / "query.h5", queries)
    split = tmp_path / "val.jsonl"
    write_tvr_jsonl(
        split,
        [
            Query("1", "vid_a", "x", span=(0.0, 1.0), duration=6.0, query_type="v"),
            Query("3", "vid_c", "y", span=(0.0, 1.0), duration=1.5, query_type="t"),
        ],
    )
    out = tmp_path / "val.h5"
    common = {"video": tmp_path / "feat", "video_format": "bigfile", "progress": False}
    convert(out, query=tmp_path / "query.h5", split_keys=split, **common)
    assert sorted(Hdf5Store(out, group="video").keys()) == ["vid_a", "vid_c"]
    assert sorted(Hdf5Store(out, group="query").keys()) == ["1", "3"]
    keys_txt = tmp_path / "keys.txt"
    keys_txt.write_text("vid_b\n\nvid_a\n")
    convert(out, split_keys=keys_txt, force=True, **common)
    assert list(Hdf5Store(out, group="video").keys()) == ["vid_a", "vid_b"]
    keys_txt.write_text("vid_a\nvid_zzz\n")
    with pytest.raises(DataError, match=r"keys\.txt.*key 'vid_zzz' has no features"):
        convert(tmp_path / "other.h5", split_keys=keys_txt, **common)
    assert not (tmp_path / "other.h5").exists()


def test_cli_refuses_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_lmdb(tmp_path / "db", _arrays(dim=4), encoding="npz_compressed")
    out = tmp_path / "out.h5"
    argv = ["--video-format", "lmdb", "--video", str(tmp_path / "db"), "--out", str(out)]
    main([*argv, "--no-progress"])
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "3 video (dim 4)" in summary[0] and str(out) in summary[0]
    before = out.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert out.stat().st_mtime_ns == before
    main([*argv, "--force", "--no-progress"])
    assert "wrote" in capsys.readouterr().out


def test_cli_bad_input_exits_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--video-format", "bigfile", "--video", str(tmp_path / "nope"), "--out", "x.h5"])
    assert exit_info.value.code == 1
    assert "nope" in capsys.readouterr().err


def test_verification_catches_a_lost_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bigfile(tmp_path / "feat", _arrays(dim=4))
    original = convert_module._write_group

    def lossy_write_group(out, name, store, keys, progress):  # type: ignore[no-untyped-def]
        summary = original(out, name, store, keys, progress)
        del out[name][keys[-1]]  # simulate a write that silently lost a dataset
        return summary

    monkeypatch.setattr(convert_module, "_write_group", lossy_write_group)
    out = tmp_path / "out.h5"
    with pytest.raises(DataError, match=r"verification of group 'video' failed: 2 keys, wrote 3"):
        convert(out, video=tmp_path / "feat", video_format="bigfile", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.h5.tmp*"))
