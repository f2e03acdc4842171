"""PRVR training throughput: queries/s, step time, FLOPs, % of the matmul peak, peak RSS and
what the saved activations are (base vs full model).

Configurations `<model>-<precision>[-<option>...]`, each in its own child process (so each peak
RSS is its own): model `base` or `full` (ICE + IRM + TCP enabled), precision `fp32` or `bf16`
(`torch.autocast("cpu", dtype=torch.bfloat16)`, what `precision=bf16` / Lightning
`bf16-mixed` runs), options `ckpt` (activation checkpointing) and `compile` (what
`model.compile=true` compiles: `models.compile.compile_net`, Inductor; compile time reported
apart) and `census` (every step under `common.OpCensus`: seconds per aten op, the matmul family
apart; in bf16 on a host without bf16 units the products run in fp32 so that the rest of the
step is measured, and the step's share of a reference bf16 rate is projected from it: not a
timing of the step itself). Data loading is
included: batches come from the real `PrvrDataModule` train loader reading a Charades-like
MS-SL collection written to a temp dir (or any MS-SL directory given with
--root/--collection/--feature). The loop is manual: `PrvrLitModule.training_losses` forward,
backward, `BertAdamW` step (the default optimiser). Model FLOPs per step come from
`common.count_flops` (torch's FlopCounterMode plus the CPU attention kernels it misses) on one
batch; each child measures the matmul rate of its precision right after its timed steps
(sustained over 2 s: the same host load), the yardstick of its `% of peak`.

    .venv/bin/python benchmarks/bench_prvr_train.py                  # small defaults
    .venv/bin/python benchmarks/bench_prvr_train.py --videos 500 --batch-videos 128 --steps 8
    .venv/bin/python benchmarks/bench_prvr_train.py --root R --collection C --feature F
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as bench
import torch
from msl_layout import LayoutSpec, add_layout_arguments, layout_from_args

from partial_relevance.data.prvr import PrvrDataModule
from partial_relevance.lit.optim import parameter_groups
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.compile import compile_net
from partial_relevance.models.prvr import PrvrBaseModel

CONFIGS = ("base-fp32", "base-bf16", "full-fp32", "full-bf16")
OPTIONS = ("ckpt", "compile", "census")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def known_config(config: str) -> bool:
    """`<base|full>-<fp32|bf16>` followed by any of the OPTIONS."""
    parts = config.split("-")
    return (
        len(parts) >= 2
        and parts[0] in ("base", "full")
        and parts[1] in PRECISIONS
        and set(parts[2:]) <= set(OPTIONS)
    )


def build(
    args: argparse.Namespace, model: str, dm: PrvrDataModule, checkpointing: bool = False
) -> PrvrLitModule:
    """The PRVR LightningModule with the paper's defaults; `full` enables ICE, IRM and TCP;
    `checkpointing` recomputes Transformer activations in backward."""
    assert dm.corpus is not None
    sizes = {"video_dim": dm.corpus.video_dim, "query_dim": dm.corpus.query_dim}
    sizes |= {"hidden_dim": args.hidden, "num_layers": args.layers, "dropout": args.dropout}
    net = PrvrBaseModel(**{**bench.net_arguments("prvr"), **sizes})  # the rest: model=prvr
    full = str(model == "full").lower()
    overrides = [f"model.{m}.enabled={full}" for m in ("ice", "irm", "tcp")]
    overrides += [
        f"model.activation_checkpointing={checkpointing}",
        f"model.recompute_elementwise={args.recompute_elementwise}",  # the LightningModule sets it
    ]
    sections = bench.model_sections("prvr", overrides)
    return PrvrLitModule(net, bench.optimizer_factory("prvr"), **sections)


def batches(loader):
    """Cycle through the loader forever (a new epoch, and a new shuffle, at each end)."""
    while True:
        yield from loader


def training_step(
    lit: PrvrLitModule, optimizer: Any, batch: dict[str, torch.Tensor], precision: str, update: bool
) -> dict[str, torch.Tensor]:
    """Forward under `precision`'s autocast, backward and (with `update`) the optimiser step;
    a non-finite loss is an error (a step that computes garbage times nothing worth reporting)."""
    with bench.autocast(precision):
        terms = lit.training_losses(batch)
    loss = float(terms["loss"].detach())
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite training loss {loss} ({precision})")
    terms["loss"].backward()
    if update:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return terms


def step_census_minus_eager(lit: PrvrLitModule, optimizer: Any, stream: Any) -> float:
    """A step's census seconds less its eager wall, fp32 steps of the same model (one to warm
    up first; `common.census_minus_eager`). The census's seconds are its ops' (products and
    the rest), so the difference nets what timing every op alone adds against the Python
    between ops that an eager step spends and the census does not count: negative, the
    op-timed estimate has left time out."""

    def step() -> None:
        training_step(lit, optimizer, next(stream), "fp32", update=True)

    def eager() -> dict[str, float]:
        start = time.perf_counter()
        step()
        return {"step": time.perf_counter() - start}

    def census() -> dict[str, float]:
        with bench.OpCensus() as counted:
            step()
        matmul_s, other_s, _ = counted.totals()
        return {"step": matmul_s + other_s}

    step()
    return bench.census_minus_eager(eager, census)["step"]


def census_row(
    args: argparse.Namespace, lit: PrvrLitModule, optimizer: Any, stream: Any, precision: str
) -> dict[str, Any]:
    """A `-census` configuration: --warmup (twice where proxied) then --steps training steps,
    each under `common.OpCensus` (bf16 products proxied in fp32 where this CPU has no bf16
    units), and one more counting FLOPs -> the matmul / non-matmul seconds a step, the slowest
    non-matmul ops, for bf16 the step's share of `--reference-bf16-gflops` projected from them,
    the peak RSS after the first warm-up steps (proxied blockwise there: a bf16 step's to
    within a few fp32 blocks) and, with --memory, the saved activations of one more step (what
    a bf16 step saves: a proxy returns bf16)."""
    proxy = bench.census_proxies(precision)  # emulated, a bf16 step at batch 128 takes ~10 min
    # First --warmup steps (at least one) proxied blockwise (`lean`): the peak RSS read after
    # them exceeds a bf16 step's by at most a few fp32 blocks (`common.LEAN_BLOCK_BYTES`), not
    # by whole products' fp32 copies as the timed steps' proxies hold. Then --warmup steps as
    # timed, so that the heap has grown to the timed steps' working size before they start.
    for _ in range(max(1, args.warmup)):
        with bench.OpCensus(proxy, lean=True):
            training_step(lit, optimizer, next(stream), precision, update=True)
    peak_rss = bench.peak_rss_mb()
    for _ in range(args.warmup if proxy else 0):
        with bench.OpCensus(proxy):
            training_step(lit, optimizer, next(stream), precision, update=True)
    census = bench.OpCensus(proxy)
    for _ in range(args.steps):
        with census:
            training_step(lit, optimizer, next(stream), precision, update=True)
    matmul_s, other_s, ops = (value / args.steps for value in census.totals())
    ran_as, ran_label = bench.census_products(precision, proxy)
    ran_gflops = bench.sustained_matmul_flops(ran_as) / 1e9
    with bench.count_flops() as counter, bench.OpCensus(proxy):
        training_step(lit, optimizer, next(stream), precision, update=False)
    flops = counter.get_total_flops()
    row: dict[str, Any] = {
        "config": args.config,
        "census steps": args.steps,
        "products ran as": ran_label,
        **bench.census_stand_ins([census], args.steps),
        "matmul s/step": round(matmul_s, 3),
        "non-matmul s/step": round(other_s, 3),
        "ops/step": round(ops),
        "GFLOP/step": round(flops / 1e9, 1),
        "matmul GFLOP/s": round(ran_gflops, 1),
        "peak RSS MiB (census)": peak_rss,
    }
    if not proxy:  # the census's own step: an upper bound of the eager step (see OpCensus)
        achieved = flops / 1e9 / (matmul_s + other_s)
        row["% of peak (census step)"] = bench.percent_of_peak(achieved, ran_gflops)
    if precision == "bf16":
        reference = args.reference_bf16_gflops
        projected = bench.projected_share_of_peak(flops, matmul_s, other_s, ran_gflops, reference)
        row |= {bench.projection_column(key, reference): value for key, value in projected.items()}
    row["slowest non-matmul ops"] = census.top(10, args.steps)
    row["load avg"] = bench.load_average()[:1]
    if precision == "bf16" and args.census_eager:  # after the row's own numbers
        excess = step_census_minus_eager(lit, optimizer, stream)
        eager = bench.projected_share_of_peak(
            flops, matmul_s, max(0.0, other_s - excess), ran_gflops, reference
        )
        row["census − eager s/step (fp32)"] = round(excess, 3)
        row[bench.projection_column(bench.EAGER_SHARE, reference)] = eager["projected % of peak"]
    if args.memory and not args.recompute_elementwise:  # as in timed rows: exact under a proxy
        with bench.SavedActivations(lit) as saved, bench.OpCensus(proxy):
            training_step(lit, optimizer, next(stream), precision, update=False)
        row.update(saved.summary())
    return row


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Time one configuration; returns its row."""
    model, precision, *options = args.config.split("-")
    torch.manual_seed(args.seed)
    dm = bench.msl_datamodule(args, "fit", batch_size=args.batch_videos, seed=args.seed)
    lit = build(args, model, dm, checkpointing="ckpt" in options)
    lit.train()
    if "compile" in options:
        compile_net(lit.net)  # what `model.compile=true` compiles (models.compile)
    optimizer = bench.optimizer_factory("prvr")(parameter_groups(lit, 0.01))
    stream = batches(dm.train_dataloader())
    if "census" in options:
        return census_row(args, lit, optimizer, stream, precision)

    def step(batch: dict[str, torch.Tensor], update: bool = True) -> dict[str, torch.Tensor]:
        return training_step(lit, optimizer, batch, precision, update)

    start = time.perf_counter()
    for _ in range(args.warmup):
        step(next(stream))
    warmup_s = time.perf_counter() - start

    queries = data_seconds = 0.0
    step_seconds: list[float] = []
    n_c: list[float] = []
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    compute = sum(step_seconds)
    peak_rss = bench.peak_rss_mb()  # of training itself: the untimed steps below hold more
    peak = bench.sustained_matmul_flops(PRECISIONS[precision]) / 1e9  # same load as the timed steps
    batch = next(stream)
    with bench.count_flops() as counter:
        step(batch, update=False)
    flops_per_step = counter.get_total_flops()
    flops_per_query = flops_per_step / len(batch["query_video"])
    achieved = flops_per_query * queries / compute / 1e9  # GFLOP/s of the compute part
    fastest = flops_per_query * queries / args.steps / min(step_seconds) / 1e9
    row = {
        "config": args.config,
        "queries/s": round(queries / total, 1),
        "step s (compute)": round(compute / args.steps, 3),
        "step s (min)": round(min(step_seconds), 3),
        "warm-up s": round(warmup_s, 1),
        "data s/step": round(data_seconds / args.steps, 3),
        "data %": round(100 * data_seconds / total, 1),
        # The kernel's share: first touches of freshly mapped tensor memory (page faults).
        "sys s/step": round((usage.ru_stime - usage_before.ru_stime) / args.steps, 3),
        "page faults/step": round((usage.ru_minflt - usage_before.ru_minflt) / args.steps),
        "GFLOP/step": round(flops_per_step / 1e9, 1),
        "achieved GFLOP/s": round(achieved, 1),
        "matmul GFLOP/s": round(peak, 1),
        "% of peak": bench.percent_of_peak(achieved, peak),
        "% of peak (fastest step)": bench.percent_of_peak(fastest, peak),
        "params (M)": round(sum(p.numel() for p in lit.parameters()) / 1e6, 3),
        "peak RSS MiB": peak_rss,
        "queries/step": round(queries / args.steps, 1),
        "load avg": bench.load_average()[:1],
    }
    if n_c:
        row["ICE n_c/step"] = round(sum(n_c) / len(n_c), 1)
    # Module hooks see no compiled module, and a checkpointed region keeps its tensors out of
    # saved_tensors_hooks: the census would undercount those configurations.
    hidden = "compile" in options or "ckpt" in options or args.recompute_elementwise
    if args.memory and not hidden:
        with bench.SavedActivations(lit) as saved:
            step(next(stream), update=False)
        row.update(saved.summary())
    return row


def main() -> None:
    parser = bench.benchmark_parser(
        __doc__, collection="charades", feature="i3d_rgb_lgi", configs=CONFIGS
    )
    add_layout_arguments(parser, video_dim=1024, query_dim=1024, max_tokens=20)
    bench.add_generated_size_arguments(parser, videos=128, frames=128)  # train videos
    parser.add_argument("--batch-videos", type=int, default=32, help="videos per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps first: compilation, kernel selection and the heap growing to its "
        "working size (under malloc=reuse a step's page faults stop after about 3 steps; a "
        "training run takes them once)",
    )
    parser.add_argument("--layers", type=int, default=1, help="Transformer layers per encoder")
    parser.add_argument("--dropout", type=float, default=0.15, help="dropout (PRVR: 0.15)")
    parser.add_argument(
        "--recompute-elementwise",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep only matmul outputs for backward (models.layers.recompute_elementwise)",
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more untimed step that sums the saved activations by module",
    )
    parser.add_argument(
        "--census-eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 `-census` rows: measure the census's seconds against an eager step's on fp32 "
        "steps of the same model (5 more steps) and project the share corrected to eager",
    )
    bench.add_reference_bf16_argument(parser)
    args = parser.parse_args()

    def layout() -> LayoutSpec:
        frames = (args.frames, args.frames)
        return layout_from_args(args, {"train": args.videos, "val": 0}, frames, {"val": "train"})

    child_args = (
        *("batch_videos", "steps", "warmup", "num_workers", "hidden", "layers", "dropout"),
        *("recompute_elementwise", "memory", "census_eager", "reference_bf16_gflops"),
    )
    done = bench.run_parent_or_child(
        parser,
        args,
        script=__file__,
        known=known_config,
        child_args=child_args,
        layout=layout,
        run_child=run_child,
    )
    if done is None:
        return
    machine, rows, notes = done
    timed = [row for row in rows if "achieved GFLOP/s" in row]
    # The faster peer on the EPYC host A: MS-SL up to 64 q/s (GMMFormer up to 59).
    notes.append(
        bench.add_peer_ratio(
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
        "achieved GFLOP/s = counted model FLOPs / compute time (data excluded); % of peak "
        "compares it with the 1024² matmul rate of the same precision measured in the same "
        "child right after its timed steps, sustained over 2 s (matmul GFLOP/s: the CPU share "
        "of the moment, so that a loaded host does not read as a slow model)",
        "FLOPs counted by FlopCounterMode (with formulas for the CPU attention kernels it "
        "lacks) on one untimed batch (forward + backward) after the timed steps, scaled per "
        "query; peak RSS is read before it",
        "warm-up s: the untimed first steps (--warmup: kernel selection, the heap growing to "
        "its working size; torch.compile's compile time in `-compile` rows)",
        "saved MiB: distinct storages autograd keeps for backward in one more untimed step "
        "(saved_tensors_hooks; parameters excluded, bf16 weight copies of autocast included), "
        "by the innermost module that saved them and by branch",
        "each configuration runs in its own process: peak RSS is that process's ru_maxrss",
        "peers (their hosts, not this one): MS-SL 74–94 q/s (AMX Xeon host B), 22–64 (EPYC "
        "host A); GMMFormer 63–93 (51–59); peak RSS MS-SL 3.5–3.7 GB, GMMFormer 6.0 GB",
    ]
    bench.record_args("bench_prvr_train", args, rows, machine, notes)


if __name__ == "__main__":
    main()
