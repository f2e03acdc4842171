"""VCMR, SVMR and VR inference with the PREM localizer (PREM §3.5, SPEC §6).

For one query (batched over queries):

1. **VR**: the retriever's top-100 list (the ranking file, SPEC §6.1) is the VR prediction.
2. **VCMR**: the localizer runs on the query's top `k_videos = 10` videos. Start / end logits
   become log-probabilities normalised jointly over the k videos' clips (`norm: joint`, as in
   shared-norm training; default) or within each video (`norm: per_video`, CONQUER's choice).
3. Span score (Eq. 13, reconstructed): `s(q, V)/τ + log P_st(i) + log P_ed(j)` for spans with
   `min_len <= j − i + 1 <= max_len` clips (TVR 1–24, DiDeMo 1–20); the best 200 spans, NMS at
   IoU 0.7 within each video, the best 100 out (`inference.spans.decode_top_spans_batch`).
4. **SVMR**: the localizer on the GT video alone, per-video normalisation, no retrieval term,
   same length window, top 200 -> NMS -> top 100.

Efficiency: the localizer's video encoders are query-independent, so every video of the split
is encoded ONCE (`VideoCache.build`) and its encoding reused for every (query, video) pair;
only the query encoder and the query-dependent part (`PremLocalizer.localize`) run per pair,
`query_chunk` queries (× k videos) at a time. Clip spans are decoded into seconds with each
video's pooling scale and clipped to its duration (SPEC §1.3).

`UniformLocalizer` has the localizer's API and predicts uniform start / end logits: the random
localizer baseline, run through the very same pipeline on the same retrieved videos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from partial_relevance.data.vcmr import VcmrSplit
from partial_relevance.inference.ranking import VIDEO_KEYS, pad_clips
from partial_relevance.inference.spans import decode_top_spans_batch, span_scores
from partial_relevance.metrics.vcmr import GroundTruth, evaluate_all, vcmr_selection_score
from partial_relevance.models.precision import check_precision, inference_net, net_dtype
from partial_relevance.models.prem_localizer import index_encoding, mask_logits

__all__ = [
    "NORMS",
    "UniformLocalizer",
    "VcmrInferenceConfig",
    "VcmrPredictions",
    "VideoCache",
    "boundary_log_probs",
    "flat_vcmr_metrics",
    "length_groups",
    "predict_queries",
    "run_vcmr",
    "split_desc_ids",
    "split_ground_truth",
]

NORMS = ("joint", "per_video")


@dataclass(frozen=True)
class VcmrInferenceConfig:
    """SPEC §6 settings: `model.inference` of `conf/model/prem_localizer.yaml`, the one source of
    their values (tests and benchmarks compose it from there)."""

    k_videos: int  # SPEC §6.2
    norm: str  # SPEC §6.2 [decision: reconstructed Eq. 13]: joint | per_video
    min_len: int  # SPEC §6.3: span length window in clips (TVR 1-24, DiDeMo 1-20)
    max_len: int
    tau: float  # τ of the retrieval term, SPEC §4
    top_n: int  # SPEC §6.4: spans kept before NMS
    nms_iou: float | None  # SPEC §6.4
    out_n: int  # SPEC §6.4 / §7: predictions a query
    clip_seconds: float  # SPEC §1.3
    query_chunk: int  # queries localized at once (× k_videos pairs)
    pair_group: int  # most pairs a localizer call; calls split by video length (length_groups)
    svmr: bool  # also decode SVMR (GT video; its logits reused when it is in the top k)
    precision: str  # fp32 | bf16: localizer and video cache in bf16 (CPU bf16 units)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"inference.norm must be one of {NORMS}, got {self.norm!r}")
        check_precision(self.precision, "inference.precision")
        if self.pair_group < 1 or self.query_chunk < 1:
            raise ValueError("inference.pair_group and inference.query_chunk must be >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> VcmrInferenceConfig:
        """From a config dict holding every field; unknown or missing keys are an error naming
        them and the valid ones."""
        values = dict(values)
        valid = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - valid), sorted(valid - set(values))
        if unknown or missing:
            raise ValueError(
                f"inference: unknown keys {unknown}, missing keys {missing}; valid: {sorted(valid)}"
            )
        return cls(**values)


# --------------------------------------------------------------------------------------------
# The query-independent video encodings
# --------------------------------------------------------------------------------------------


@dataclass
class VideoCache:
    """Every video of a split encoded once by the localizer (query-independent part).

    encoding: vis / sub `[V, L, D]`, clip_mask / sub_mask `[V, L]` (L = longest video);
    num_clips `[V]` long; durations, scales `[V]` float64 (decoding to seconds).
    """

    encoding: dict[str, Tensor]
    num_clips: Tensor
    durations: Tensor
    scales: Tensor

    @property
    def num_videos(self) -> int:
        return int(self.num_clips.shape[0])

    @classmethod
    @torch.no_grad()
    def build(
        cls, net: nn.Module, batches: Iterable[Mapping[str, Tensor]], device: torch.device | str
    ) -> VideoCache:
        """Encode the batches of a `collate_localizer_videos` loader (index order) once."""
        chunks, index, durations, scales = [], [], [], []
        dtype = net_dtype(net)  # a bf16 net encodes (and caches) in bf16
        for batch in batches:
            enc = net.encode_videos(
                batch["visual"].to(device, dtype),
                batch["subtitle"].to(device, dtype),
                batch["clip_mask"].to(device),
                batch["sub_mask"].to(device),
            )
            chunks.append({k: enc[k] for k in VIDEO_KEYS})
            index.append(batch["video_index"])
            durations.append(batch["duration"])
            scales.append(batch["scale"])
        flat = torch.cat(index)
        if not torch.equal(flat, torch.arange(len(flat))):
            raise RuntimeError("the video loader must yield every video once, in index order")
        length = max(c["clip_mask"].shape[1] for c in chunks)
        encoding = {k: torch.cat([pad_clips(c[k], length) for c in chunks]) for k in VIDEO_KEYS}
        return cls(
            encoding,
            encoding["clip_mask"].sum(1).long(),
            torch.cat(durations).to(device),
            torch.cat(scales).to(device),
        )

    def pairs(self, index: Tensor) -> dict[str, Tensor]:
        """Encodings of videos `index [P]` as `[P, L', ...]`, L' = the longest of them (padding
        clips are masked everywhere, so trimming the rest changes nothing). Trimmed before the
        gather: only the first L' clips of each video are copied, into contiguous tensors."""
        length = int(self.num_clips[index].max().clamp_min(1))
        return {k: v[:, :length][index] for k, v in self.encoding.items()}


class UniformLocalizer(nn.Module):
    """The random-localizer baseline: the localizer API with uniform start / end logits.

    Through the same pipeline, every span of the length window in a video gets the same
    `log P_st + log P_ed`, so VCMR ranks by the retrieval term and then by position.
    """

    def encode_videos(
        self, visual: Tensor, subtitle: Tensor, clip_mask: Tensor, sub_mask: Tensor
    ) -> dict[str, Tensor]:
        V, L = clip_mask.shape
        zeros = clip_mask.new_zeros((V, L, 1), dtype=torch.float32)
        return {"vis": zeros, "sub": zeros, "clip_mask": clip_mask.bool(), "sub_mask": sub_mask}

    def encode_queries(self, tokens: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"mask": mask}

    def localize(self, video_enc: Mapping[str, Tensor], query_enc: Mapping) -> dict[str, Tensor]:
        clip_mask = video_enc["clip_mask"].bool()  # [P, L]
        logits = mask_logits(torch.zeros(clip_mask.shape, device=clip_mask.device), clip_mask)
        return {"start": logits, "end": logits.clone(), "clip_mask": clip_mask}


# --------------------------------------------------------------------------------------------
# Scoring and decoding
# --------------------------------------------------------------------------------------------


def boundary_log_probs(
    start: Tensor, end: Tensor, clip_mask: Tensor, norm: str = "joint"
) -> tuple[Tensor, Tensor]:
    """Start / end log-probabilities of `[B, k, L]` logits (SPEC §6.2).

    `joint`: one softmax over the clips of all k videos of a query (Shared-Norm, summing to 1
    over the k videos); `per_video`: a softmax within each video. Padding clips get a huge
    negative log-probability (they are masked again by the span scores).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    B, k, L = start.shape
    start, end = mask_logits(start, clip_mask), mask_logits(end, clip_mask)
    if norm == "per_video":
        return start.log_softmax(-1), end.log_softmax(-1)
    log_st = start.reshape(B, k * L).log_softmax(-1).reshape(B, k, L)
    log_ed = end.reshape(B, k * L).log_softmax(-1).reshape(B, k, L)
    return log_st, log_ed


# What one localizer call costs beyond its clips, in clips of work: measured on a 2-core EPYC
# (full-size localizer, 50-clip videos): a call of n pairs takes ≈ 4.3·n + 4 ms, and 4 ms is
# the work of ≈ 48 clips (4.3 ms / 50). `length_groups` weighs padding against this.
CALL_COST_CLIPS = 48.0


def length_groups(
    sorted_lengths: Sequence[int], group: int, call_cost: float = CALL_COST_CLIPS
) -> list[int]:
    """Start offsets of the localizer calls over pairs sorted by video length, longest first.

    Each call holds at most `group` consecutive pairs, padded to its first (longest) one; the
    split minimises the padded clips plus `call_cost` a call (dynamic programming over the
    split points): equal lengths share a call, a long tail gets its own small calls. TVR val's
    lengths (peaks at 41 and 61 clips): 0.9 % padding in 17 calls for 640 pairs, against 7.9 %
    in 10 calls of 64.
    """
    lengths = np.asarray(sorted_lengths, dtype=np.float64)
    P = len(lengths)
    cost = np.zeros(P + 1)  # cost[i]: the best split of the first i pairs
    best_start = np.zeros(P + 1, dtype=np.int64)  # where that split's last call starts
    for i in range(1, P + 1):
        first = np.arange(max(0, i - group), i)  # candidate starts of the call ending at i
        total = cost[first] + (i - first) * lengths[first] + call_cost
        pick = int(np.argmin(total))
        cost[i], best_start[i] = total[pick], first[pick]
    starts, i = [], P
    while i > 0:
        i = int(best_start[i])
        starts.append(i)
    return starts[::-1]


def _localize_pairs(
    net: nn.Module,
    cache: VideoCache,
    queries: Mapping,
    pair_query: Tensor,
    pair_video: Tensor,
    group: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Start / end logits (fp32) and clip mask `[P, L']` of P (query, video) pairs.

    Pairs run in order of video length, at most `group` at a time and in groups of similar
    length (`length_groups`), each group trimmed to its own longest video: padding clips are
    masked everywhere in the localizer (attention keys, the zeroed convolution inputs), so
    trimming changes no logit and saves the padded compute.
    """
    P = len(pair_video)
    lengths = cache.num_clips[pair_video]  # [P]
    L = int(lengths.max().clamp_min(1)) if P else 1
    start = torch.zeros(P, L, device=lengths.device)
    end = torch.zeros(P, L, device=lengths.device)
    mask = torch.zeros(P, L, dtype=torch.bool, device=lengths.device)
    order = torch.argsort(lengths, descending=True, stable=True)
    starts = length_groups(lengths[order].tolist(), group)
    queries = dict(queries)
    for lo, hi in zip(starts, [*starts[1:], P], strict=True):
        rows = order[lo:hi]
        out = net.localize(cache.pairs(pair_video[rows]), index_encoding(queries, pair_query[rows]))
        width = out["start"].shape[1]
        start[rows, :width] = out["start"].float()
        end[rows, :width] = out["end"].float()
        mask[rows, :width] = out["clip_mask"]
    return mask_logits(start, mask), mask_logits(end, mask), mask


def _gt_logits(
    net: nn.Module,
    cache: VideoCache,
    queries: Mapping,
    labelled: Tensor,
    gt: Tensor,
    topk: Tensor,
    start: Tensor,
    end: Tensor,
    mask: Tensor,
    group: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits `[n, L]` of each labelled query (chunk rows `labelled`) on its GT video `gt`.

    A pair's logits do not depend on the other videos (only the normalisation does), so a GT
    video among the query's top k reuses the VCMR pass's row (`start`, `end`, `mask`
    `[b·k, L]`, `topk [b, k]`); only the others are localized.
    """
    k = topk.shape[1]
    hit = topk[labelled] == gt[:, None]  # [n, k]
    reused = torch.nonzero(hit.any(1)).flatten()
    missing = torch.nonzero(~hit.any(1)).flatten()
    slot = labelled[reused] * k + hit[reused].float().argmax(1)  # their rows in the VCMR pass
    parts = [(reused, start[slot], end[slot], mask[slot])]
    if len(missing):
        extra = _localize_pairs(net, cache, queries, labelled[missing], gt[missing], group)
        parts.append((missing, *extra))
    n, width = len(labelled), max(part[1].shape[1] for part in parts)
    out_start, out_end = start.new_zeros(n, width), start.new_zeros(n, width)
    out_mask = mask.new_zeros(n, width)
    for rows, part_start, part_end, part_mask in parts:
        L = part_start.shape[1]
        out_start[rows, :L], out_end[rows, :L], out_mask[rows, :L] = (
            part_start,
            part_end,
            part_mask,
        )
    return mask_logits(out_start, out_mask), mask_logits(out_end, out_mask), out_mask


@torch.no_grad()
def predict_queries(
    net: nn.Module,
    cache: VideoCache,
    batch: Mapping[str, Tensor],
    cfg: VcmrInferenceConfig,
) -> dict[str, list[np.ndarray | None]]:
    """VCMR / SVMR / VR predictions of a `collate_localizer_queries` batch (SPEC §6).

    Returns dict of B-long lists: `vcmr` `[m, 4]` rows `(video_idx, st, ed, score)` (video
    indices = positions in the split's video list), `svmr` the same on the GT video (None for
    an unlabelled query or with `cfg.svmr` off), `vr` `[k_rank, 2]` `(video_idx, score)`.
    """
    device = cache.num_clips.device
    tokens = batch["query_tokens"].to(device, net_dtype(net))
    token_mask = batch["query_mask"].to(device)
    k = min(cfg.k_videos, batch["topk_video"].shape[1])
    topk = batch["topk_video"][:, :k].to(device)  # [B, k]
    retrieval = batch["topk_score"][:, :k].to(device).float()  # [B, k]
    gt_video = batch["video_index"].to(device)  # [B], −1 unlabelled
    B = len(tokens)
    vcmr: list[np.ndarray | None] = []
    svmr: list[np.ndarray | None] = [None] * B
    for lo in range(0, B, max(1, cfg.query_chunk)):
        rows = slice(lo, min(B, lo + cfg.query_chunk))
        b = rows.stop - rows.start
        queries = net.encode_queries(tokens[rows], token_mask[rows])
        pair_query = torch.arange(b, device=device).repeat_interleave(k)  # [b·k]
        start, end, mask = _localize_pairs(
            net, cache, queries, pair_query, topk[rows].flatten(), cfg.pair_group
        )
        L = start.shape[-1]
        log_st, log_ed = boundary_log_probs(
            start.view(b, k, L), end.view(b, k, L), mask.view(b, k, L), cfg.norm
        )
        scores = span_scores(
            log_st, log_ed, mask.view(b, k, L), cfg.min_len, cfg.max_len, retrieval[rows], cfg.tau
        )  # [b, k, L, L]
        videos = topk[rows]
        vcmr.extend(
            decode_top_spans_batch(
                scores,
                videos,
                cache.durations[videos],
                cache.scales[videos],
                top_n=cfg.top_n,
                nms_iou=cfg.nms_iou,
                out_n=cfg.out_n,
                clip_seconds=cfg.clip_seconds,
            )
        )
        labelled = torch.nonzero(gt_video[rows] >= 0).flatten()  # [n] within the chunk
        if cfg.svmr and len(labelled):
            gt = gt_video[rows][labelled]  # [n]
            start, end, mask = _gt_logits(
                net, cache, queries, labelled, gt, videos, start, end, mask, cfg.pair_group
            )
            log_st, log_ed = boundary_log_probs(
                start[:, None], end[:, None], mask[:, None], "per_video"
            )
            scores = span_scores(log_st, log_ed, mask[:, None], cfg.min_len, cfg.max_len)
            decoded = decode_top_spans_batch(
                scores,
                gt[:, None],
                cache.durations[gt][:, None],
                cache.scales[gt][:, None],
                top_n=cfg.top_n,
                nms_iou=cfg.nms_iou,
                out_n=cfg.out_n,
                clip_seconds=cfg.clip_seconds,
            )
            for j, q in enumerate(labelled.tolist()):
                svmr[lo + q] = decoded[j]
    vr_rows = torch.stack([batch["vr_video"].double(), batch["vr_score"].double()], dim=-1)
    vr = list(vr_rows.cpu().numpy())  # B × [k_rank, 2]
    return {"vcmr": vcmr, "svmr": svmr, "vr": vr}


# --------------------------------------------------------------------------------------------
# Whole splits
# --------------------------------------------------------------------------------------------


def split_desc_ids(split: VcmrSplit) -> list[int]:
    """The integer desc_id of each query (the query id when numeric, else its position)."""
    out = []
    for i, q in enumerate(split.queries):
        out.append(int(q.query_id) if q.query_id.lstrip("-").isdigit() else i)
    return out


def split_ground_truth(split: VcmrSplit) -> dict[int, GroundTruth]:
    """desc_id -> GroundTruth of every labelled query (video = position in the split's list;
    DiDeMo: every annotator window, SPEC §7)."""
    out: dict[int, GroundTruth] = {}
    for desc_id, query, video in zip(split_desc_ids(split), split.queries, split.query_video):
        if video < 0 or query.span is None:
            continue
        windows = query.windows if query.windows else (query.span,)
        out[desc_id] = GroundTruth(desc_id, int(video), np.asarray(windows), query.query_type)
    return out


@dataclass
class VcmrPredictions:
    """One split's predictions (desc_id -> rows) and what writing / scoring them needs."""

    split: str
    vcmr: dict[int, np.ndarray]
    svmr: dict[int, np.ndarray] | None
    vr: dict[int, np.ndarray]
    ground_truth: dict[int, GroundTruth]
    video2idx: dict[str, int]
    queries: list[tuple[int, str]]  # (desc_id, desc), the submission's order

    def evaluate(self, by_type: bool = True) -> dict[str, dict[str, float]]:
        """`evaluate_all` on the labelled queries (SPEC §7); {} when the split has none."""
        if not self.ground_truth:
            return {}
        return evaluate_all(self.vcmr, self.svmr, self.vr, self.ground_truth, by_type=by_type)


def collect_predictions(
    split: VcmrSplit, query_index: Iterable[int], preds: Mapping[str, list]
) -> VcmrPredictions:
    """Assemble `predict_queries` outputs (split positions `query_index`) into a
    `VcmrPredictions` (duplicates, e.g. from a DistributedSampler's padding, collapse)."""
    desc_ids = split_desc_ids(split)
    vcmr, svmr, vr = {}, {}, {}
    for n, qi in enumerate(query_index):
        d = desc_ids[int(qi)]
        vcmr[d] = preds["vcmr"][n]
        vr[d] = preds["vr"][n]
        if preds["svmr"][n] is not None:
            svmr[d] = preds["svmr"][n]
    return VcmrPredictions(
        split.name,
        vcmr,
        svmr or None,
        vr,
        split_ground_truth(split),
        {v: i for i, v in enumerate(split.video_ids)},
        [(d, q.text) for d, q in zip(desc_ids, split.queries)],
    )


@torch.no_grad()
def run_vcmr(
    net: nn.Module,
    datamodule: Any,
    split: str,
    cfg: VcmrInferenceConfig,
    device: torch.device | str = "cpu",
) -> VcmrPredictions:
    """The whole SPEC §6 pipeline on one split of a `VcmrLocalizerDataModule` (set up).

    Encodes the split's videos once, then localizes every query's top-k videos in batches.
    `net` is put in eval mode for the call (and restored).
    """
    was_training = net.training
    net.eval()
    try:
        runner = inference_net(net, cfg.precision)
        cache = VideoCache.build(runner, datamodule.video_loader(split), device)
        index: list[int] = []
        merged: dict[str, list] = {"vcmr": [], "svmr": [], "vr": []}
        for batch in datamodule.query_loader(split):
            out = predict_queries(runner, cache, batch, cfg)
            index.extend(batch["query_index"].tolist())
            for key in merged:
                merged[key].extend(out[key])
    finally:
        net.train(was_training)
    return collect_predictions(datamodule.all_splits()[split], index, merged)


def flat_vcmr_metrics(results: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    """`evaluate_all`'s nested results as flat metric keys (one naming everywhere):
    `<prefix>/VCMR_R@1 IoU0.5`, `<prefix>/SVMR_R@10 IoU0.7`, `<prefix>/VR_R@5`, per query type
    `<prefix>/VCMR_R@1 IoU0.5_v`, and `<prefix>/VCMR_selection` (R@1 IoU0.5 + R@1 IoU0.7,
    SPEC §5 model selection)."""
    out: dict[str, float] = {}
    for group, values in results.items():
        task, _, qtype = group.partition("_")
        for metric, value in values.items():
            out[f"{prefix}/{task}_{metric}" + (f"_{qtype}" if qtype else "")] = float(value)
    if "VCMR" in results:
        out[f"{prefix}/VCMR_selection"] = vcmr_selection_score(results)
    return out
