"""The TVR submission file (SPEC §7): write → read → score round trip, refusal to overwrite,
annotation-reader errors, and a perfect submission on the real TVR val annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from partial_relevance.metrics.submission import (
    ground_truth_from_tvr_jsonl,
    queries_from_tvr_jsonl,
    read_submission,
    read_video2idx,
    score_submission,
    write_submission,
)
from partial_relevance.metrics.vcmr import GroundTruth, evaluate_all

SHARED = Path(__file__).resolve().parents[3] / "shared"  # /work/shared beside the checkout
TVR_DIR = SHARED / "data" / "tvr"

VIDEO2IDX = {"vid_a": 0, "vid_b": 1, "vid_c": 2}
ANNOTATIONS = [
    {"vid_name": "vid_a", "duration": 60.0, "ts": [10.0, 20.0], "desc": "a", "type": "v",
     "desc_id": 11},
    {"vid_name": "vid_b", "duration": 30.0, "ts": [0.0, 6.0], "desc": "b", "type": "t",
     "desc_id": 12},
    {"vid_name": "vid_c", "duration": 90.0, "ts": [30.0, 40.0], "desc": "c", "type": "vt",
     "desc_id": 13},
]  # fmt: skip


def _write_jsonl(path: Path, records: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _random_predictions(seed: int) -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(seed)
    vcmr, svmr, vr = {}, {}, {}
    for d, rec in zip((11, 12, 13), ANNOTATIONS):
        gt_vid = VIDEO2IDX[rec["vid_name"]]
        n = 130  # more than 100: only 100 are written
        st = np.round(rng.uniform(0, 50, n), 2)
        rows = np.stack(
            [rng.integers(0, 3, n), st, st + np.round(rng.uniform(1, 15, n), 2), -np.arange(n)],
            axis=1,
        ).astype(np.float64)
        rows[3] = [gt_vid, *rec["ts"], -3.0]  # a hit at rank 3
        vcmr[d] = rows
        svmr[d] = rows[rows[:, 0] == gt_vid]
        vr[d] = rng.permutation(3)
    return vcmr, svmr, vr


def test_round_trip_scores_equal_in_memory(tmp_path: Path) -> None:
    gt_path = _write_jsonl(tmp_path / "gt.jsonl", ANNOTATIONS)
    gt = ground_truth_from_tvr_jsonl(gt_path, VIDEO2IDX)
    assert gt[12] == GroundTruth(12, 1, np.array([[0.0, 6.0]]), "t")
    queries = queries_from_tvr_jsonl(gt_path)
    assert queries == [(11, "a"), (12, "b"), (13, "c")]
    vcmr, svmr, vr = _random_predictions(0)

    path = write_submission(tmp_path / "out" / "sub.json", VIDEO2IDX, queries, vcmr, svmr, vr)
    raw = json.loads(path.read_text())
    assert list(raw) == ["video2idx", "VCMR", "SVMR", "VR"]
    assert raw["video2idx"] == VIDEO2IDX
    assert [item["desc_id"] for item in raw["VCMR"]] == [11, 12, 13]
    assert all(len(item["predictions"]) == 100 for item in raw["VCMR"])
    assert all(p[1] == 0 and p[2] == 0 for item in raw["VR"] for p in item["predictions"])
    assert raw["VR"][0]["predictions"][0][0] == int(vr[11][0])

    r_vcmr, r_svmr, r_vr = read_submission(path)
    np.testing.assert_array_equal(r_svmr[12], svmr[12][:100])
    np.testing.assert_array_equal(r_vcmr[11], vcmr[11][:100])
    np.testing.assert_array_equal(r_vr[13], vr[13])
    expected = evaluate_all(vcmr, svmr, vr, gt)
    assert score_submission(path, gt) == expected
    assert score_submission(path, gt_path) == expected  # GT read with the file's video2idx
    assert expected["VCMR"]["R@5 IoU0.7"] == 100.0


def test_tasks_can_be_left_out(tmp_path: Path) -> None:
    vcmr, _, _ = _random_predictions(1)
    path = write_submission(tmp_path / "s.json", VIDEO2IDX, [(11, "a")], vcmr, None, None)
    assert read_submission(path)[1:] == (None, None)
    assert "SVMR" not in json.loads(path.read_text())


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub.json"
    vcmr, svmr, vr = _random_predictions(2)
    write_submission(path, VIDEO2IDX, [(11, "a")], vcmr, svmr, vr)
    before = path.read_text()
    with pytest.raises(FileExistsError, match=r"sub\.json"):
        write_submission(path, VIDEO2IDX, [(12, "b")], vcmr, svmr, vr)
    assert path.read_text() == before
    write_submission(path, VIDEO2IDX, [(12, "b")], vcmr, svmr, vr, overwrite=True)
    assert json.loads(path.read_text())["VCMR"][0]["desc_id"] == 12


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "broken_gt.jsonl", ANNOTATIONS[:2], ('{"vid_name": "vid_c", ',))
    with pytest.raises(ValueError, match=r"broken_gt\.jsonl.*line 3"):
        ground_truth_from_tvr_jsonl(path, VIDEO2IDX)


def test_missing_field_and_unknown_video_name_the_line(tmp_path: Path) -> None:
    no_ts = dict(ANNOTATIONS[1])
    del no_ts["ts"]
    path = _write_jsonl(tmp_path / "a.jsonl", [ANNOTATIONS[0], no_ts])
    with pytest.raises(ValueError, match=r"a\.jsonl.*line 2.*'ts'"):
        ground_truth_from_tvr_jsonl(path, VIDEO2IDX)
    path = _write_jsonl(tmp_path / "b.jsonl", [ANNOTATIONS[0]])
    with pytest.raises(ValueError, match=r"b\.jsonl.*line 1.*vid_a"):
        ground_truth_from_tvr_jsonl(path, {"other": 0})


def test_didemo_style_ts_list_of_windows(tmp_path: Path) -> None:
    rec = {"vid_name": "vid_a", "ts": [[0, 5], [5, 10], [10, 15], [0, 10]], "desc_id": 5}
    gt = ground_truth_from_tvr_jsonl(_write_jsonl(tmp_path / "d.jsonl", [rec]), VIDEO2IDX)
    assert gt[5].windows.shape == (4, 2)
    assert gt[5].query_type is None


@pytest.mark.skipif(
    not (TVR_DIR / "tvr_val_release.jsonl").exists(),
    reason=f"real TVR annotations not found at {TVR_DIR}",
)
def test_perfect_submission_on_real_tvr_val(tmp_path: Path) -> None:
    video2idx = read_video2idx(TVR_DIR / "tvr_video2dur_idx.json", "val")
    assert len(video2idx) == 2179
    val = TVR_DIR / "tvr_val_release.jsonl"
    gt = ground_truth_from_tvr_jsonl(val, video2idx)
    assert len(gt) == 10895
    perfect = {
        d: np.array([[g.video_idx, *g.windows[0], 1.0]], dtype=np.float64) for d, g in gt.items()
    }
    vr = {d: np.array([g.video_idx]) for d, g in gt.items()}
    path = write_submission(
        tmp_path / "perfect.json", video2idx, queries_from_tvr_jsonl(val), perfect, perfect, vr
    )
    res = score_submission(path, val)
    assert res["VCMR"]["R@1 IoU0.7"] == 100.0
    assert res["SVMR"]["R@1 IoU0.7"] == 100.0
    assert res["VR"]["R@1"] == 100.0
    assert {"VCMR_v", "VCMR_t", "VCMR_vt"} <= set(res)
    assert res["VCMR_vt"]["R@1 IoU0.5"] == 100.0
