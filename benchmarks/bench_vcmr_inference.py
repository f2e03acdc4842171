"""VCMR inference throughput of the PREM localizer (SPEC §6) with and without the video cache.

Random features of TVR shapes (4352-d ResNet‖SlowFast clips, 768-d subtitles and query tokens,
40–100 clips a video, 8–30 tokens a query) through the full-size `PremLocalizer` (hidden 384,
PREM §4.2) and the pipeline of `inference.vcmr`: each query is localized on k = 10 videos,
Eq. 13 span scores, top-200 -> NMS 0.7 -> top-100, plus the SVMR pass on its GT video.

- `cached`: every video encoded ONCE (`VideoCache.build`, timed separately), then
  `predict_queries` per query batch — what validation and `run_vcmr` do;
- `no_cache`: each (query, video) pair's video re-encoded from its raw features (a fresh
  `VideoCache` per query batch holding its B·k videos).

Reports query–video pairs/s of each and the extrapolated time of TVR val (10,895 queries × 10
videos over 2,179 videos) on this CPU. Prints one JSON line; never asserts a timing.

    .venv/bin/python benchmarks/bench_vcmr_inference.py
    .venv/bin/python benchmarks/bench_vcmr_inference.py --queries 64 --videos 200 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import machine_facts, peak_rss_mb, record_result

from partial_relevance.inference.vcmr import VcmrInferenceConfig, VideoCache, predict_queries
from partial_relevance.models.prem_localizer import PremLocalizer

TVR_VAL_QUERIES = 10895
TVR_VAL_VIDEOS = 2179
VISUAL_DIM, SUB_DIM, QUERY_DIM = 4352, 768, 768  # SPEC §1.1


def random_videos(n: int, generator: torch.Generator, max_clips: int = 100) -> list[dict]:
    """n raw videos: visual [L, 4352], subtitle [L, 768], sub_mask [L] (L in 40..100)."""
    out = []
    for _ in range(n):
        L = int(torch.randint(40, max_clips + 1, (1,), generator=generator))
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
    num: int, num_videos: int, k: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """`collate_localizer_queries`-style batch: tokens, top-k videos + scores, GT video."""
    tokens = torch.randn(num, 30, QUERY_DIM, generator=generator)
    lengths = torch.randint(8, 31, (num,), generator=generator)
    mask = torch.arange(30)[None] < lengths[:, None]
    topk = torch.stack([torch.randperm(num_videos, generator=generator)[:k] for _ in range(num)])
    scores = torch.sort(torch.rand(num, k, generator=generator), dim=1, descending=True).values
    return {
        "query_index": torch.arange(num),
        "video_index": topk[:, 0].clone(),
        "query_type": torch.zeros(num, dtype=torch.long),
        "query_tokens": tokens * mask[..., None],
        "query_mask": mask,
        "topk_video": topk,
        "topk_score": scores,
        "vr_video": topk,
        "vr_score": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="queries per eval batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = PremLocalizer().eval()  # full size: hidden 384, FFN 1536, 4 heads (PREM §4.2)
    cfg = VcmrInferenceConfig(k_videos=args.k, query_chunk=args.batch)
    videos = random_videos(args.videos, generator)
    batches = [
        query_batch(min(args.batch, args.queries - lo), args.videos, args.k, generator)
        for lo in range(0, args.queries, args.batch)
    ]
    pairs = args.queries * args.k
    with torch.no_grad():
        predict_queries(
            net,
            VideoCache.build(net, video_batches(videos, [0, 1], 2), "cpu"),
            {
                **batches[0],
                "topk_video": batches[0]["topk_video"] % 2,
                "video_index": batches[0]["video_index"] % 2,
            },
            cfg,
        )  # warm-up

        start = time.perf_counter()
        cache = VideoCache.build(net, video_batches(videos, list(range(args.videos)), 32), "cpu")
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        for batch in batches:
            predict_queries(net, cache, batch, cfg)
        cached_s = time.perf_counter() - start

        start = time.perf_counter()
        for batch in batches:
            b = len(batch["query_tokens"])
            own = torch.cat([batch["topk_video"], batch["video_index"][:, None]], 1)  # [b, k+1]
            local = VideoCache.build(net, video_batches(videos, own.flatten().tolist(), 64), "cpu")
            ids = torch.arange(b * (args.k + 1)).view(b, args.k + 1)
            predict_queries(
                net, local, {**batch, "topk_video": ids[:, :-1], "video_index": ids[:, -1]}, cfg
            )
        no_cache_s = time.perf_counter() - start

    per_video = encode_s / args.videos
    per_pair_cached = cached_s / pairs
    per_pair_nocache = no_cache_s / pairs
    tvr_pairs = TVR_VAL_QUERIES * args.k
    rows = [
        {
            "mode": "cached",
            "pairs_per_s": pairs / cached_s,
            "video_encode_s": encode_s,
            "tvr_val_extrapolated_min": (per_video * TVR_VAL_VIDEOS + per_pair_cached * tvr_pairs)
            / 60,
        },
        {
            "mode": "no_cache",
            "pairs_per_s": pairs / no_cache_s,
            "video_encode_s": None,
            "tvr_val_extrapolated_min": per_pair_nocache * tvr_pairs / 60,
        },
    ]
    notes = [
        "cached pairs/s excludes the one-off video encoding (video_encode_s for "
        f"{args.videos} videos); its TVR extrapolation adds {TVR_VAL_VIDEOS} video encodings",
        "both modes include the SVMR pass on the GT video and the span decoding",
        f"speed-up of the cache on pairs: {per_pair_nocache / per_pair_cached:.2f}x",
        f"peak RSS {peak_rss_mb():.0f} MiB",
    ]
    params = {
        "queries": args.queries,
        "videos": args.videos,
        "k_videos": args.k,
        "batch": args.batch,
        "hidden": 384,
        "clips": "40-100",
    }
    record_result("bench_vcmr_inference", rows, machine_facts(), params, notes, not args.no_save)


if __name__ == "__main__":
    main()
