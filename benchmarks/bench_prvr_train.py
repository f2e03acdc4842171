"""PRVR training throughput: queries/s, step time, FLOPs and peak RSS (base vs full model).

Four configurations, each in its own child process (so each peak RSS is its own): the base
model and the full model (ICE + IRM + TCP enabled), each in fp32 and under
`torch.autocast("cpu", dtype=torch.bfloat16)`. Data loading is included: batches come from the
real `PrvrDataModule` train loader reading a Charades-like MS-SL collection written to a temp
dir (or any MS-SL directory given with --root/--collection/--feature). The loop is manual:
`PrvrLitModule.training_losses` forward, backward, `BertAdamW` step (the default optimiser).
Model FLOPs per step come from `torch.utils.flop_counter.FlopCounterMode` on one batch.

    .venv/bin/python benchmarks/bench_prvr_train.py                  # small defaults
    .venv/bin/python benchmarks/bench_prvr_train.py --videos 500 --batch-videos 128 --steps 20
    .venv/bin/python benchmarks/bench_prvr_train.py --root R --collection C --feature F
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import (
    add_peer_ratio,
    load_average,
    machine_facts,
    model_sections,
    peak_rss_mb,
    record_result,
    run_config_process,
)
from msl_layout import LayoutSpec, write_layout
from torch.utils.flop_counter import FlopCounterMode

from partial_relevance.data.prvr import PrvrDataModule
from partial_relevance.lit.optim import BertAdamW, parameter_groups
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.prvr import PrvrBaseModel

CONFIGS = ("base-fp32", "base-bf16", "full-fp32", "full-bf16")
# Also accepted: a "-ckpt" suffix (activation checkpointing), e.g. full-fp32-ckpt.
EXTRA_CONFIGS = tuple(f"{c}-ckpt" for c in CONFIGS)


def build(
    args: argparse.Namespace, model: str, dm: PrvrDataModule, checkpointing: bool = False
) -> PrvrLitModule:
    """The PRVR LightningModule with the paper's defaults; `full` enables ICE, IRM and TCP;
    `checkpointing` recomputes Transformer activations in backward."""
    assert dm.corpus is not None
    net = PrvrBaseModel(
        dm.corpus.video_dim, dm.corpus.query_dim, hidden_dim=args.hidden, num_layers=args.layers
    )
    full = str(model == "full").lower()
    modules = [f"model.{m}.enabled={full}" for m in ("ice", "irm", "tcp")]
    sections = model_sections("prvr", [*modules, f"model.activation_checkpointing={checkpointing}"])
    return PrvrLitModule(net, functools.partial(BertAdamW, lr=2.5e-4), **sections)


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(loader):
    """Cycle through the loader forever (a new epoch, and a new shuffle, at each end)."""
    while True:
        yield from loader


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Time one configuration; returns its row."""
    model, precision, *extra = args.config.split("-")
    torch.manual_seed(args.seed)
    dm = PrvrDataModule(
        root=str(args.root),
        collection=args.collection,
        feature=args.feature,
        batch_size=args.batch_videos,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    dm.setup("fit")
    lit = build(args, model, dm, checkpointing="ckpt" in extra)
    lit.train()
    optimizer = BertAdamW(parameter_groups(lit, 0.01), lr=2.5e-4)
    stream = batches(dm.train_dataloader())

    def step(batch: dict[str, torch.Tensor], update: bool = True) -> dict[str, torch.Tensor]:
        with autocast(precision):
            terms = lit.training_losses(batch)
        terms["loss"].backward()
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return terms

    for _ in range(args.warmup):
        step(next(stream))

    queries = data_seconds = 0.0
    step_seconds: list[float] = []
    n_c: list[float] = []
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = next(stream)
        t1 = time.perf_counter()
        terms = step(batch)
        step_seconds.append(time.perf_counter() - t1)
        data_seconds += t1 - t0
        queries += len(batch["query_video"])
        if "n_c" in terms:
            n_c.append(float(terms["n_c"]))
    total = time.perf_counter() - start
    compute = sum(step_seconds)
    peak_rss = peak_rss_mb()  # of training itself: the FLOP-counting step below holds more
    batch = next(stream)
    with FlopCounterMode(display=False) as counter:
        step(batch, update=False)
    flops_per_step = counter.get_total_flops()
    flop_queries = len(batch["query_video"])
    flops_per_query = flops_per_step / flop_queries
    achieved = flops_per_query * queries / compute  # FLOP/s of the compute part
    row = {
        "config": args.config,
        "queries/s": round(queries / total, 1),
        "step s (compute)": round(compute / args.steps, 3),
        "step s (min)": round(min(step_seconds), 3),
        "data s/step": round(data_seconds / args.steps, 3),
        "data %": round(100 * data_seconds / total, 1),
        "GFLOP/step": round(flops_per_step / 1e9, 1),
        "achieved GFLOP/s": round(achieved / 1e9, 1),
        "params (M)": round(sum(p.numel() for p in lit.parameters()) / 1e6, 3),
        "peak RSS MiB": peak_rss,
        "queries/step": round(queries / args.steps, 1),
        "load avg": load_average()[:1],
    }
    if n_c:
        row["ICE n_c/step"] = round(sum(n_c) / len(n_c), 1)
    return row


def child_command(args: argparse.Namespace, root: Path, config: str) -> list[str]:
    """Re-invoke this script for one configuration."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--config", config]
    command += ["--root", str(root), "--collection", args.collection, "--feature", args.feature]
    names = ("batch_videos", "steps", "warmup", "num_workers", "hidden", "layers", "seed")
    for name in (*names, "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="MS-SL dataset root (default: generate one)")
    parser.add_argument("--collection", default="charades", help="collection under --root")
    parser.add_argument("--feature", default="i3d_rgb_lgi", help="FeatureData/<feature> name")
    parser.add_argument("--videos", type=int, default=128, help="generated train videos")
    parser.add_argument("--frames", type=int, default=128, help="generated frames per video")
    parser.add_argument("--video-dim", type=int, default=1024, help="generated video feature dim")
    parser.add_argument("--queries-per-video", type=int, default=5, help="generated queries")
    parser.add_argument("--min-tokens", type=int, default=10, help="generated tokens, min")
    parser.add_argument("--max-tokens", type=int, default=20, help="generated tokens, max")
    parser.add_argument("--query-dim", type=int, default=1024, help="generated token dim")
    parser.add_argument("--batch-videos", type=int, default=32, help="videos per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps before the FLOP-counting step"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--hidden", type=int, default=384, help="hidden size D (PRVR: 384)")
    parser.add_argument("--layers", type=int, default=1, help="Transformer layers per encoder")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-save", action="store_true", help="do not append to results.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        row = run_child(args)
        print(json.dumps(row))
        return

    machine = machine_facts()
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS) - set(EXTRA_CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {CONFIGS + EXTRA_CONFIGS}")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_prvr_train_") as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            spec = LayoutSpec(
                collection=args.collection,
                feature=args.feature,
                splits={"train": args.videos, "val": 0},
                video_dim=args.video_dim,
                query_dim=args.query_dim,
                min_frames=args.frames,
                max_frames=args.frames,
                queries_per_video=args.queries_per_video,
                min_tokens=args.min_tokens,
                max_tokens=args.max_tokens,
                seed=args.seed,
                copy_of={"val": "train"},
            )
            start = time.perf_counter()
            counts = write_layout(root, spec)
            notes.append(
                f"generated Charades-like MS-SL collection: {counts} in "
                f"{time.perf_counter() - start:.1f} s (random features)"
            )
        else:
            notes.append(f"dataset: {root / args.collection} feature {args.feature}")
        rows = []
        for config in configs:
            row = run_config_process(child_command(args, root, config), config)
            rows.append(row)
    fp32 = machine["matmul_gflops"]["fp32"]
    bf16 = machine["matmul_gflops"]["bf16"]
    timed = [row for row in rows if "achieved GFLOP/s" in row]
    for row in timed:
        peak = bf16 if "bf16" in row["config"] else fp32
        row["% of matmul"] = round(100 * row["achieved GFLOP/s"] / peak, 1)
    # The faster peer on the EPYC host A: MS-SL up to 64 q/s (GMMFormer up to 59).
    notes.append(
        add_peer_ratio(
            timed,
            measured="queries/s",
            column="x faster peer (projected)",
            peer="MS-SL, the faster peer on host A",
            value=64.0,
            unit="q/s",
            host="A",
            machine=machine,
            kind="rate",
        )
    )
    notes += [
        "queries/s counts the whole loop (data loading + forward + backward + optimiser step); "
        "achieved GFLOP/s = counted model FLOPs / compute time (data excluded); % of matmul "
        "compares it with the 1024² matmul rate of the same precision",
        "FLOPs counted by FlopCounterMode on one untimed batch (forward + backward) after the "
        "timed steps, scaled per query; peak RSS is read before it",
        "each configuration runs in its own process: peak RSS is that process's ru_maxrss",
        "peers (their hosts, not this one): MS-SL 74–94 q/s (AMX Xeon host B), 22–64 (EPYC "
        "host A); GMMFormer 63–93 (51–59); peak RSS MS-SL 3.5–3.7 GB, GMMFormer 6.0 GB",
    ]
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params.pop("child")
    params.pop("config")
    record_result("bench_prvr_train", rows, machine, params, notes, save=not args.no_save)


if __name__ == "__main__":
    main()
