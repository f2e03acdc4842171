"""PREM moment-localizer data over the VCMR corpus (PREM §3.4–§3.5, SPEC §5–§6).

The localizer is trained stage-wise (SPEC §5): the retriever is trained first and ranks every
split's queries once (the ranking file, `data.rankings`); this datamodule reads that file.

- Training (`VcmrLocalizerTrainDataset`): one item per labelled training query: its tokens, its
  GT video and `n_neg` negative videos (TVR 4, DiDeMo 2) drawn uniformly from the retriever's
  top-`neg_pool` (100) videos for that query, the GT video excluded, **redrawn every time the
  item is loaded** (torch's RNG, so `seed_everything(workers=True)` makes runs repeatable).
  The item also carries the GT span (inclusive clips) and up to `adv_max_pos` positive spans
  of the adversarial term (IoU > 0.7 to the GT span, SPEC §5; the GT span always first, the
  rest a fresh random subset when there are more).
- Evaluation (`split_loaders(split)` -> videos loader, queries loader): every video of the split
  once (with its duration and pooling scale, to decode spans into seconds) and every query with
  its top `k_videos` retrieved videos and their retrieval scores `s(q, V)` (VCMR, SPEC §6.2)
  plus its full VR list (top 100).

Ranking-file rows and videos are matched by query id and video name, so the file's order does
not matter; a split, query or video the file lacks raises DataError naming the file and key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from partial_relevance.data.collate import pad_sequences
from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.data.rankings import SplitRanking, ranking_splits, read_rankings
from partial_relevance.data.vcmr import (
    LabelledQueryDataset,
    VcmrCorpus,
    VcmrQueryDataset,
    VcmrRetrieverDataModule,
    VcmrSplit,
    VcmrVideoDataset,
    collate_vcmr_queries,
    collate_vcmr_videos,
)

__all__ = [
    "AlignedRanking",
    "VcmrLocalizerDataModule",
    "VcmrLocalizerEvalQueryDataset",
    "VcmrLocalizerEvalVideoDataset",
    "VcmrLocalizerTrainDataset",
    "adversarial_span_positives",
    "align_ranking",
    "collate_localizer_batch",
    "collate_localizer_queries",
    "collate_localizer_videos",
    "sample_negatives",
]


def adversarial_span_positives(
    gt: tuple[int, int], num_clips: int, iou_threshold: float = 0.7
) -> np.ndarray:
    """The adversarial term's positive spans (SPEC §5): the GT span and every span of the video
    whose inclusive-clip IoU with it exceeds `iou_threshold`.

    IoU in inclusive clips: `|[i, j] ∩ [s, e]| / |[i, j] ∪ [s, e]|`, a span `[i, j]` holding
    the `j - i + 1` clips `i..j` (as `metrics.temporal.inclusive_clip_iou`; computed here so
    that the data layer depends on nothing above it). Example: GT `[5, 8]` → `[5,8]`,
    `[4,8]`, `[5,9]` (0.8), `[5,7]`, `[6,8]` (0.75), not `[4,9]` (0.667). No length window
    applies (the rule is about overlap only). `inference.spans` re-exports it.

    Returns:
        `[P, 2]` int64 `(i, j)`, the GT span first, then the others sorted by `(i, j)`.
    """
    s, e = int(gt[0]), int(gt[1])
    if not 0 <= s <= e < num_clips:
        raise ValueError(f"GT span {gt} is not inside a video of {num_clips} clips")
    starts, ends = np.triu_indices(num_clips)  # every span i <= j, sorted by (i, j)
    inter = np.maximum(0, np.minimum(ends, e) - np.maximum(starts, s) + 1)
    union = (ends - starts + 1) + (e - s + 1) - inter
    iou = inter / union
    keep = (iou > iou_threshold) & ~((starts == s) & (ends == e))
    others = np.stack([starts[keep], ends[keep]], axis=1).astype(np.int64)
    return np.concatenate([np.array([[s, e]], dtype=np.int64), others], axis=0)


# --------------------------------------------------------------------------------------------
# The ranking file, aligned with a split
# --------------------------------------------------------------------------------------------


class AlignedRanking:
    """A split's ranking-file lists re-indexed onto the split (SPEC §6.1 output).

    Attributes:
        video_idx: `[Q, k]` int64, row q = the split's query q, entries = positions in
            `split.video_ids`, best first.
        scores: `[Q, k]` float32 retrieval scores `s(q, V)` (Eq. 6), best first.
    """

    def __init__(self, video_idx: np.ndarray, scores: np.ndarray) -> None:
        self.video_idx = video_idx
        self.scores = scores

    @property
    def k(self) -> int:
        return int(self.video_idx.shape[1])


def align_ranking(ranking: SplitRanking, split: VcmrSplit, path: str | Path) -> AlignedRanking:
    """Map a ranking file's split onto `split` by query id and video name.

    Raises DataError (naming `path`) when a query of the split has no row, or a ranked video is
    not a video of the split (e.g. the file came from another corpus or split).
    """
    position = split.video_position()
    try:
        video_map = np.array([position[v] for v in ranking.video_names], dtype=np.int64)
    except KeyError as err:
        raise DataError(
            path,
            f"split {split.name!r}: ranked video {err.args[0]!r} is not a video of {split.source}",
            "was the ranking file made on the same corpus?",
        ) from None
    rows = np.empty(len(split.queries), dtype=np.int64)
    for qi, query in enumerate(split.queries):
        try:
            rows[qi] = ranking.row(query.query_id)
        except KeyError:
            raise DataError(
                path,
                f"split {split.name!r}: query {query.query_id!r} of {split.source} has no "
                "ranking row",
            ) from None
    return AlignedRanking(video_map[ranking.video_idx[rows]], ranking.scores[rows])


def sample_negatives(
    candidates: np.ndarray, gt_video: int, n_neg: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """`n_neg` videos drawn uniformly without replacement from `candidates` minus `gt_video`.

    SPEC §5: negatives come from the retriever's top-100, the GT video excluded. When fewer
    than `n_neg` candidates remain (tiny corpora) they are drawn with replacement, so every
    item has the same number of videos. No candidate at all is an error.
    """
    pool = candidates[candidates != gt_video]
    if len(pool) == 0:
        raise ValueError(f"no negative candidates besides the GT video {gt_video}")
    if len(pool) >= n_neg:
        pick = torch.randperm(len(pool), generator=generator)[:n_neg]
    else:
        pick = torch.randint(len(pool), (n_neg,), generator=generator)
    return pool[pick.numpy()]


# --------------------------------------------------------------------------------------------
# Datasets and collates
# --------------------------------------------------------------------------------------------


class VcmrLocalizerTrainDataset(LabelledQueryDataset):
    """Item = one labelled query, its GT video (slot 0) and `n_neg` sampled negatives (SPEC §5).

    Item keys: query_index, tokens `[N, Dq]`, videos `[1 + n_neg]` (split positions, GT first),
    visual / subtitle / sub_mask lists (one per video), span `(s, e)` inclusive clips in the GT
    video, pos_spans `[S, 2]` adversarial positives (GT span first, S <= adv_max_pos).
    """

    def __init__(
        self,
        corpus: VcmrCorpus,
        split: VcmrSplit,
        ranking: AlignedRanking,
        n_neg: int = 4,
        neg_pool: int = 100,
        adv_iou: float = 0.7,
        adv_max_pos: int | None = 16,
    ) -> None:
        super().__init__(corpus, split)
        self.ranking = ranking
        self.n_neg = n_neg
        self.neg_pool = neg_pool
        self.adv_iou = adv_iou
        self.adv_max_pos = adv_max_pos

    def negatives(self, index: int) -> np.ndarray:
        """A fresh draw of the item's negative videos (split positions)."""
        qi = int(self.indices[index])
        gt = int(self.split.query_video[qi])
        return sample_negatives(self.ranking.video_idx[qi, : self.neg_pool], gt, self.n_neg)

    def __getitem__(self, index: int) -> dict[str, Any]:
        qi = int(self.indices[index])
        query = self.split.queries[qi]
        gt = int(self.split.query_video[qi])
        videos = [gt, *(int(v) for v in self.negatives(index))] if self.n_neg > 0 else [gt]
        inputs = [self.corpus.video_inputs(self.split.video_ids[v]) for v in videos]
        span = self.corpus.span_label(query, inputs[0])
        positives = adversarial_span_positives(span, inputs[0].num_clips, self.adv_iou)
        cap = self.adv_max_pos
        if cap is not None and len(positives) > cap:  # keep the GT span, a fresh subset
            rest = 1 + torch.randperm(len(positives) - 1)[: cap - 1].numpy()
            positives = positives[np.concatenate([[0], np.sort(rest)])]
        return {
            "query_index": qi,
            "tokens": self.corpus.query_input(query.query_id),
            "videos": videos,
            "visual": [v.visual for v in inputs],
            "subtitle": [v.subtitle for v in inputs],
            "sub_mask": [v.sub_mask for v in inputs],
            "span": span,
            "pos_spans": positives,
        }


def collate_localizer_batch(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Localizer training batch of B queries × K = 1 + n_neg videos (GT first).

    Query side: query_index [B], query_tokens [B, N, Dq], query_mask [B, N], span [B, 2]
    (inclusive clips in the GT video), pos_spans [B, S, 2] + pos_mask [B, S] (adversarial
    positives, padded), video_index [B, K] (split positions). Pair side, P = B·K rows in
    query-major order (row b·K + k = video k of query b): visual [P, L, Dv], subtitle
    [P, L, Ds], clip_mask [P, L], sub_mask [P, L].
    """
    visual, clip_mask = pad_sequences([v for it in items for v in it["visual"]])
    subtitle, _ = pad_sequences([s for it in items for s in it["subtitle"]])
    sub_mask = torch.zeros(clip_mask.shape, dtype=torch.bool)
    for p, mask in enumerate(m for it in items for m in it["sub_mask"]):
        sub_mask[p, : len(mask)] = torch.from_numpy(np.asarray(mask) > 0)
    tokens, token_mask = pad_sequences([it["tokens"] for it in items])
    num_pos = max(len(it["pos_spans"]) for it in items)
    pos_spans = torch.zeros(len(items), num_pos, 2, dtype=torch.long)
    pos_mask = torch.zeros(len(items), num_pos, dtype=torch.bool)
    for b, it in enumerate(items):
        pos_spans[b, : len(it["pos_spans"])] = torch.from_numpy(it["pos_spans"])
        pos_mask[b, : len(it["pos_spans"])] = True
    return {
        "query_index": torch.tensor([it["query_index"] for it in items], dtype=torch.long),
        "video_index": torch.tensor([it["videos"] for it in items], dtype=torch.long),
        "query_tokens": tokens,
        "query_mask": token_mask,
        "span": torch.tensor([it["span"] for it in items], dtype=torch.long),
        "pos_spans": pos_spans,
        "pos_mask": pos_mask,
        "visual": visual,
        "subtitle": subtitle,
        "clip_mask": clip_mask,
        "sub_mask": sub_mask,
    }


def video_duration(
    split: VcmrSplit, index: int, num_clips: int, scale: float, clip: float
) -> float:
    """A video's duration in seconds; where the split does not know it, the clip grid's end."""
    duration = float(split.durations[index])
    return num_clips * scale * clip if math.isnan(duration) else duration


class VcmrLocalizerEvalVideoDataset(VcmrVideoDataset):
    """Evaluation side: every video of a split once, with its duration and pooling scale."""

    def item(self, index: int, video: Any) -> dict[str, Any]:
        return {
            **super().item(index, video),
            "scale": video.scale,
            "duration": video_duration(
                self.split, index, video.num_clips, video.scale, self.corpus.clip_seconds
            ),
        }


def collate_localizer_videos(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """`collate_vcmr_videos` plus scale [V] and duration [V] (float64), to decode seconds."""
    batch = collate_vcmr_videos(items)
    batch["scale"] = torch.tensor([it["scale"] for it in items], dtype=torch.float64)
    batch["duration"] = torch.tensor([it["duration"] for it in items], dtype=torch.float64)
    return batch


class VcmrLocalizerEvalQueryDataset(VcmrQueryDataset):
    """Evaluation side: every query of a split with its retrieved videos (SPEC §6.1–§6.2).

    Item keys: as `VcmrQueryDataset` (query_index, video_index = GT position or −1,
    query_type, tokens) plus topk_video / topk_score `[k_videos]` (the videos the localizer
    runs on, with `s(q, V)`) and vr_video / vr_score `[k_rank]` (the full VR list).
    """

    def __init__(
        self, corpus: VcmrCorpus, split: VcmrSplit, ranking: AlignedRanking, k_videos: int = 10
    ) -> None:
        super().__init__(corpus, split)
        self.ranking = ranking
        self.k_videos = min(k_videos, ranking.k)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            **super().__getitem__(index),
            "topk_video": self.ranking.video_idx[index, : self.k_videos],
            "topk_score": self.ranking.scores[index, : self.k_videos],
            "vr_video": self.ranking.video_idx[index],
            "vr_score": self.ranking.scores[index],
        }


def collate_localizer_queries(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """`collate_vcmr_queries` plus topk_video [B, k] long, topk_score [B, k] float32,
    vr_video [B, k_rank] long, vr_score [B, k_rank] float32."""
    batch = collate_vcmr_queries(items)
    for key, dtype in (
        ("topk_video", torch.long),
        ("topk_score", torch.float32),
        ("vr_video", torch.long),
        ("vr_score", torch.float32),
    ):
        batch[key] = torch.as_tensor(np.stack([it[key] for it in items]), dtype=dtype)
    return batch


# --------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------


class VcmrLocalizerDataModule(VcmrRetrieverDataModule):
    """PREM localizer data (SPEC §5–§6): the retriever datamodule's corpus and splits, plus the
    retriever's ranking file.

    Args (beyond `VcmrRetrieverDataModule`'s, which give the corpus):
        ranking_file: the retriever run's `rankings.h5` (required; the stage-wise pipeline
            passes `<retriever run>/rankings.h5`).
        n_neg: negative videos per training query (SPEC §5: TVR 4, DiDeMo 2).
        neg_pool: negatives are drawn from the top `neg_pool` retrieved videos (100).
        k_videos: videos the localizer runs on per evaluation query (SPEC §6.2: 10).
        adv_iou: IoU above which a span of the GT video is an adversarial positive (0.7).
        adv_max_pos: positives kept per query (GT span + a random subset; bounds memory);
            None keeps every one (SPEC §5). Default 16: [decision], docs/prvr_ablations.md.
        batch_size: training queries a batch (SPEC §5: 32).
    """

    def __init__(
        self,
        ranking_file: str | None = None,
        n_neg: int = 4,  # SPEC §5: TVR 4, DiDeMo 2
        neg_pool: int = 100,  # SPEC §5: the retriever's top-100
        k_videos: int = 10,  # SPEC §6.2
        adv_iou: float = 0.7,  # SPEC §5
        adv_max_pos: int | None = 16,
        batch_size: int = 32,  # SPEC §5 / PREM §4.2
        eval_batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        if n_neg < 0 or k_videos < 1:
            raise ValueError(f"need n_neg >= 0 and k_videos >= 1, got {n_neg}, {k_videos}")
        self.ranking_file = ranking_file
        self.n_neg = n_neg
        self.neg_pool = neg_pool
        self.k_videos = k_videos
        self.adv_iou = adv_iou
        self.adv_max_pos = adv_max_pos
        self.rankings: dict[str, AlignedRanking] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.rankings:
            return
        super().setup(stage)
        if self.ranking_file is None:
            raise DataError(None, "data.ranking_file is not set", "the retriever's rankings.h5")
        path = require_exists(self.ranking_file, "ranking file (data.ranking_file)")
        available = ranking_splits(path)
        for name, split in self.all_splits().items():
            required = name in ("train", "val") or split.labelled
            if name not in available:
                if required:
                    raise DataError(
                        path, f"split {name!r} not found (splits: {available})", "rerun the ranker"
                    )
                continue
            self.rankings[name] = align_ranking(read_rankings(path, name), split, path)

    @property
    def test_split(self) -> str:
        """The split `test_dataloader` evaluates: test when it has rankings, else val."""
        return "test" if "test" in self.rankings and "test" in self.all_splits() else "val"

    def train_dataset(self) -> VcmrLocalizerTrainDataset:
        assert self.corpus is not None
        return VcmrLocalizerTrainDataset(
            self.corpus,
            self.splits["train"],
            self.rankings["train"],
            self.n_neg,
            self.neg_pool,
            self.adv_iou,
            self.adv_max_pos,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), self.batch_size, True, collate_localizer_batch)

    def video_loader(self, split: str) -> DataLoader:
        """Every video of `split` in index order (the localizer's video-encoding cache)."""
        assert self.corpus is not None
        data = self.all_splits()[split]
        dataset = VcmrLocalizerEvalVideoDataset(self.corpus, data)
        return self._loader(dataset, self.eval_batch_size, False, collate_localizer_videos)

    def query_loader(self, split: str) -> DataLoader:
        """Every query of `split` with its top-k videos and VR list, in index order."""
        assert self.corpus is not None
        if split not in self.rankings:
            raise DataError(self.ranking_file, f"split {split!r} not found in the ranking file")
        data = self.all_splits()[split]
        dataset = VcmrLocalizerEvalQueryDataset(
            self.corpus, data, self.rankings[split], self.k_videos
        )
        return self._loader(dataset, self.eval_batch_size, False, collate_localizer_queries)

    def split_loaders(self, split: str) -> tuple[DataLoader, DataLoader]:
        """(videos loader, queries loader) of a split, as the retriever datamodule's."""
        return self.video_loader(split), self.query_loader(split)

    def val_dataloader(self) -> DataLoader:
        """The val queries; the LightningModule encodes the videos itself (once per epoch)."""
        return self.query_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.query_loader(self.test_split)
