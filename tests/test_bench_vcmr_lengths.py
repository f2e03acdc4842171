"""`benchmarks/bench_vcmr_inference.py`'s video lengths: the embedded TVR val clip-count
histogram equals the one computed from the real annotation file, and the quantile sample keeps
its mix of lengths."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_vcmr_inference as bench

TVR_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvr" / "tvr_val_release.jsonl"


@pytest.mark.skipif(not TVR_VAL.is_file(), reason="the TVR val annotations are not here")
def test_embedded_histogram_is_tvr_vals() -> None:
    histogram = bench.tvr_val_clip_histogram(TVR_VAL)
    assert histogram == bench.TVR_VAL_CLIP_HISTOGRAM
    assert sum(histogram.values()) == bench.TVR_VAL_VIDEOS


def test_histogram_rule_on_a_hand_made_file(tmp_path: Path) -> None:
    videos = [
        ("a", 61.2),  # 40.8 -> 41 clips
        ("a", 61.2),  # same video, counted once
        ("b", 1.5),  # exactly one clip
        ("c", 0.2),  # under one clip -> 1
        ("d", 400.0),  # 267 -> capped at 100
        ("e", 90.0),  # 60 clips
    ]
    rows = [
        {"desc": "q", "desc_id": i, "vid_name": v, "duration": d, "ts": [0.0, 0.1], "type": "v"}
        for i, (v, d) in enumerate(videos)
    ]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.tvr_val_clip_histogram(path) == {1: 2, 41: 1, 60: 1, 100: 1}


def test_quantile_sample_keeps_tvr_vals_mix() -> None:
    every = [c for c, n in bench.TVR_VAL_CLIP_HISTOGRAM.items() for _ in range(n)]
    assert statistics.mean(every) == pytest.approx(50.983, abs=1e-3)
    sample = bench.clip_counts(50, "tvr-val", torch.Generator().manual_seed(0))
    assert len(sample) == 50
    assert set(sample) <= set(bench.TVR_VAL_CLIP_HISTOGRAM)
    assert abs(statistics.mean(sample) - statistics.mean(every)) < 1.0
    # The full sample is the distribution itself, in some order.
    full = bench.clip_counts(len(every), "tvr-val", torch.Generator().manual_seed(1))
    assert sorted(full) == sorted(every)


def test_uniform_lengths_and_a_bad_name() -> None:
    sample = bench.clip_counts(200, "uniform", torch.Generator().manual_seed(0))
    assert min(sample) >= 40 and max(sample) <= 100
    with pytest.raises(ValueError, match="--lengths"):
        bench.clip_counts(3, "tvr-train", torch.Generator())
