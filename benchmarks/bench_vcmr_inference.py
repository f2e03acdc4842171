"""VCMR inference throughput of the PREM localizer (SPEC §6) with and without the video cache.

Random features of TVR shapes (4352-d ResNet‖SlowFast clips, 768-d subtitles and query tokens,
8–30 tokens a query) through the full-size `PremLocalizer` (hidden 384, PREM §4.2) and the
pipeline of `inference.vcmr`: each query is localized on k = 10 videos, Eq. 13 span scores,
top-200 -> NMS 0.7 -> top-100, plus the SVMR pass on its GT video. Video lengths
(`--lengths`): `tvr-val` (default) takes the clip counts of TVR val's 2,179 videos
(`ceil(duration / 1.5)` capped at 100, SPEC §1.3; mean 51.0 clips) at evenly spaced quantiles,
so the extrapolated TVR val time is that of TVR val's own lengths; `uniform` draws 40–100 clips
(mean 70; what the sittings before the fifth measured).

- `cached fp32` / `cached bf16` (`inference.precision`): every video encoded ONCE
  (`VideoCache.build`, timed separately), then `predict_queries` per query batch, pairs
  grouped by video length — what validation and `run_vcmr` do;
- `no_cache fp32`: each (query, video) pair's video re-encoded from its raw features (a fresh
  `VideoCache` per query batch holding its B·(k+1) videos), as CONQUER does;
- `cached bf16-census` (`--precisions ...,bf16-census`): the cached bf16 run with each part
  under `common.OpCensus`; on a CPU without bf16 units its bf16 products run in fp32 (the rest
  as in bf16) and TVR val's time at a reference bf16 rate is projected from it
  (`common.projected_from_stages`): an estimate for another host, not a timing.

Reports query–video pairs/s of each and the extrapolated time of TVR val (10,895 queries × 10
videos over 2,179 videos) on this CPU. Prints one JSON line; never asserts a timing.

    .venv/bin/python benchmarks/bench_vcmr_inference.py
    .venv/bin/python benchmarks/bench_vcmr_inference.py --queries 128 --videos 200 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import (
    EAGER_MINUTES,
    OpCensus,
    add_malloc_argument,
    add_peer_ratio,
    add_reference_bf16_argument,
    apply_host_settings,
    census_minus_eager,
    census_products,
    census_proxies,
    census_stand_ins,
    corrected_to_eager,
    count_flops,
    load_average,
    machine_facts,
    model_sections,
    net_arguments,
    peak_rss_mb,
    percent_of_peak,
    projected_from_stages,
    projection_column,
    record_result,
    sustained_matmul_flops,
)

from partial_relevance.data.annotations import read_tvr_jsonl
from partial_relevance.data.preprocess import CLIP_SECONDS
from partial_relevance.inference.vcmr import (
    VcmrInferenceConfig,
    VideoCache,
    predict_queries,
)
from partial_relevance.models.precision import PRECISIONS, inference_net
from partial_relevance.models.prem_localizer import PremLocalizer

TVR_VAL_QUERIES = 10895
TVR_VAL_VIDEOS = 2179
# Clip count -> number of TVR val videos with it: `min(ceil(duration / 1.5), 100)` over the 2,179
# videos of tvr_val_release.jsonl (SPEC §1.1/§1.3; `tvr_val_clip_histogram` recomputes it from the
# file, tests/test_bench_vcmr_lengths.py checks the two agree). Mean 51.0 clips, bimodal around
# 41 and 61 (the sitcoms' ~60 s and the dramas' ~90 s segments).
TVR_VAL_CLIP_HISTOGRAM = {
    6: 1, 12: 1, 16: 1, 19: 2, 20: 1, 21: 1, 23: 1, 24: 1, 26: 1, 27: 3, 29: 7, 30: 2, 31: 5,
    32: 3, 33: 3, 34: 4, 35: 12, 36: 13, 37: 26, 38: 35, 39: 122, 40: 164, 41: 347, 42: 154,
    43: 114, 44: 20, 45: 31, 46: 11, 47: 21, 48: 3, 49: 12, 50: 8, 51: 5, 52: 6, 53: 11, 54: 11,
    55: 18, 56: 10, 57: 25, 58: 33, 59: 97, 60: 156, 61: 333, 62: 134, 63: 76, 64: 14, 65: 30,
    66: 5, 67: 12, 68: 5, 69: 6, 70: 3, 71: 4, 72: 6, 73: 3, 74: 1, 75: 2, 76: 1, 77: 2, 78: 2,
    79: 1, 80: 4, 81: 2, 82: 3, 83: 3, 85: 1, 86: 1, 87: 2, 88: 1, 91: 1, 95: 2, 98: 1, 99: 1,
    100: 15,
}  # fmt: skip
MAX_CLIPS = 100  # SPEC §1.3 (`max_clips` of conf/data/vcmr_tvr.yaml)
CENSUS = "-census"
PRECISION_MODES = ("fp32", "bf16", "bf16-census")  # cached modes (`--precisions`)
LENGTHS = ("tvr-val", "uniform")
VISUAL_DIM, SUB_DIM, QUERY_DIM = 4352, 768, 768  # SPEC §1.1
# The localizer as `model=prem_localizer data=vcmr_localizer_tvr` composes it (no file is read).
TVR_LOCALIZER = ["data=vcmr_localizer_tvr"]


def inference_config(args: argparse.Namespace, precision: str) -> VcmrInferenceConfig:
    """SPEC §6 settings of `model=prem_localizer` with this run's k, batch, grouping and
    precision."""
    sections = model_sections("prem_localizer", TVR_LOCALIZER)
    return VcmrInferenceConfig.from_mapping(
        {
            **sections["inference"],
            "k_videos": args.k,
            "query_chunk": args.batch,
            "pair_group": args.pair_group,
            "precision": precision,
        }
    )


def tvr_val_clip_histogram(path: Path) -> dict[int, int]:
    """Clip count -> videos over the distinct videos of a labelled TVR annotation file
    (`read_tvr_jsonl`): `min(ceil(duration / 1.5), 100)`, at least 1."""
    durations = {q.video_id: q.duration for q in read_tvr_jsonl(path)}
    counts = Counter(
        min(MAX_CLIPS, max(1, math.ceil(d / CLIP_SECONDS))) for d in durations.values()
    )
    return dict(sorted(counts.items()))


def clip_counts(n: int, lengths: str, generator: torch.Generator) -> list[int]:
    """n video lengths in clips, in a random order.

    `tvr-val`: TVR val's clip counts at the n evenly spaced quantiles (i + ½)/n of its 2,179
    videos, so even a small sample has TVR val's mix of lengths; `uniform`: 40..100 drawn.
    """
    if lengths == "uniform":
        return [int(v) for v in torch.randint(40, MAX_CLIPS + 1, (n,), generator=generator)]
    if lengths != "tvr-val":
        raise ValueError(f"--lengths: {lengths!r} is not one of {', '.join(LENGTHS)}")
    every = [c for c, videos in sorted(TVR_VAL_CLIP_HISTOGRAM.items()) for _ in range(videos)]
    picked = [every[int((i + 0.5) * len(every) / n)] for i in range(n)]
    return [picked[i] for i in torch.randperm(n, generator=generator).tolist()]


def random_videos(lengths: list[int], generator: torch.Generator) -> list[dict]:
    """One raw video per length L: visual [L, 4352], subtitle [L, 768], sub_mask [L]."""
    out = []
    for L in lengths:
        out.append(
            {
                "visual": torch.randn(L, VISUAL_DIM, generator=generator),
                "subtitle": torch.randn(L, SUB_DIM, generator=generator),
                "sub_mask": torch.rand(L, generator=generator) > 0.3,
            }
        )
    return out


def video_batches(videos: list[dict], indices: list[int], batch: int):
    """`collate_localizer_videos`-style batches of `videos[indices]` (index = batch position)."""
    for lo in range(0, len(indices), batch):
        chunk = [videos[i] for i in indices[lo : lo + batch]]
        L = max(len(v["visual"]) for v in chunk)
        b = len(chunk)
        visual = torch.zeros(b, L, VISUAL_DIM)
        subtitle = torch.zeros(b, L, SUB_DIM)
        clip_mask = torch.zeros(b, L, dtype=torch.bool)
        sub_mask = torch.zeros(b, L, dtype=torch.bool)
        for j, v in enumerate(chunk):
            n = len(v["visual"])
            visual[j, :n], subtitle[j, :n] = v["visual"], v["subtitle"]
            clip_mask[j, :n], sub_mask[j, :n] = True, v["sub_mask"]
        yield {
            "video_index": torch.arange(lo, lo + b),
            "visual": visual,
            "subtitle": subtitle,
            "clip_mask": clip_mask,
            "sub_mask": sub_mask,
            "duration": clip_mask.sum(1).double() * 1.5,
            "scale": torch.ones(b, dtype=torch.float64),
        }


def query_batch(
    num: int, num_videos: int, k: int, generator: torch.Generator, gt_in_topk: float = 0.5
) -> dict[str, torch.Tensor]:
    """`collate_localizer_queries`-style batch: tokens, top-k videos + scores, GT video.

    A fraction `gt_in_topk` of the queries has its GT video among its top k (its SVMR pass
    reuses that row's logits); the others need one more localizer pair.
    """
    tokens = torch.randn(num, 30, QUERY_DIM, generator=generator)
    lengths = torch.randint(8, 31, (num,), generator=generator)
    mask = torch.arange(30)[None] < lengths[:, None]
    order = torch.stack([torch.randperm(num_videos, generator=generator) for _ in range(num)])
    k = min(k, num_videos)
    topk = order[:, :k]
    inside = torch.rand(num, generator=generator) < gt_in_topk
    outside = order[:, k] if num_videos > k else topk[:, 0]  # no video outside a full list
    gt = torch.where(inside, topk[:, 0], outside)
    scores = torch.sort(torch.rand(num, k, generator=generator), dim=1, descending=True).values
    return {
        "query_index": torch.arange(num),
        "video_index": gt.clone(),
        "query_type": torch.zeros(num, dtype=torch.long),
        "query_tokens": tokens * mask[..., None],
        "query_mask": mask,
        "topk_video": topk,
        "topk_score": scores,
        "vr_video": topk,
        "vr_score": scores,
    }


STAGES = ("encode", "localize")  # run_all's two timed parts


def census_row(
    args: argparse.Namespace,
    mode: str,
    proxy: bool,
    run_all: Any,
    observed: Any,
    pairs: int,
    fp32_run_all: Any,
) -> dict[str, Any]:
    """The `cached <precision>-census` row: `run_all` with video encoding and localization
    each under an OpCensus, then again counting each part's FLOPs -> TVR val's minutes and
    share of `--reference-bf16-gflops` projected from them (encoding scaled by videos,
    localization by pairs; everything but the products as measured here). A second minutes
    column corrects each stage's wall to an eager run's, as measured on the same work in fp32
    (`common.census_minus_eager`, `fp32_run_all`: `run_all` with the fp32 net)."""
    censuses = [observed(), observed()]
    walls = run_all(stage=iter(censuses).__next__)
    # Each wall less its census's stand-in excess (common.OpCensus.stand_in_excess).
    encode_s, cached_s = (w - c.stand_in_excess for w, c in zip(walls, censuses, strict=True))
    ran_as, ran_label = census_products(mode.removesuffix(CENSUS), proxy)
    ran_gflops = sustained_matmul_flops(ran_as) / 1e9
    counters = [count_flops(), count_flops()]

    @contextlib.contextmanager
    def counted() -> Any:
        with counters[len(gflops)] as counter, observed():
            yield
        gflops.append(counter.get_total_flops() / 1e9)

    gflops: list[float] = []
    run_all(stage=counted)
    stages = {
        name: {"wall": wall, "matmul": census.totals()[0], "gflop": gflop}
        for name, wall, census, gflop in zip(
            STAGES, (encode_s, cached_s), censuses, gflops, strict=True
        )
    }
    factors = {"encode": TVR_VAL_VIDEOS / args.videos, "localize": TVR_VAL_QUERIES * args.k / pairs}
    reference = args.reference_bf16_gflops
    projected = projected_from_stages(stages, factors, 0.0, ran_gflops, reference)
    excess = census_minus_eager(  # the same work in fp32, eager and under a census
        lambda: dict(zip(STAGES, fp32_run_all(), strict=True)),
        lambda: dict(
            zip(STAGES, fp32_run_all(stage=iter([OpCensus(), OpCensus()]).__next__), strict=True)
        ),
    )
    eager_stages = corrected_to_eager(stages, excess)
    projected_eager = projected_from_stages(eager_stages, factors, 0.0, ran_gflops, reference)
    return {
        "mode": f"cached {mode}",
        "products ran as": ran_label,
        **census_stand_ins(censuses),
        "video_encode_s": round(encode_s, 3),
        "localize_s": round(cached_s, 3),
        "matmul s": round(sum(s["matmul"] for s in stages.values()), 3),
        "non-matmul s": round(sum(c.totals()[1] for c in censuses), 3),
        "matmul GFLOP/s": round(ran_gflops, 1),
        projection_column("TVR val GFLOP", reference): projected["GFLOP"],
        projection_column("matmul efficiency", reference): projected["matmul efficiency"],
        projection_column("projected TVR val min", reference): round(
            projected["projected step s"] / 60, 2
        ),
        projection_column("projected % of peak", reference): projected["projected % of peak"],
        "census − eager s (fp32)": [round(excess[name], 3) for name in STAGES],
        projection_column(EAGER_MINUTES, reference): round(
            projected_eager["projected step s"] / 60, 2
        ),
        "load avg": load_average()[:1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="queries per eval batch")
    parser.add_argument("--pair-group", type=int, default=64, help="pairs per localizer call")
    parser.add_argument("--gt-in-topk", type=float, default=0.5, help="queries with GT in top k")
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated: fp32, bf16, bf16-census (cached mode; census: see above)",
    )
    add_reference_bf16_argument(parser)
    parser.add_argument(
        "--no-cache-queries",
        type=int,
        default=16,
        help="queries timed without the cache (fp32); 0 leaves that row out",
    )
    parser.add_argument(
        "--lengths",
        choices=LENGTHS,
        default="tvr-val",
        help="video lengths: TVR val's clip counts (quantiles) or uniform 40-100 clips",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-save", action="store_true")
    add_malloc_argument(parser)
    args = parser.parse_args()
    unknown = [p for p in args.precisions.split(",") if p and p not in PRECISION_MODES]
    if unknown:
        parser.error(f"--precisions: unknown {unknown}; choose from {list(PRECISION_MODES)}")
    if args.no_cache_queries < 0:
        parser.error(f"--no-cache-queries must be >= 0, got {args.no_cache_queries}")
    apply_host_settings(args.malloc)  # as `evaluate` does, before anything is allocated
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # Full size from the config: hidden 384, FFN 1536, 4 heads (PREM §4.2), TVR's dimensions.
    net = PremLocalizer(**net_arguments("prem_localizer", TVR_LOCALIZER)).eval()
    lengths = clip_counts(args.videos, args.lengths, generator)
    videos = random_videos(lengths, generator)
    batches = [
        query_batch(
            min(args.batch, args.queries - lo), args.videos, args.k, generator, args.gt_in_topk
        )
        for lo in range(0, args.queries, args.batch)
    ]
    pairs = args.queries * args.k
    tvr_pairs = TVR_VAL_QUERIES * args.k
    rows = []
    notes = []
    with torch.no_grad():
        for mode in [p for p in args.precisions.split(",") if p]:
            precision = mode.removesuffix(CENSUS)
            proxy = mode != precision and census_proxies(precision)

            def observed(proxy: bool = proxy, census: bool = mode != precision) -> Any:
                """A fresh OpCensus for a census mode, else no context."""
                return OpCensus(proxy) if census else contextlib.nullcontext()

            cfg = inference_config(args, precision)
            runner = inference_net(net, precision)
            with observed():
                warm = VideoCache.build(runner, video_batches(videos, [0, 1], 2), "cpu")
                first = batches[0]
                predict_queries(
                    runner,
                    warm,
                    {
                        **first,
                        "topk_video": first["topk_video"] % 2,
                        "video_index": first["video_index"] % 2,
                    },
                    cfg,
                )  # warm-up

            def run_all(
                runner: torch.nn.Module = runner,
                cfg: VcmrInferenceConfig = cfg,
                stage: Callable[[], Any] = contextlib.nullcontext,
            ) -> tuple[float, float]:
                """Encode every video once, then localize every query batch -> (s, s); each
                part runs inside `stage()` (a FLOP counter)."""
                start = time.perf_counter()
                with stage():
                    cache = VideoCache.build(
                        runner, video_batches(videos, list(range(args.videos)), 32), "cpu"
                    )
                encode_s = time.perf_counter() - start
                start = time.perf_counter()
                with stage():
                    for batch in batches:
                        predict_queries(runner, cache, batch, cfg)
                return encode_s, time.perf_counter() - start

            if mode != precision:
                fp32_run_all = functools.partial(
                    run_all, runner=inference_net(net, "fp32"), cfg=inference_config(args, "fp32")
                )
                rows.append(census_row(args, mode, proxy, run_all, observed, pairs, fp32_run_all))
                print(rows[-1], flush=True)
                continue
            encode_s, cached_s = run_all()
            peak = sustained_matmul_flops(PRECISIONS[precision]) / 1e9  # same load as the timed run
            counters = [count_flops(), count_flops()]  # video encoding, localization
            run_all(stage=iter(counters).__next__)  # a second, untimed run counts each part
            encode_gflop, local_gflop = (c.get_total_flops() / 1e9 for c in counters)
            achieved = (encode_gflop + local_gflop) / (encode_s + cached_s)
            per_video = encode_s / args.videos
            # The counted work of TVR val (scaled like the time) at 100 % of the measured peak:
            # the least time this host's matmul rate allows, whatever the overheads.
            tvr_gflop = (
                encode_gflop / args.videos * TVR_VAL_VIDEOS + local_gflop / pairs * tvr_pairs
            )
            rows.append(
                {
                    "mode": f"cached {precision}",
                    "pairs_per_s": round(pairs / cached_s, 2),
                    "video_encode_s": round(encode_s, 3),
                    "tvr_val_extrapolated_min": round(
                        (per_video * TVR_VAL_VIDEOS + cached_s / pairs * tvr_pairs) / 60, 2
                    ),
                    "tvr_val_at_peak_min": round(tvr_gflop / peak / 60, 2),
                    "GFLOP/pair": round(local_gflop / pairs, 3),
                    "achieved GFLOP/s": round(achieved, 1),
                    "matmul GFLOP/s": round(peak, 1),
                    "% of peak": percent_of_peak(achieved, peak),
                    "load avg": load_average()[:1],
                }
            )
            print(rows[-1], flush=True)

        # CONQUER-style: every (query, video) pair re-encodes its video (fp32, fewer queries;
        # `--no-cache-queries 0` leaves the row out).
        nq = min(args.no_cache_queries, args.queries)
        if nq > 0:
            cfg = inference_config(args, "fp32")
            batch = {k: v[:nq] for k, v in batches[0].items()}
            start = time.perf_counter()
            own = torch.cat([batch["topk_video"], batch["video_index"][:, None]], 1)  # [b, k+1]
            local = VideoCache.build(net, video_batches(videos, own.flatten().tolist(), 64), "cpu")
            width = own.shape[1]  # k + 1 (k may be cut by a tiny corpus)
            ids = torch.arange(nq * width).view(nq, width)
            predict_queries(
                net, local, {**batch, "topk_video": ids[:, :-1], "video_index": ids[:, -1]}, cfg
            )
            no_cache_s = time.perf_counter() - start
            peak = sustained_matmul_flops(torch.float32) / 1e9
            with count_flops() as counter:  # the same work, untimed
                local = VideoCache.build(
                    net, video_batches(videos, own.flatten().tolist(), 64), "cpu"
                )
                predict_queries(
                    net, local, {**batch, "topk_video": ids[:, :-1], "video_index": ids[:, -1]}, cfg
                )
            achieved = counter.get_total_flops() / 1e9 / no_cache_s
            rows.append(
                {
                    "mode": "no_cache fp32",
                    "pairs_per_s": round(nq * args.k / no_cache_s, 2),
                    "video_encode_s": None,
                    "tvr_val_extrapolated_min": round(
                        no_cache_s / (nq * args.k) * tvr_pairs / 60, 2
                    ),
                    "achieved GFLOP/s": round(achieved, 1),
                    "matmul GFLOP/s": round(peak, 1),
                    "% of peak": percent_of_peak(achieved, peak),
                    "load avg": load_average()[:1],
                }
            )
            print(rows[-1], flush=True)

    machine = machine_facts()
    notes.append(
        add_peer_ratio(
            rows,
            measured="pairs_per_s",
            column="x CONQUER pairs/s (projected)",
            peer="CONQUER, fp32 model forward alone",
            value=16.0,
            unit="pairs/s",
            host="B",
            machine=machine,
            kind="rate",
        )
    )
    notes += [
        "tvr_val_extrapolated_min is extrapolated from the measured subset: "
        f"{args.queries} queries × {args.k} videos over {args.videos} videos (cached rows add "
        f"{TVR_VAL_VIDEOS} video encodings at the measured per-video rate)",
        (
            f"video lengths: TVR val's clip counts at {args.videos} evenly spaced quantiles "
            "(min(ceil(duration / 1.5), 100) over its 2,179 videos; mean 51.0 clips)"
            if args.lengths == "tvr-val"
            else "video lengths: uniform 40-100 clips (mean 70; TVR val's mean is 51.0)"
        )
        + f": this sample {min(lengths)}-{max(lengths)} clips, mean "
        f"{sum(lengths) / len(lengths):.1f}",
        f"cached: each video encoded once (VideoCache), pairs run {args.pair_group} at a time "
        "grouped by video length; no_cache: every pair re-encodes its video (CONQUER-style)",
        "every row includes the SVMR pass on the GT video and the span decoding (top-200, NMS, "
        f"top-100); {args.gt_in_topk:.0%} of the queries have their GT video in the top k, "
        "whose SVMR logits are reused",
        "CONQUER (host B, model forward alone): 16 pairs/s fp32, 21 bf16, about 2 h for TVR val",
        f"peak RSS {peak_rss_mb():.0f} MiB",
        "tvr_val_at_peak_min: the counted FLOPs of TVR val (video encodings + pairs, scaled "
        "like the time) at 100 % of the measured matmul rate: the least time this host allows",
        "GFLOP/pair: localization FLOPs per query-video pair (SVMR pairs and decoding included)",
        "census rows (`--precisions ...,bf16-census`): video encoding and localization each "
        "under common.OpCensus (bf16 products proxied in fp32 where no bf16 units are known), "
        "then TVR val projected at the reference bf16 rate: everything but the products as "
        "measured here (scaled: encoding by videos, localization by pairs), the counted FLOPs "
        "at the reference rate × the products' efficiency measured here; an estimate",
        "% of peak: FLOPs counted by FlopCounterMode (with formulas for the CPU attention "
        "kernels it lacks: nn.MultiheadAttention's fast path, SDPA's CPU flash kernel) in a "
        "second, untimed run of the same work (video encoding + localization), over the timed "
        "seconds, against the matmul rate of the row's precision measured right after its "
        "timed run",
    ]
    params = {
        "queries": args.queries,
        "videos": args.videos,
        "k_videos": args.k,
        "batch": args.batch,
        "pair_group": args.pair_group,
        "gt_in_topk": args.gt_in_topk,
        "hidden": 384,
        "lengths": args.lengths,
        "clips": f"{min(lengths)}-{max(lengths)}, mean {sum(lengths) / len(lengths):.1f}",
    }
    record_result("bench_vcmr_inference", rows, machine, params, notes, not args.no_save)


if __name__ == "__main__":
    main()
