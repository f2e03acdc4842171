"""`benchmarks/run_all.py`'s verdicts: each target read from its benchmark row, bf16 targets
reported as not measurable where bf16 is emulated (no bf16 units), never as missed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run_all


def train_result(batch: int) -> dict:
    rows = [
        {"config": "base-fp32", "% of peak": 72.0, "peak RSS MiB": 2600.0},
        {"config": "full-fp32", "% of peak": 60.0, "peak RSS MiB": 3000.0},
    ]
    return {"params": {"batch_videos": batch}, "rows": rows, "machine": {"load_avg": [0.1]}}


def test_bf16_is_usable_only_near_the_fp32_rate():
    assert not run_all.bf16_usable({"fp32": 138.2, "bf16": 1.0})  # AVX2 EPYC: emulated
    assert run_all.bf16_usable({"fp32": 180.0, "bf16": 415.0})  # avx512_bf16
    assert run_all.bf16_usable({"fp32": 110.0, "bf16": 1230.0})  # AMX


def test_verdicts_read_each_row_and_skip_emulated_bf16():
    rows = {r["target"]: r for r in run_all.verdicts({"bench_prvr_train": train_result(128)})}
    assert rows["base model, fp32: ≥ 70 % of fp32 peak"]["verdict"] == "met"
    assert rows["full model, fp32: ≥ 65 % of fp32 peak"]["verdict"] == "missed"
    assert rows["full model, fp32: peak RSS < MS-SL's 3.48 GB"]["verdict"] == "met"
    assert rows["full model, bf16: ≥ 55 % of bf16 peak"]["verdict"] == "not run"
    assert rows["VCMR over TVR val, fp32: ≤ 10 min"]["verdict"] == "not run"
    skipped = run_all.verdicts({"bench_prvr_train": train_result(32)}, "bf16 emulated")
    by_target = {r["target"]: r for r in skipped}
    bf16 = [r for r in skipped if "bf16" in r["row"]]
    assert bf16 and all(r["verdict"] == "not measurable here (bf16 emulated)" for r in bf16)
    memory = by_target["full model, fp32: peak RSS < MS-SL's 3.48 GB"]
    assert memory["verdict"] == "not measured (batch 32)"


def vcmr_result(minutes: float, at_peak: float) -> dict:
    row = {"mode": "cached fp32", "tvr_val_extrapolated_min": minutes}
    row |= {"tvr_val_at_peak_min": at_peak, "% of peak": 80.0}
    return {"params": {}, "rows": [row], "machine": {"load_avg": [0.1]}}


def test_a_time_target_beyond_the_peak_bound_says_out_of_reach():
    target = "VCMR over TVR val, fp32: ≤ 10 min"
    rows = {
        r["target"]: r for r in run_all.verdicts({"bench_vcmr_inference": vcmr_result(12.7, 10.1)})
    }
    assert rows[target]["verdict"] == "missed (out of reach here: 10.1 at 100 % of peak)"
    assert rows[target]["tvr_val_at_peak_min"] == 10.1
    rows = {
        r["target"]: r for r in run_all.verdicts({"bench_vcmr_inference": vcmr_result(12.7, 8.0)})
    }
    assert rows[target]["verdict"] == "missed"
    rows = {
        r["target"]: r for r in run_all.verdicts({"bench_vcmr_inference": vcmr_result(9.5, 8.0)})
    }
    assert rows[target]["verdict"] == "met"


def test_emulated_bf16_shows_the_census_projection_beside_not_measurable():
    """Where bf16 is emulated the `-census` rows give the bf16 share projected for host A: shown
    beside the target, whose verdict stays "not measurable" (an estimate is no measurement),
    and the peak RSS with the proxies (an upper bound) beside the memory target; targets
    without a census row get none."""
    result = train_result(128)
    census = {"non-matmul s/step": 1.4, run_all.PROJECTED_SHARE: 47.5}
    census["peak RSS MiB (census)"] = 2300.0
    result["rows"].append({"config": "full-bf16-census", **census})
    rows = {r["target"]: r for r in run_all.verdicts({"bench_prvr_train": result}, "emulated")}
    full = rows["full model, bf16: ≥ 55 % of bf16 peak"]
    assert full["verdict"] == "not measurable here (emulated)" and full["measured"] is None
    estimate = run_all.CENSUS_COLUMN
    assert full[estimate] == "projected % of peak @ bf16 415 GFLOP/s: 47.5"
    memory = rows["full model, bf16: peak RSS ≤ 2.5 GB"]
    assert memory["verdict"].startswith("not measurable")
    assert memory[estimate] == "peak RSS MiB (census): 2300.0"
    assert estimate not in rows["base model, bf16: ≥ 55 % of bf16 peak"]  # no base census row
    assert estimate not in rows["TVR-scale eval, bf16: ≥ 50 % of bf16 peak"]
    assert run_all.PROJECTED_SHARE == "projected % of peak @ bf16 415 GFLOP/s"
    # The evaluation's census row (bench_prvr_eval, projected at TVR scale) likewise.
    evaluation = {"config": "bf16-fp16index-census", run_all.PROJECTED_SHARE: 46.4}
    eval_result = {"rows": [evaluation]}
    rows = {r["target"]: r for r in run_all.verdicts({"bench_prvr_eval": eval_result}, "emulated")}
    tvr = rows["TVR-scale eval, bf16: ≥ 50 % of bf16 peak"]
    assert tvr["verdict"].startswith("not measurable") and tvr["measured"] is None
    assert tvr[estimate] == "projected % of peak @ bf16 415 GFLOP/s: 46.4"
    assert estimate not in rows["VCMR over TVR val, bf16: ≤ 5 min"]
    # VCMR's census row (bench_vcmr_inference, `cached bf16-census`): TVR val's minutes.
    minutes = "projected TVR val min @ bf16 415 GFLOP/s"
    vcmr = {"rows": [{"mode": "cached bf16-census", minutes: 5.19}]}
    rows = {r["target"]: r for r in run_all.verdicts({"bench_vcmr_inference": vcmr}, "emulated")}
    tvr_val = rows["VCMR over TVR val, bf16: ≤ 5 min"]
    assert tvr_val["verdict"].startswith("not measurable") and tvr_val["measured"] is None
    assert tvr_val[estimate] == f"{minutes}: 5.19"


def test_vcmr_census_estimate_shows_both_projections():
    """VCMR's census row gives TVR val's minutes as projected and corrected to an eager run;
    the verdict row shows both, in that order, and stays "not measurable"."""
    minutes = "projected TVR val min @ bf16 415 GFLOP/s"
    lean = "projected TVR val min, census corrected to eager @ bf16 415 GFLOP/s"
    vcmr = {"rows": [{"mode": "cached bf16-census", minutes: 5.28, lean: 5.02}]}
    rows = {r["target"]: r for r in run_all.verdicts({"bench_vcmr_inference": vcmr}, "emulated")}
    tvr_val = rows["VCMR over TVR val, bf16: ≤ 5 min"]
    assert tvr_val["verdict"].startswith("not measurable") and tvr_val["measured"] is None
    assert tvr_val[run_all.CENSUS_COLUMN] == f"{minutes}: 5.28; {lean}: 5.02"


def test_eval_census_estimate_shows_both_projections():
    """The evaluation's census row likewise (and the training step's): its share as projected
    and corrected to an eager run, both beside "not measurable"."""
    share = "projected % of peak @ bf16 415 GFLOP/s"
    lean = "projected % of peak, census corrected to eager @ bf16 415 GFLOP/s"
    census = {"config": "bf16-fp16index-census", share: 51.4, lean: 56.0}
    rows = {
        r["target"]: r
        for r in run_all.verdicts({"bench_prvr_eval": {"rows": [census]}}, "emulated")
    }
    tvr = rows["TVR-scale eval, bf16: ≥ 50 % of bf16 peak"]
    assert tvr["verdict"].startswith("not measurable") and tvr["measured"] is None
    assert tvr[run_all.CENSUS_COLUMN] == f"{share}: 51.4; {lean}: 56.0"
