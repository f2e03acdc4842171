"""Every benchmark runs end to end at toy sizes and prints its JSON report (`pytest -m slow`).

Benchmarks never assert timings; this only checks that they run and report what they claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = {
    "bench_layers.py": "--batch 4 --length 16 --reps 1",
    "bench_bigfile.py": "--videos 8 --frames 16 --dim 32 --max-seconds 2",
    "bench_prvr_train.py": "--videos 16 --batch-videos 8 --steps 1 --frames 32 "
    "--configs base-fp32,full-bf16-ckpt,full-bf16-census --recompute-elementwise",
    "bench_prvr_eval.py": "--scale 0.01 --configs fp32,bf16-fp16index,bf16-fp16index-census",
    "bench_vcmr_inference.py": "--queries 4 --videos 12 --batch 4 --no-cache-queries 2 "
    "--precisions fp32,bf16,bf16-census",
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_reports(script: str) -> None:
    command = [sys.executable, str(BENCHMARKS / script), *CASES[script].split(), "--no-save"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == script.removesuffix(".py")
    assert report["machine"]["cpu"] and "bf16_units" in report["machine"]
    assert report["rows"] and not any("error" in row for row in report["rows"])
    for row in report["rows"]:
        if row.get("config", row.get("mode", "")).endswith("-census"):  # bf16 for host A
            assert 0 < row["projected % of peak @ bf16 415 GFLOP/s"] <= 100
            if script == "bench_vcmr_inference.py":  # TVR val's minutes
                assert row["projected TVR val min @ bf16 415 GFLOP/s"] > 0
                eager = "projected TVR val min, census corrected to eager @ bf16 415 GFLOP/s"
                assert row[eager] > 0 and len(row["census − eager s (fp32)"]) == 2
                assert row["non-matmul s"] > 0 and row["localize_s"] > 0
                continue
            if script == "bench_prvr_eval.py":  # the TVR-scale evaluation's, by stage
                assert row["non-matmul s"] > 0 and row["outside ops s"] > 0
                eager = "projected % of peak, census corrected to eager @ bf16 415 GFLOP/s"
                assert 0 < row[eager] <= 100
                assert set(row["census − eager s (fp32)"]) == {"video", "query", "scoring"}
                assert set(row["stages [wall s, matmul s, non-matmul s, GFLOP]"]) == {
                    *("video", "query", "scoring")
                }
                continue
            assert row["non-matmul s/step"] > 0 and row["slowest non-matmul ops"]
            assert row["peak RSS MiB (census)"] > 0
            eager = "projected % of peak, census corrected to eager @ bf16 415 GFLOP/s"
            assert 0 < row[eager] <= 100 and "census − eager s/step (fp32)" in row


def test_vcmr_benchmark_without_the_no_cache_row() -> None:
    """`--no-cache-queries 0` times the cached rows alone (it once stopped on an empty batch)."""
    script = BENCHMARKS / "bench_vcmr_inference.py"
    args = "--queries 4 --videos 12 --batch 4 --no-cache-queries 0 --precisions fp32 --no-save"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, str(script), *args.split()],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row["mode"] for row in report["rows"]] == ["cached fp32"]
