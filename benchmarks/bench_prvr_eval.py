"""PRVR evaluation at TVR scale: video encoding, query encoding, scoring, peak RSS, index size.

TVR's PRVR test split is 2,179 videos × 10,895 queries (40–100 frames × 3072-d I3D+ResNet,
10–25 tokens × 768-d RoBERTa, hidden 384). The default runs `--scale 0.25` of it and
extrapolates each stage to full scale in proportion to its work (encoding: videos or queries;
scoring: queries × videos), marked "extrapolated"; `--scale 1` measures the full size.
Features are written to a BigFile first and read back through `PrvrDataModule`'s eval loaders,
so reads are included. Encoding goes through `PrvrLitModule.validation_step` (the code the
Trainer runs, loaders yielding longest first); scoring through
`PrvrLitModule.score_eval_store` (what every evaluation epoch ends with: `score_queries` +
`chunked_ranks`). Configurations (`model.evaluation.precision` / `index_dtype`): `fp32`
(fp32 index), `fp32-fp16index` (the default: fp16 index, fp32 accumulation) and
`bf16-fp16index` (a bf16 copy of the net encodes); each runs in its own child process (own
peak RSS). A `-census` suffix (`bf16-fp16index-census`) runs the evaluation under
`common.OpCensus` instead: on a CPU without bf16 units its bf16 products run in fp32 (the rest
as in bf16), and the TVR-scale evaluation's share of a reference bf16 rate is projected from
each stage's census (`tvr_scale_projection`): an estimate for another host, not a timing.

    .venv/bin/python benchmarks/bench_prvr_eval.py                   # 0.25 × TVR
    .venv/bin/python benchmarks/bench_prvr_eval.py --scale 1         # full TVR size
    .venv/bin/python benchmarks/bench_prvr_eval.py --root R --collection tvr --feature F
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as bench
import torch
from msl_layout import LayoutSpec, add_layout_arguments, layout_from_args

from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.models.prvr import PrvrBaseModel

TVR_VIDEOS = 2179
TVR_QUERIES = 10895
# config -> (model.evaluation.precision, model.evaluation.index_dtype)
CONFIGS = {
    "fp32": ("fp32", "float32"),
    "fp32-fp16index": ("fp32", "float16"),  # the default
    "bf16-fp16index": ("bf16", "float16"),
}
CENSUS = "-census"
STAGES = ("video", "query", "scoring")


def known_config(name: str) -> bool:
    """A configuration of CONFIGS, or one with the `-census` suffix."""
    return name.removesuffix(CENSUS) in CONFIGS


def stage_factors(videos: int, queries: int) -> dict[str, float]:
    """Each stage's work at TVR size over its work here: encoding scales with videos or
    queries, scoring with queries × videos (what `extrapolate` and the census scale by)."""
    fv, fq = TVR_VIDEOS / videos, TVR_QUERIES / queries
    return {"video": fv, "query": fq, "scoring": fv * fq}


def tvr_scale_projection(
    stages: dict[str, dict[str, float]],
    order_s: float,
    videos: int,
    queries: int,
    ran_gflops: float,
    reference_gflops: float,
) -> dict[str, float]:
    """The TVR-scale evaluation's share of `reference_gflops`, projected from a census of each
    stage (`stages[name]`: wall s, matmul s, GFLOP, all measured here): everything but the
    products (non-matmul ops, reads, Python: wall − matmul) as measured, each stage scaled to
    TVR size (`stage_factors`; building the loaders with the queries), the products at the
    reference rate × their efficiency measured here (`common.projected_from_stages`).

    -> {"TVR-scale GFLOP", "matmul efficiency", "projected step s", "projected % of peak"}."""
    factors = stage_factors(videos, queries)
    projected = bench.projected_from_stages(
        stages, factors, order_s * factors["query"], ran_gflops, reference_gflops
    )
    return {"TVR-scale GFLOP": projected.pop("GFLOP"), **projected}


def encode(lit: PrvrLitModule, loader, dataloader_idx: int) -> tuple[float, float, int]:
    """Run `validation_step` over a loader -> (total s, of which loading s, items)."""
    start = time.perf_counter()
    loading = 0.0
    items = 0
    iterator = iter(loader)
    index = 0
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        loading += time.perf_counter() - t0
        if batch is None:
            break
        lit.validation_step(batch, index, dataloader_idx)
        items += len(batch["video_index"])
        index += 1
    return time.perf_counter() - start, loading, items


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Encode and score the split once under one precision; returns its row."""
    torch.manual_seed(args.seed)
    dm = bench.msl_datamodule(
        args,
        "validate",
        val_split=args.split,
        eval_batch_size=args.eval_batch,
        eval_video_batch_size=args.eval_video_batch,
    )
    assert dm.corpus is not None
    sizes = {"video_dim": dm.corpus.video_dim, "query_dim": dm.corpus.query_dim}
    net = PrvrBaseModel(**{**bench.net_arguments("prvr"), **sizes, "hidden_dim": args.hidden})
    precision, index_dtype = CONFIGS[args.config.removesuffix(CENSUS)]

    def lit_module(precision: str) -> PrvrLitModule:
        """The evaluation's LightningModule around `net`, evaluating in `precision`."""
        evaluation = [f"model.evaluation.precision={precision}"]
        evaluation.append(f"model.evaluation.index_dtype={index_dtype}")
        sections = bench.model_sections("prvr", evaluation)
        return PrvrLitModule(net, bench.optimizer_factory("prvr"), **sections).eval()

    lit = lit_module(precision)
    start = time.perf_counter()  # the loaders order videos and queries by their stored lengths
    videos_loader, queries_loader = dm.eval_dataloaders("val")
    order_s = time.perf_counter() - start

    def evaluate(
        stage: Any = contextlib.nullcontext, lit: PrvrLitModule = lit
    ) -> tuple[list[float], list[Any]]:
        """One evaluation pass -> (seconds of [video enc, of which reading, query enc,
        scoring], [videos, queries, index of one video, metrics]); `stage(name)` wraps each
        stage (a FLOP counter)."""
        with torch.no_grad():
            lit.on_validation_epoch_start()
            with stage("video"):
                video_s, video_read_s, n_videos = encode(lit, videos_loader, 0)
            with stage("query"):
                query_s, _, n_queries = encode(lit, queries_loader, 1)
            _, index = lit.eval_videos.compute()  # the stored per-video index tensors
            start = time.perf_counter()
            with stage("scoring"):
                metrics = lit.score_eval_store()  # what every evaluation epoch ends with
            score_s = time.perf_counter() - start
        return [video_s, video_read_s, query_s, score_s], [n_videos, n_queries, index, metrics]

    if args.config.endswith(CENSUS):
        fp32_evaluate = functools.partial(evaluate, lit=lit_module("fp32"))
        return census_row(args, evaluate, order_s, precision, fp32_evaluate)
    (video_s, video_read_s, query_s, score_s), (n_videos, n_queries, index, metrics) = evaluate()
    peak = (
        bench.sustained_matmul_flops(torch.bfloat16 if precision == "bf16" else torch.float32) / 1e9
    )
    gflop: dict[str, float] = {}

    @contextlib.contextmanager
    def counted(name: str) -> Iterator[None]:
        with bench.count_flops() as counter:
            yield
        gflop[name] = counter.get_total_flops() / 1e9

    evaluate(counted)  # a second, untimed pass counts each stage's FLOPs
    total_s = order_s + video_s + query_s + score_s
    total_gflop = sum(gflop.values())
    per_video_elems = sum(t[0].numel() for t in index.values())  # index tensors, one video
    dtype = index["clips"].dtype
    return {
        "config": args.config,
        "videos": n_videos,
        "queries": n_queries,
        "video enc s": round(video_s, 2),
        "(read+prep s)": round(video_read_s, 2),
        "order s": round(order_s, 3),
        "query enc s": round(query_s, 2),
        "scoring s": round(score_s, 3),
        "total s": round(total_s, 2),
        "GFLOP": round(total_gflop, 1),
        "GFLOP video/query/scoring": [round(gflop[k], 1) for k in ("video", "query", "scoring")],
        "achieved GFLOP/s": round(total_gflop / total_s, 1),
        "matmul GFLOP/s": round(peak, 1),
        "% of peak": bench.percent_of_peak(total_gflop / total_s, peak),
        "peak RSS MiB": bench.peak_rss_mb(),
        "index dtype": str(dtype).replace("torch.", ""),
        "index B/video": per_video_elems * dtype.itemsize,
        "index B/video fp32": per_video_elems * 4,
        "index B/video fp16": per_video_elems * 2,
        "SumR (random model)": round(metrics["SumR"], 2),
        "load avg": bench.load_average()[:1],
    }


def stage_walls(times: list[float]) -> dict[str, float]:
    """`evaluate`'s seconds [video enc, of which reading, query enc, scoring] by stage."""
    video_s, _, query_s, score_s = times
    return {"video": video_s, "query": query_s, "scoring": score_s}


def census_walls(fp32_evaluate: Any) -> dict[str, float]:
    """Each stage's wall in one evaluation with that stage under an OpCensus (no proxies)."""
    walls: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        with bench.OpCensus():
            yield
        walls[name] = time.perf_counter() - start

    fp32_evaluate(timed)
    return walls


def census_row(
    args: argparse.Namespace,
    evaluate: Any,
    order_s: float,
    precision: str,
    fp32_evaluate: Any,
) -> dict[str, Any]:
    """A `-census` configuration: one evaluation with each stage under `common.OpCensus`
    (bf16 products proxied in fp32 where this CPU has no bf16 units) and a second counting
    each stage's FLOPs -> seconds of products, of the other ops and outside any op (reads,
    Python), and for bf16 the TVR-scale evaluation's share of `--reference-bf16-gflops`
    projected from them (`tvr_scale_projection`), then again with each stage's wall corrected
    to an eager run's, as measured on the same evaluation in fp32 (`common.census_minus_eager`,
    `fp32_evaluate`: `evaluate` with the fp32 LightningModule)."""
    proxy = bench.census_proxies(precision)
    stages: dict[str, dict[str, float]] = {}
    censuses: list[bench.OpCensus] = []

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        census = bench.OpCensus(proxy)
        censuses.append(census)
        start = time.perf_counter()
        with census:
            yield
        matmul_s, other_s, _ = census.totals()
        wall = time.perf_counter() - start - census.stand_in_excess
        stages[name] = {"wall": wall, "matmul": matmul_s, "ops": other_s}

    @contextlib.contextmanager
    def counted(name: str) -> Iterator[None]:
        with bench.count_flops() as counter, bench.OpCensus(proxy):
            yield
        stages[name]["gflop"] = counter.get_total_flops() / 1e9

    _, (n_videos, n_queries, _, metrics) = evaluate(timed)
    ran_as, ran_label = bench.census_products(precision, proxy)
    ran_gflops = bench.sustained_matmul_flops(ran_as) / 1e9
    evaluate(counted)
    row: dict[str, Any] = {
        "config": args.config,
        "videos": n_videos,
        "queries": n_queries,
        "products ran as": ran_label,
        **bench.census_stand_ins(censuses),
        "matmul s": round(sum(s["matmul"] for s in stages.values()), 3),
        "non-matmul s": round(sum(s["ops"] for s in stages.values()), 3),
        "outside ops s": round(
            order_s + sum(s["wall"] - s["matmul"] - s["ops"] for s in stages.values()), 3
        ),
        "GFLOP": round(sum(s["gflop"] for s in stages.values()), 1),
        "matmul GFLOP/s": round(ran_gflops, 1),
        "stages [wall s, matmul s, non-matmul s, GFLOP]": {
            name: [round(stages[name][key], 3) for key in ("wall", "matmul", "ops", "gflop")]
            for name in STAGES
        },
    }
    if precision == "bf16":
        reference = args.reference_bf16_gflops
        projected = tvr_scale_projection(
            stages, order_s, n_videos, n_queries, ran_gflops, reference
        )
        row |= {bench.projection_column(key, reference): value for key, value in projected.items()}
        excess = bench.census_minus_eager(  # the same evaluation in fp32
            lambda: stage_walls(fp32_evaluate()[0]), lambda: census_walls(fp32_evaluate)
        )
        eager_stages = bench.corrected_to_eager(stages, excess)
        projected_eager = tvr_scale_projection(
            eager_stages, order_s, n_videos, n_queries, ran_gflops, reference
        )
        row["census − eager s (fp32)"] = {name: round(excess[name], 3) for name in STAGES}
        row[bench.projection_column(bench.EAGER_SHARE, reference)] = projected_eager[
            "projected % of peak"
        ]
    row["SumR (random model)"] = round(metrics["SumR"], 2)
    row["load avg"] = bench.load_average()[:1]
    return row


def extrapolate(row: dict[str, Any]) -> dict[str, Any]:
    """Scale a measured row to full TVR size, each stage in proportion to its work."""
    factor = stage_factors(row["videos"], row["queries"])
    fv, fq = factor["video"], factor["query"]
    video_s = row["video enc s"] * fv
    query_s = row["query enc s"] * fq
    score_s = row["scoring s"] * factor["scoring"]
    order_s = row["order s"] * fq  # one stored-length lookup a query (videos: in memory)
    total_s = order_s + video_s + query_s + score_s
    video_f, query_f, score_f = row["GFLOP video/query/scoring"]  # the same proportions
    gflop = video_f * fv + query_f * fq + score_f * factor["scoring"]
    achieved = gflop / total_s
    return {
        "config": f"{row['config']} (extrapolated)",
        "videos": TVR_VIDEOS,
        "queries": TVR_QUERIES,
        "video enc s": round(video_s, 1),
        "(read+prep s)": round(row["(read+prep s)"] * fv, 1),
        "order s": round(order_s, 2),
        "query enc s": round(query_s, 1),
        "scoring s": round(score_s, 2),
        "total s": round(total_s, 1),
        "GFLOP": round(gflop, 1),
        "achieved GFLOP/s": round(achieved, 1),
        "matmul GFLOP/s": row["matmul GFLOP/s"],
        "% of peak": bench.percent_of_peak(achieved, row["matmul GFLOP/s"]),
        "index dtype": row["index dtype"],
        "index B/video": row["index B/video"],
    }


def main() -> None:
    parser = bench.benchmark_parser(
        __doc__, collection="tvr", feature="i3d_resnet", configs=CONFIGS
    )
    add_layout_arguments(parser, video_dim=3072, query_dim=768, max_tokens=25)  # TVR
    parser.add_argument("--split", default="val", help="caption split to evaluate (with --root)")
    parser.add_argument(
        "--scale", type=float, default=0.25, help="fraction of TVR's 2,179 videos × 10,895 queries"
    )
    parser.add_argument("--min-frames", type=int, default=40, help="generated frames, min")
    parser.add_argument("--max-frames", type=int, default=100, help="generated frames, max")
    parser.add_argument("--eval-batch", type=int, default=256, help="queries per eval batch")
    parser.add_argument("--eval-video-batch", type=int, default=64, help="videos per eval batch")
    bench.add_reference_bf16_argument(parser)
    args = parser.parse_args()
    if args.root is None and not args.child:
        args.split = "val"  # the generated collection's evaluated split

    def layout() -> LayoutSpec:
        videos = max(2, round(TVR_VIDEOS * args.scale))
        frames = (args.min_frames, args.max_frames)
        return layout_from_args(args, {"val": videos, "train": 0}, frames, {"train": "val"})

    def after_row(row: dict[str, Any]) -> list[dict[str, Any]]:
        if row["config"].endswith(CENSUS):  # its projection is already at TVR scale
            return []
        if row["videos"] < TVR_VIDEOS or row["queries"] < TVR_QUERIES:
            print(extrapolate(row), flush=True)
            return [extrapolate(row)]
        return []

    done = bench.run_parent_or_child(
        parser,
        args,
        script=__file__,
        known=known_config,
        child_args=(
            *("split", "eval_batch", "eval_video_batch", "num_workers", "hidden"),
            "reference_bf16_gflops",
        ),
        layout=layout,
        run_child=run_child,
        after_row=after_row,
    )
    if done is None:
        return
    machine, rows, notes = done
    full_scale = [
        row
        for row in rows
        if "total s" in row and row["videos"] == TVR_VIDEOS and row["queries"] == TVR_QUERIES
    ]
    notes.append(
        bench.add_peer_ratio(
            full_scale,
            measured="total s",
            column="x GMMFormer (projected)",
            peer="GMMFormer, TVR-scale evaluation",
            value=63.0,
            unit="s",
            host="B",
            machine=machine,
            kind="time",
        )
    )
    notes += [
        "video enc s includes the BigFile reads, pooling and L2 normalisation of the eval loader "
        "((read+prep s) is the part spent waiting on the loader); scoring = net.score_queries + "
        "chunked_ranks + recall_at_k over the full query × video matrix; order s = building "
        "the loaders, which order videos and queries by their stored lengths (extrapolated by "
        "queries: the query store's lookups are the cost); total s = order + video + query + "
        "scoring, one first evaluation",
        "extrapolated rows scale encoding by videos or queries and scoring by queries × videos "
        "(linear in each stage's work), and the FLOPs in the same proportion; peak RSS is not "
        "extrapolated",
        "% of peak: FLOPs counted by FlopCounterMode (with formulas for the CPU attention "
        "kernels it lacks: SDPA's CPU flash kernel) in a second, untimed pass over the same "
        "split / total s, against the matmul rate of the encoders' precision measured in the "
        "same child after the timed pass",
        "index B/video = the tensors net.index_videos keeps per video (base model: unit clips "
        "[32, D] + unit video vector [D]) in the stored dtype",
        "peers (their hosts, not this one): TVR-scale evaluation MS-SL 507 s (host B) / 747 s "
        "(host A), GMMFormer 63 s (host B); 500 q × 100 videos ≈ 1.7–1.9 s",
    ]
    bench.record_args("bench_prvr_eval", args, rows, machine, notes)


if __name__ == "__main__":
    main()
