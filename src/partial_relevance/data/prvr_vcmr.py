"""PRVR view of a VCMR corpus: the PRVR framework as the first stage of VCMR (SPEC §3, §6.1).

PRVR is, by definition, the task of PREM's first stage: find the videos a query is partially
relevant to. This module lets the PRVR models (`models.prvr`) train and rank on a VCMR corpus
(TVR / DiDeMo layout, or the synthetic VCMR corpus) through the **same** corpus and stores as
the PREM retriever (`data.vcmr.VcmrCorpus`, `VcmrSplit`): nothing is copied or re-read
through another loader, so the ranking the PRVR model writes names exactly the queries and
videos the localizer's datamodule aligns it with.

From each VCMR video (`VcmrCorpus.video_inputs`: ≤ 100 clips of 1.5 s, rows L2-normalised):
- the **frame branch** reads the clips as frames (`prvr_video_inputs`: kept as they are up to
  `max_frames`, mean-pooled beyond, L2-normalised per row, SPEC §1.3);
- the **moment branch** reads the same clips mean-pooled to `T_m = num_moments` (32);
- the **queries** come from the VCMR query store (`VcmrCorpus.query_input`: ≤ 30 tokens).

`subtitle_mode` (**[decision]**, a switch): `ignore` (default) feeds the visual clips only, as
the PRVR paper's visual stream does (its TVR features have no subtitles); `concat` feeds
`[visual ; subtitle]` per clip (a clip without a subtitle has a zero subtitle half), so the
video dim is `visual_dim + subtitle_dim`. Adding the two streams is not offered: their dims
differ (TVR 4352 vs 768) and a sum needs learned projections, i.e. a model change.

Batches have the layout of `data.prvr` (video-centric training items: a video with all its
queries, SPEC §3 Batching), so `PrvrLitModule` trains on them unchanged; evaluation loaders
are `split_loaders(split)` (videos, then queries) like the retriever datamodule's, and
`all_splits()` names every split a first stage ranks (the labelled ones and TVR test_public).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from partial_relevance.data.collate import PrebuiltBatch, SplitDataset, eval_loaders
from partial_relevance.data.errors import DataError
from partial_relevance.data.preprocess import prvr_video_inputs
from partial_relevance.data.prvr import PrvrVideoDataset, collate_queries, collate_videos
from partial_relevance.data.vcmr import (
    VcmrCorpus,
    VcmrQueryDataset,
    VcmrRetrieverDataModule,
    VcmrSplit,
)

SUBTITLE_MODES = ("ignore", "concat")


def check_subtitle_mode(mode: str, name: str = "subtitle_mode") -> str:
    """`mode` if it is one of `SUBTITLE_MODES`, else a ValueError naming `name`."""
    if mode not in SUBTITLE_MODES:
        raise ValueError(f"{name} must be one of {SUBTITLE_MODES}, got {mode!r}")
    return mode


def prvr_clip_features(
    visual: np.ndarray, subtitle: np.ndarray, sub_mask: np.ndarray, mode: str = "ignore"
) -> np.ndarray:
    """The per-clip feature the PRVR branches read: `[L, Dv]` (`ignore`) or `[L, Dv + Ds]`
    (`concat`: the subtitle half zeroed where the clip has no subtitle)."""
    if check_subtitle_mode(mode) == "ignore":
        return visual
    sub = subtitle * (np.asarray(sub_mask)[:, None] > 0)
    return np.concatenate([visual, sub.astype(visual.dtype)], axis=1)


class PrvrVcmrView:
    """PRVR inputs of one VCMR corpus: moments `[T_m, D]`, frames `[<= max_frames, D]`, query
    tokens; `D` = the visual dim (`ignore`) or visual + subtitle (`concat`)."""

    def __init__(
        self,
        corpus: VcmrCorpus,
        subtitle_mode: str = "ignore",
        num_moments: int = 32,
        max_frames: int = 128,
    ) -> None:
        self.corpus = corpus
        self.subtitle_mode = check_subtitle_mode(subtitle_mode)
        self.num_moments = num_moments
        self.max_frames = max_frames

    @property
    def video_dim(self) -> int:
        extra = self.corpus.subtitle_dim if self.subtitle_mode == "concat" else 0
        return self.corpus.visual_dim + extra

    def video_frames(self, video_id: str) -> np.ndarray:
        """The clips the PRVR branches read as frames, `[L, D]` (`prvr_clip_features`)."""
        video = self.corpus.video_inputs(video_id)
        return prvr_clip_features(video.visual, video.subtitle, video.sub_mask, self.subtitle_mode)

    def video_length(self, video_id: str) -> None:
        """Unknown before the read (the clips are aligned with the subtitles and pooled)."""
        return None

    def video_inputs(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(moments `[T_m, D]`, frames `[min(L, max_frames), D]`), L2-normalised after pooling."""
        return prvr_video_inputs(self.video_frames(video_id), self.num_moments, self.max_frames)

    def query_input(self, query_id: str) -> np.ndarray:
        return self.corpus.query_input(query_id)


class PrvrVcmrTrainDataset(SplitDataset):
    """Item = one video of the split with every one of its labelled queries (SPEC §3), read
    through a `PrvrVcmrView`."""

    def __init__(self, view: PrvrVcmrView, split: VcmrSplit) -> None:
        super().__init__(view, split)
        queries_of_video: dict[int, list[int]] = {}
        for qi, vi in enumerate(split.query_video):
            if vi >= 0:
                queries_of_video.setdefault(int(vi), []).append(qi)
        if not queries_of_video:
            raise DataError(split.source, f"split {split.name!r} has no labelled queries")
        self.videos = sorted(queries_of_video)  # split video indices with >= 1 query
        self.queries_of_video = queries_of_video

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vi = self.videos[index]
        moments, frames = self.corpus.video_inputs(self.split.video_ids[vi])
        queries = self.split.queries
        return {
            "video_index": vi,
            "moments": moments,
            "frames": frames,
            "queries": [
                self.corpus.query_input(queries[q].query_id) for q in self.queries_of_video[vi]
            ],
            "query_index": list(self.queries_of_video[vi]),
        }


class PrvrVcmrVideoDataset(PrvrVideoDataset):
    """Evaluation side: every video of a split once (with or without queries), split order,
    read through a `PrvrVcmrView` (`PrvrVcmrVideoDataset(view, split)`)."""


class PrvrVcmrQueryDataset(VcmrQueryDataset):
    """Evaluation side: every query of a split with its GT video (−1 unlabelled) and type,
    read through a `PrvrVcmrView` (`PrvrVcmrQueryDataset(view, split)`; the view's query
    tokens are the corpus's)."""


def collate_prvr_vcmr_videos(items: list[dict[str, Any]] | PrebuiltBatch) -> dict[str, Any]:
    """`data.prvr.collate_videos` plus, in training, `query_index [n]` (split query ids)."""
    batch = collate_videos(items)
    if isinstance(items, PrebuiltBatch):  # evaluation videos: no queries
        return batch
    if any(it["queries"] for it in items):
        batch["query_index"] = torch.tensor(
            [q for it in items for q in it.get("query_index", [])], dtype=torch.long
        )
    return batch


def collate_prvr_vcmr_queries(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`data.prvr.collate_queries` plus `query_type [n]` (`QUERY_TYPE_CODES`, −1 unknown)."""
    batch = collate_queries(items)
    batch["query_type"] = torch.tensor([it["query_type"] for it in items], dtype=torch.long)
    return batch


class PrvrVcmrDataModule(VcmrRetrieverDataModule):
    """PRVR datamodule over a VCMR corpus: the retriever datamodule's corpus, splits and
    sources (every argument of `VcmrRetrieverDataModule`), PRVR batches.

    Extra arguments: `subtitle_mode` (`ignore` | `concat`, see the module docstring),
    `num_moments` (T_m = 32, PRVR §4.1.3), `max_frames` (128, SPEC §1.3), `video_dim` (the dim
    the PRVR model is built for, checked at setup against the view: `visual_dim`, or
    `visual_dim + subtitle_dim` with `concat`), `eval_video_batch_size`. `batch_size` counts
    **videos** (each with all its queries, SPEC §3 Batching).
    """

    def __init__(
        self,
        *args: Any,
        subtitle_mode: str = "ignore",
        num_moments: int = 32,
        max_frames: int = 128,
        video_dim: int | None = None,
        eval_video_batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.subtitle_mode = check_subtitle_mode(subtitle_mode, "data.subtitle_mode")
        self.num_moments = num_moments
        self.max_frames = max_frames
        self.video_dim = video_dim
        self.eval_video_batch_size = eval_video_batch_size
        self.view: PrvrVcmrView | None = None

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.view is not None:
            return
        assert self.corpus is not None
        self.view = PrvrVcmrView(self.corpus, self.subtitle_mode, self.num_moments, self.max_frames)
        if self.video_dim is not None and int(self.video_dim) != self.view.video_dim:
            raise ValueError(
                f"data.video_dim={self.video_dim} but subtitle_mode={self.subtitle_mode!r} gives "
                f"{self.view.video_dim}-d clips (visual {self.corpus.visual_dim}"
                + (
                    f" + subtitle {self.corpus.subtitle_dim}"
                    if self.subtitle_mode == "concat"
                    else ""
                )
                + "); set data.video_dim to it"
            )

    def train_dataloader(self) -> DataLoader:
        assert self.view is not None
        dataset = PrvrVcmrTrainDataset(self.view, self.splits["train"])
        return self._loader(dataset, self.batch_size, True, collate_prvr_vcmr_videos)

    def split_loaders(self, split: str) -> tuple[DataLoader, DataLoader]:
        """(videos loader, queries loader) of any loaded split, in split order."""
        assert self.view is not None
        data = self.loaded_split(split)
        return eval_loaders(
            PrvrVcmrVideoDataset(self.view, data),
            PrvrVcmrQueryDataset(self.view, data),
            video_batch_size=self.eval_video_batch_size,
            query_batch_size=self.eval_batch_size,
            collate_videos=collate_prvr_vcmr_videos,
            collate_queries=collate_prvr_vcmr_queries,
            num_workers=self.num_workers,
        )
