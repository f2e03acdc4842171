"""Annotation readers on the real TVR release files and on files the tests write; clip labels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from partial_relevance.data.annotations import (
    Query,
    read_didemo_raw,
    read_didemo_tvr_style,
    read_tvr_jsonl,
    read_video2dur_idx,
    write_tvr_jsonl,
)
from partial_relevance.data.errors import DataError
from partial_relevance.data.preprocess import clip_span_label, clip_span_to_seconds

TVR_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "tvr"
needs_tvr = pytest.mark.skipif(
    not (TVR_DIR / "tvr_val_release.jsonl").is_file(),
    reason=f"real TVR annotations not found under {TVR_DIR}",
)


# ------------------------------------------------------------------ real TVR release files


@needs_tvr
def test_tvr_val_release_counts() -> None:
    queries = read_tvr_jsonl(TVR_DIR / "tvr_val_release.jsonl")
    assert len(queries) == 10_895
    assert len({q.video_id for q in queries}) == 2_179
    assert Counter(q.query_type for q in queries) == {"v": 8_097, "vt": 1_834, "t": 964}
    assert len({q.query_id for q in queries}) == len(queries)
    for q in queries:
        assert q.span is not None and q.duration is not None
        assert 0 <= q.span[0] <= q.span[1]


@needs_tvr
def test_tvr_test_public_has_no_labels() -> None:
    queries = read_tvr_jsonl(TVR_DIR / "tvr_test_public_release.jsonl")
    assert len(queries) == 5_445
    assert all(q.video_id is None and q.span is None and q.duration is None for q in queries)
    assert all(q.text and q.query_id.isdigit() for q in queries)


@needs_tvr
def test_tvr_video2dur_idx_splits() -> None:
    index = read_video2dur_idx(TVR_DIR / "tvr_video2dur_idx.json")
    assert set(index) == {"train", "val", "test_public", "test_challenge"}
    assert len(index["test_public"]) == 1_089
    assert len(index["val"]) == 2_179
    assert len(index["train"]) == 17_435
    # global_idx numbers the videos of all splits together, without repeats
    all_idx = [idx for split in index.values() for _, idx in split.values()]
    assert len(set(all_idx)) == len(all_idx)
    duration, idx = next(iter(index["val"].values()))
    assert isinstance(duration, float) and isinstance(idx, int)
    # the val annotations cover exactly the val videos, with the same durations
    val = read_tvr_jsonl(TVR_DIR / "tvr_val_release.jsonl")
    assert {q.video_id for q in val} == set(index["val"])
    q = val[0]
    assert q.duration == pytest.approx(index["val"][q.video_id][0])


# ------------------------------------------------------------------ TVR jsonl on written files


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"vid_name": "a", "duration": 60.0, "ts": [1.0, 4.5], "type": "v", "desc": "x", "desc_id": 1}


def test_tvr_roundtrip_through_writer(tmp_path: Path) -> None:
    queries = [
        Query("7", "vid_a", "a man walks", span=(0.0, 3.0), duration=30.5, query_type="vt"),
        Query("8", "vid_b", "a dog barks", span=(2.25, 9.0), duration=12.0, query_type="t"),
    ]
    write_tvr_jsonl(tmp_path / "ann.jsonl", queries)
    assert read_tvr_jsonl(tmp_path / "ann.jsonl") == queries
    first = json.loads((tmp_path / "ann.jsonl").read_text().splitlines()[0])
    assert list(first) == ["vid_name", "duration", "ts", "type", "desc", "desc_id"]
    assert first["desc_id"] == 7


def test_tvr_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", '{"vid_name": "b", oops'])
    with pytest.raises(DataError, match=r"bad\.jsonl.*line 3"):
        read_tvr_jsonl(path)


def test_tvr_missing_field_names_line_and_field(tmp_path: Path) -> None:
    second = {k: v for k, v in GOOD.items() if k != "ts"} | {"desc_id": 2}
    path = _jsonl(tmp_path / "ann.jsonl", [json.dumps(GOOD), json.dumps(second)])
    with pytest.raises(DataError, match=r"ann\.jsonl.*line 2.*'ts'"):
        read_tvr_jsonl(path)


def test_tvr_unlabelled_line_in_labelled_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "ann.jsonl", [json.dumps(GOOD), '{"desc": "y", "desc_id": 2}'])
    with pytest.raises(DataError, match=r"line 2.*'vid_name'"):
        read_tvr_jsonl(path)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"ts": [5.0, 1.0]}, r"line 1.*'ts'"),
        ({"ts": [1.0]}, r"line 1.*'ts'"),
        ({"duration": "long"}, r"line 1.*'duration'"),
        ({"desc_id": "1"}, r"line 1.*'desc_id'"),
        ({"type": "x"}, r"line 1.*'type'"),
    ],
)
def test_tvr_bad_values(tmp_path: Path, change: dict, pattern: str) -> None:
    path = _jsonl(tmp_path / "ann.jsonl", [json.dumps(GOOD | change)])
    with pytest.raises(DataError, match=pattern):
        read_tvr_jsonl(path)


def test_tvr_duplicate_desc_id(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "ann.jsonl", [json.dumps(GOOD), json.dumps(GOOD)])
    with pytest.raises(DataError, match=r"line 2.*duplicate desc_id 1"):
        read_tvr_jsonl(path)


def test_missing_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl.*not found"):
        read_tvr_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"idx\.json.*not found"):
        read_video2dur_idx(tmp_path / "idx.json")
    with pytest.raises(DataError, match=r"didemo\.json.*not found"):
        read_didemo_raw(tmp_path / "didemo.json", None)


def test_video2dur_idx_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "idx.json"
    path.write_text(json.dumps({"val": {"a": [10.0, 0], "b": [10.0]}}))
    with pytest.raises(DataError, match=r"idx\.json.*split 'val', video 'b'"):
        read_video2dur_idx(path)


# ------------------------------------------------------------------ DiDeMo


def _didemo_item(annotation_id: int, times: list[list[int]], video: str = "v1.mp4") -> dict:
    return {
        "annotation_id": annotation_id,
        "description": " a cat ",
        "video": video,
        "times": times,
    }


def test_didemo_raw_windows_and_most_frequent(tmp_path: Path) -> None:
    items = [
        _didemo_item(1, [[1, 1], [2, 3], [2, 3], [0, 0]]),
        _didemo_item(2, [[0, 1], [4, 5], [4, 5], [0, 1]], video="v2.mp4"),  # tie: first wins
    ]
    path = tmp_path / "train_data.json"
    path.write_text(json.dumps(items))
    first, second = read_didemo_raw(path, {"v1.mp4": 30.0, "v2.mp4": 27.3})
    assert first.query_id == "1" and first.video_id == "v1.mp4" and first.text == "a cat"
    assert first.span == (10.0, 20.0)  # [5s, 5(e+1)] of the pair given twice
    assert first.windows == ((5.0, 10.0), (10.0, 20.0), (10.0, 20.0), (0.0, 5.0))
    assert first.duration == 30.0
    assert second.span == (0.0, 10.0)
    assert second.windows[1] == (20.0, 27.3)  # the last segment ends at the duration
    no_durations = read_didemo_raw(path, None)[1]
    assert no_durations.windows[1] == (20.0, 30.0) and no_durations.duration is None


def test_didemo_raw_errors(tmp_path: Path) -> None:
    path = tmp_path / "didemo.json"
    item = _didemo_item(5, [[0, 0]] * 4)
    del item["times"]
    path.write_text(json.dumps([_didemo_item(4, [[0, 0]] * 4), item]))
    with pytest.raises(DataError, match=r"didemo\.json.*item 1.*missing field 'times'"):
        read_didemo_raw(path, None)
    path.write_text(json.dumps([_didemo_item(4, [[2, 1], [0, 0], [0, 0], [0, 0]])]))
    with pytest.raises(DataError, match=r"annotation_id 4.*'times'"):
        read_didemo_raw(path, None)
    path.write_text(json.dumps([_didemo_item(4, [[0, 0]] * 4)]))
    with pytest.raises(DataError, match=r"video 'v1.mp4' has no duration"):
        read_didemo_raw(path, {"other.mp4": 30.0})


def test_didemo_tvr_style(tmp_path: Path) -> None:
    rows = [
        {"vid_name": "v1", "duration": 25.0, "ts": [[0, 5], [5, 10], [5, 10], [20, 25]],
         "desc": "d", "desc_id": 3},
        {"vid_name": "v2", "ts": [[10, 25], [0, 5], [5, 10], [10, 25]], "desc": "e", "desc_id": 4},
    ]  # fmt: skip
    path = _jsonl(tmp_path / "didemo_val.jsonl", [json.dumps(r) for r in rows])
    first, second = read_didemo_tvr_style(path)
    assert first.span == (5.0, 10.0) and len(first.windows) == 4 and first.duration == 25.0
    assert second.span == (10.0, 25.0) and second.duration is None
    bad = _jsonl(tmp_path / "bad.jsonl", [json.dumps(rows[0] | {"ts": [1.0, 2.0]})])
    with pytest.raises(DataError, match=r"bad\.jsonl.*line 1.*'ts'"):
        read_didemo_tvr_style(bad)


# ------------------------------------------------------------------ clip labels (SPEC §1.3)


def test_clip_label_moment_at_zero() -> None:
    assert clip_span_label(0.0, 1.5, num_clips=40) == (0, 0)
    assert clip_span_label(0.0, 2.0, num_clips=40) == (0, 1)
    assert clip_span_label(0.0, 0.0, num_clips=40) == (0, 0)  # empty moment keeps one clip


def test_clip_label_ending_at_the_duration() -> None:
    # 14.2 s -> ceil(14.2 / 1.5) = 10 clips; a moment ending at the duration ends at the last
    assert clip_span_label(12.0, 14.2, num_clips=10) == (8, 9)
    assert clip_span_label(12.0, 15.0, num_clips=10) == (8, 9)  # exactly on the grid end
    assert clip_span_label(12.0, 16.0, num_clips=10) == (8, 9)  # ts past the end is clamped
    assert clip_span_to_seconds(8, 9, duration=14.2) == (12.0, 14.2)


def test_clip_label_shorter_than_a_clip() -> None:
    assert clip_span_label(3.1, 3.2, num_clips=10) == (2, 2)
    assert clip_span_label(2.9, 3.1, num_clips=10) == (1, 2)  # straddles a boundary
    assert clip_span_label(3.0, 3.0, num_clips=10) == (2, 2)  # a point on a boundary


def test_clip_label_resampled_long_video() -> None:
    # 450 s = 300 clips of 1.5 s, pooled to 100 clips: scale 3, so 4.5 s per clip
    scale = 300 / 100
    assert clip_span_label(440.0, 450.0, num_clips=100, scale=scale) == (97, 99)
    assert clip_span_label(0.0, 4.5, num_clips=100, scale=scale) == (0, 0)
    assert clip_span_to_seconds(97, 99, duration=450.0, scale=scale) == (436.5, 450.0)
    # a non-integer scale (250 clips -> 100): the last moment still lands on the last clip
    assert clip_span_label(370.0, 375.0, num_clips=100, scale=2.5) == (98, 99)
