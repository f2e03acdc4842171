"""PREM stage-wise pipeline in one command (PREM §3.3–§3.5, SPEC §4–§7).

    python -m partial_relevance.prem_pipeline                       # synthetic corpus
    python -m partial_relevance.prem_pipeline --out outputs/prem_pipeline/runs/mine \\
        --common trainer.max_epochs=2 --localizer model.inference.norm=per_video
    python -m partial_relevance.prem_pipeline --ranking-file <retriever run>/rankings.h5

(argparse; every `--common` / `--retriever` / `--localizer` value is a Hydra override of
`conf/train.yaml`, repeatable.) Stages, each writing only into its own run directory under
`--out` (default `outputs/prem_pipeline/runs/<timestamp>`):

1. `retriever/`: `train(cfg)` with `experiment=prem_retriever_synthetic_small` (`--size
   full`: `prem_retriever_synthetic`) (VR metrics, checkpoint); its export step writes the
   ranking file (`model.ranking.file`, by default `retriever/rankings.h5`: top-100 videos
   and scores of every query of every split, SPEC §6.1), whose path `train(cfg)` returns in
   `RunResult.artifacts["ranking_file"]`: every stage output is passed on by value.
2. `localizer/`: `train(cfg)` with `experiment=prem_synthetic_small` (`--size full`:
   `prem_synthetic`) and `data.ranking_file=<that path>`: negatives from the train
   rankings (SPEC §5), the checkpoint with the best `val/VCMR_selection`; its export step
   reruns the VCMR pipeline (SPEC §6) with the best weights and writes `submission_val.json`
   (TVR format) and `vcmr_results_val.json` (the metrics computed in memory) beside
   `metrics.json`, both reported in its `RunResult.artifacts`.
3. The random-localizer baseline: the same pipeline on the same retrieved videos with uniform
   start / end logits (`inference.vcmr.UniformLocalizer`); written to
   `localizer/random_localizer_val.json`.
4. Prints the val VCMR / SVMR tables (R@1/5/10/100 at IoU 0.5 / 0.7, overall and per query
   type) and the VR table, the trained localizer beside the random one, then scores the
   written `submission_val.json` back with `score_submission` and checks that it gives exactly
   the printed numbers (exit status 1 if not).

`first_stage=NAME` (a positional choice, `make train-prem ARGS="first_stage=prvr"`) picks the
stage-1 model from `conf/first_stage/`: `prem` (default, PREM's retriever), `prem_modules`
(with PRVR's ICE/IRM/TCP), `prvr` (the PRVR base model on the corpus's PRVR view), `prvr_full`;
each writes the same `rankings.h5` that stage 2 reads.

`--size small` (default) runs the `*_small` experiment configs: the synthetic corpus shrunk
to 400 / 100 / 100 videos and schedules that learn within ~5 minutes on a 2-core CPU (every
choice and its reason is in those files); `--size full` runs `prem_retriever_synthetic` and
`prem_synthetic` (the full synthetic corpus). `--threads auto` (default) uses the cores the
current load leaves free: oversubscribed OpenMP threads on a busy machine are far slower
than one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from partial_relevance.cli import exits_on_user_error
from partial_relevance.inference.vcmr import (
    UniformLocalizer,
    VcmrInferenceConfig,
    run_vcmr,
    split_ground_truth,
)
from partial_relevance.metrics.retrieval import DEFAULT_KS
from partial_relevance.metrics.submission import score_submission
from partial_relevance.metrics.vcmr import DEFAULT_IOUS, metric_key
from partial_relevance.train import CONFIG_DIR, RunResult, train

__all__ = ["compare_results", "compose_stage", "format_tables", "main", "run_pipeline"]

# Lightning's progress bars stay on: each stage shows its epochs, batches and evaluation.
DEFAULT_COMMON = ("logger=csv",)
# The experiment of each stage per `--size`: `small` (the default of `make train-prem`) fits
# both stages in ~5 minutes on a 2-core CPU (conf/experiment/*_small.yaml say how and why);
# `full` is the full synthetic corpus. The two stages of a size read the same corpus.
EXPERIMENTS = {
    "small": {"retriever": "prem_retriever_synthetic_small", "localizer": "prem_synthetic_small"},
    "full": {"retriever": "prem_retriever_synthetic", "localizer": "prem_synthetic"},
}
RETRIEVER_EXPERIMENT = EXPERIMENTS["small"]["retriever"]
LOCALIZER_EXPERIMENT = EXPERIMENTS["small"]["localizer"]
FIRST_STAGE_DIR = Path(CONFIG_DIR) / "first_stage"


def first_stage_experiment(name: str, size: str) -> str:
    """The stage-1 experiment of the `first_stage` choice `name` (`conf/first_stage/<name>.yaml`:
    prem | prem_modules | prvr | prvr_full) at `size`."""
    path = FIRST_STAGE_DIR / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in FIRST_STAGE_DIR.glob("*.yaml"))
        raise ValueError(f"first_stage={name!r}: no {path}; choices: {choices}")
    experiments = OmegaConf.load(path).get("experiment") or {}
    if size not in experiments:
        raise ValueError(f"{path}: no `experiment.{size}` (sizes there: {sorted(experiments)})")
    return str(experiments[size])


def parse_choices(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` pipeline choices (`make train-prem ARGS="first_stage=prvr"`); only
    `first_stage` is one (per-stage Hydra overrides go through --common/--retriever/...)."""
    choices = {"first_stage": "prem"}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in choices:
            raise SystemExit(
                f"prem_pipeline: unknown argument {item!r}; pipeline choices: "
                f"{sorted(choices)} (Hydra overrides: --common / --retriever / --localizer)"
            )
        choices[key] = value
    return choices


def compose_stage(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """`conf/train.yaml` composed in-process, the run writing into `output_dir`."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def _row(label: str, values: Sequence[float | None], width: int = 10) -> str:
    cells = "".join(f"{v:{width}.2f}" if v is not None else f"{'-':>{width}}" for v in values)
    return f"{label:<18}{cells}"


def format_tables(
    ours: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    split: str = "val",
    ks: Sequence[int] = DEFAULT_KS,
    ious: Sequence[float] = DEFAULT_IOUS,
) -> str:
    """VCMR / SVMR tables (R@k at each IoU, overall then per query type) and the VR table,
    each row of ours followed by the random localizer's (`baseline`)."""
    lines: list[str] = []
    groups = [g for g in ours if "_" in g]
    types = sorted(
        {g.split("_", 1)[1] for g in groups},
        key=lambda t: ("v", "t", "vt").index(t) if t in ("v", "t", "vt") else 9,
    )
    for task in ("VCMR", "SVMR"):
        if task not in ours:
            continue
        header = "".join(f"{f'R@{k}/{iou:g}':>10}" for iou in ious for k in ks)
        lines += ["", f"{task} ({split}), R@k / IoU", f"{'':<18}{header}"]
        for suffix in ("", *types):
            group = task + (f"_{suffix}" if suffix else "")
            if group not in ours:
                continue
            name = suffix or "all"
            keys = [metric_key(k, iou) for iou in ious for k in ks]
            lines.append(_row(f"{name} ours", [ours[group].get(key) for key in keys]))
            if baseline is not None and group in baseline:
                lines.append(_row(f"{name} random", [baseline[group].get(key) for key in keys]))
    if "VR" in ours:
        lines += ["", f"VR ({split}; the retriever's list, the same for both localizers)"]
        lines.append(f"{'':<18}" + "".join(f"{f'R@{k}':>10}" for k in ks))
        for suffix in ("", *types):
            group = "VR" + (f"_{suffix}" if suffix else "")
            if group in ours:
                lines.append(_row(suffix or "all", [ours[group].get(f"R@{k}") for k in ks]))
    return "\n".join(lines)


def compare_results(
    a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]], tol: float = 1e-9
) -> list[str]:
    """Every (group, metric) where the two nested results differ (or one lacks it)."""
    problems = []
    for group in sorted(set(a) | set(b)):
        for key in sorted(set(a.get(group, {})) | set(b.get(group, {}))):
            x, y = a.get(group, {}).get(key), b.get(group, {}).get(key)
            same = (
                x is not None
                and y is not None
                and ((math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol)
            )
            if not same:
                problems.append(f"{group}/{key}: {x} != {y}")
    return problems


def _threads(value: str) -> int:
    if value != "auto":
        return max(1, int(value))
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, int(cores - round(load))))


def _artifact(result: RunResult, name: str, stage: str) -> Path:
    """A file a stage wrote, as its `train(cfg)` reports it (never a guessed file name)."""
    path = result.artifacts.get(name)
    if path is None or not Path(path).exists():
        raise FileNotFoundError(
            f"{stage} run {result.output_dir} reported no {name!r} file "
            f"(artifacts: {sorted(result.artifacts)}); see its metrics.json"
        )
    return Path(path)


def run_pipeline(
    out: Path,
    common: Sequence[str] = DEFAULT_COMMON,
    retriever: Sequence[str] = (),
    localizer: Sequence[str] = (),
    ranking_file: str | None = None,
    split: str = "val",
    size: str = "small",
    first_stage: str = "prem",
) -> dict[str, Any]:
    """Run the stages (see the module docstring) with the experiments of `size`, stage 1 the
    `first_stage` choice's; return paths, results and wall times."""
    experiments = {**EXPERIMENTS[size], "retriever": first_stage_experiment(first_stage, size)}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if ranking_file is None:
        print(f"[1/4] retriever -> {out / 'retriever'}", flush=True)
        cfg = compose_stage(
            [f"experiment={experiments['retriever']}", *common, *retriever], out / "retriever"
        )
        ranking_file = str(_artifact(train(cfg), "ranking_file", "the retriever"))
        timings["retriever_s"] = time.perf_counter() - start
    else:
        print(f"[1/4] retriever skipped: rankings from {ranking_file}", flush=True)

    print(f"[2/4] localizer -> {out / 'localizer'}", flush=True)
    t = time.perf_counter()
    loc_dir = out / "localizer"
    cfg = compose_stage(
        [
            f"experiment={experiments['localizer']}",
            f"data.ranking_file={Path(ranking_file).resolve()}",
            *common,
            *localizer,
        ],
        loc_dir,
    )
    located = train(cfg)
    submission = _artifact(located, f"{split}/submission", "the localizer")
    results_path = _artifact(located, f"{split}/vcmr_results", "the localizer")
    timings["localizer_s"] = time.perf_counter() - t

    print("[3/4] random-localizer baseline on the same retrieved videos", flush=True)
    t = time.perf_counter()
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("validate")
    inference = VcmrInferenceConfig.from_mapping(dict(cfg.model.inference))
    baseline = run_vcmr(UniformLocalizer(), datamodule, split, inference).evaluate()
    (loc_dir / f"random_localizer_{split}.json").write_text(json.dumps(baseline, indent=2))
    timings["baseline_s"] = time.perf_counter() - t

    ours = json.loads(results_path.read_text())
    print(format_tables(ours, baseline, split))

    print(f"\n[4/4] scoring {submission} back", flush=True)
    split_data = datamodule.all_splits()[split]
    scored = score_submission(submission, split_ground_truth(split_data))
    problems = compare_results(ours, scored)
    n_values = sum(len(v) for v in ours.values())
    if problems:
        print(f"submission round-trip: MISMATCH in {len(problems)} values:")
        print("\n".join(problems[:20]))
    else:
        print(f"submission round-trip: OK ({n_values} metric values identical)")
    timings["total_s"] = time.perf_counter() - start
    print("wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return {
        "out": str(out),
        "ranking_file": ranking_file,
        "ours": ours,
        "random": baseline,
        "round_trip_ok": not problems,
        "timings": timings,
    }


@exits_on_user_error  # DataError, refused run, bad config value: one line, exit 1
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m partial_relevance.prem_pipeline",
        description="PREM stage-wise pipeline: retriever -> rankings -> localizer -> VCMR.",
    )
    parser.add_argument("--out", type=Path, default=None, help="pipeline directory")
    parser.add_argument(
        "--common", action="append", default=None, help="override for both stages (repeatable)"
    )
    parser.add_argument("--retriever", action="append", default=[], help="retriever override")
    parser.add_argument("--localizer", action="append", default=[], help="localizer override")
    parser.add_argument("--ranking-file", default=None, help="skip stage 1, use these rankings")
    parser.add_argument("--split", default="val", help="split for the tables / submission check")
    parser.add_argument("--threads", default="auto", help="torch threads (int or auto)")
    parser.add_argument(
        "--size",
        choices=tuple(EXPERIMENTS),
        default="small",
        help="small: the *_small experiments (400/100/100 videos, ~5 min on 2 cores); "
        "full: prem_retriever_synthetic + prem_synthetic (the full synthetic corpus)",
    )
    parser.add_argument(
        "choices",
        nargs="*",
        metavar="first_stage=NAME",
        help="the first stage: prem (default) | prem_modules | prvr | prvr_full "
        "(conf/first_stage/)",
    )
    args = parser.parse_args(argv)
    first_stage = parse_choices(args.choices)["first_stage"]
    # Not a Hydra app: show each stage's own report (train()'s results table, where the run
    # wrote) on the console; other libraries keep to warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("partial_relevance").setLevel(logging.INFO)
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(_threads(args.threads))
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out = args.out or Path("outputs") / "prem_pipeline" / "runs" / stamp
    common = DEFAULT_COMMON if args.common is None else tuple(args.common)
    retriever, localizer = tuple(args.retriever), tuple(args.localizer)
    print(f"PREM pipeline in {out} (torch threads: {torch.get_num_threads()})", flush=True)
    experiments = {**EXPERIMENTS[args.size]}
    experiments["retriever"] = first_stage_experiment(first_stage, args.size)
    print(f"experiments ({args.size}, first_stage={first_stage}): {experiments}", flush=True)
    print(
        f"overrides: both {list(common)}; retriever {list(retriever)}; localizer {list(localizer)}",
        flush=True,
    )
    result = run_pipeline(
        out, common, retriever, localizer, args.ranking_file, args.split, args.size, first_stage
    )
    return 0 if result["round_trip_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
