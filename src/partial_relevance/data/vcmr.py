"""VCMR corpus, datasets and datamodules (TVR / DiDeMo / synthetic; SPEC §1, §4).

One corpus abstraction, `VcmrCorpus`, holds the feature stores of a VCMR dataset (video, an
optional subtitle store with `<vid>-mask` entries, query tokens) and applies the XML/HERO
preprocessing of SPEC §1.3: at most 100 clips a video (longer videos are mean-pooled to 100
and the scale recorded), at most 30 query tokens, every visual / subtitle / query row
L2-normalised, moment labels on the 1.5 s grid with an inclusive end (`clip_span_label`).
A split (`VcmrSplit`) is the queries of one annotation file plus the split's video list (from
`video2dur_idx` when given: every video of the split is a retrieval candidate, with or without
queries; else the annotated videos in order of first appearance).

Datasets are views of the corpus:
- `VcmrRetrieverTrainDataset`: one item per labelled query: its tokens, its video's clips,
  subtitles and masks, and its inclusive clip span (the retriever's strong / weak relevant
  content, PREM §3.3);
- `VcmrVideoDataset` / `VcmrQueryDataset`: the evaluation side, every video of a split once
  and every query of a split (VR scores the full query × video matrix, SPEC §6.1).

`collate_retriever_batch` de-duplicates the videos of a training batch: two queries of the same
video share one column of the in-batch score matrix (SPEC §4: a video is never a negative of
its own query). A later localizer datamodule adds its own dataset over the same corpus (GT
video + negatives sampled from the retriever's ranking file).

DiDeMo has no subtitles: with no subtitle store every video gets zero subtitle features of
`subtitle_dim` and an all-zero subtitle mask (SPEC §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from partial_relevance.data.annotations import (
    Query,
    read_didemo_raw,
    read_didemo_tvr_style,
    read_tvr_jsonl,
    read_video2dur_idx,
    videos_in_order,
)
from partial_relevance.data.collate import (
    SplitDataset,
    SplitQueryDataset,
    SplitVideoDataset,
    eval_loaders,
    make_loader,
    pad_sequences,
)
from partial_relevance.data.errors import DataError, require_exists
from partial_relevance.data.preprocess import (
    CLIP_SECONDS,
    clip_span_label,
    l2_normalize_rows,
    vcmr_video_inputs,
)
from partial_relevance.data.stores import (
    FeatureStore,
    open_store,
    require_keys,
    require_nonempty,
)
from partial_relevance.data.synthetic import SPLITS, SyntheticConfig, ensure_corpus
from partial_relevance.metrics.vcmr import QUERY_TYPES

ANNOTATION_FORMATS = ("tvr", "didemo_raw", "didemo_jsonl")
SPLIT_NAMES = ("train", "val", "test")
# TVR query types -> the code batches carry (their index in metrics.vcmr.QUERY_TYPES, the
# official order); −1 where a dataset has none.
QUERY_TYPE_CODES = {name: code for code, name in enumerate(QUERY_TYPES)}


# --------------------------------------------------------------------------------------------
# Corpus and splits
# --------------------------------------------------------------------------------------------


@dataclass
class VcmrSplit:
    """The queries of one split and the split's candidate videos.

    Attributes:
        name: "train" | "val" | "test".
        source: the annotation file (named in errors).
        queries: one `Query` per annotation line / item.
        video_ids: the split's videos, the VR candidates (index = position in this list).
        query_video: `[Q]` int64 index of each query's GT video in `video_ids`, −1 where the
            split has no labels (TVR test_public).
        durations: `[V]` float64 seconds, NaN where unknown.
    """

    name: str
    source: Path
    queries: list[Query]
    video_ids: list[str]
    query_video: np.ndarray
    durations: np.ndarray

    @property
    def labelled(self) -> bool:
        """True when every query names its video (VR metrics and training are possible)."""
        return bool(len(self.query_video)) and bool((self.query_video >= 0).all())

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def video_position(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.video_ids)}


@dataclass
class VideoInputs:
    """One preprocessed video (SPEC §1.3): visual `[L, Dv]`, subtitle `[L, Ds]`, subtitle mask
    `[L]` (1 where a subtitle overlaps the clip) and `scale` (original clips per kept clip)."""

    visual: np.ndarray
    subtitle: np.ndarray
    sub_mask: np.ndarray
    scale: float

    @property
    def num_clips(self) -> int:
        return len(self.visual)


def _store_from_config(
    spec: dict[str, Any] | None, expected_dim: int | None, what: str
) -> FeatureStore | None:
    """Open a store from `{format, path, options}` (options: e.g. `group`, `id2nframe`)."""
    if spec is None:
        return None
    spec = dict(spec)
    if "format" not in spec or "path" not in spec or spec["path"] is None:
        raise ValueError(f"data.{what}: expected {{format, path[, options]}}, got {spec}")
    options = dict(spec.get("options") or {})
    store = open_store(str(spec["format"]), spec["path"], **options)
    store.check_dim(expected_dim, what.replace("_store", ""))
    return store


class VcmrCorpus:
    """A VCMR dataset's feature stores and preprocessing (SPEC §1.2–§1.3).

    Args:
        video_store: clip features `vid_name -> [n_clips, Dv]`.
        sub_store: subtitle features `vid_name -> [n_clips, Ds]` (with `-mask` entries for
            HDF5; masks are derived from nonzero rows otherwise) or None (DiDeMo): zeros and
            mask 0.
        query_store: token features `query_id -> [n_tokens, Dq]`.
        subtitle_dim: Ds used for the zero subtitle stream when `sub_store` is None.
        max_clips: videos longer than this are mean-pooled to it (SPEC §1.3: 100).
        max_words: query tokens kept (SPEC §1.3: 30).
        clip_seconds: the feature grid (1.5 s for TVR / DiDeMo).
        cache_videos: keep preprocessed videos in memory (per process; small corpora only).
    """

    def __init__(
        self,
        video_store: FeatureStore,
        sub_store: FeatureStore | None,
        query_store: FeatureStore,
        subtitle_dim: int | None = None,
        max_clips: int = 100,
        max_words: int = 30,
        clip_seconds: float = CLIP_SECONDS,
        cache_videos: bool = False,
    ) -> None:
        self.video_store = video_store
        self.sub_store = sub_store
        self.query_store = query_store
        if sub_store is not None:
            subtitle_dim = sub_store.dim
        if subtitle_dim is None:
            raise ValueError("without a subtitle store, subtitle_dim must be given (zero stream)")
        self.subtitle_dim = int(subtitle_dim)
        self.max_clips = max_clips
        self.max_words = max_words
        self.clip_seconds = clip_seconds
        self.cache_videos = cache_videos
        self._cache: dict[str, VideoInputs] = {}

    @classmethod
    def from_config(
        cls,
        video_store: dict[str, Any],
        sub_store: dict[str, Any] | None,
        query_store: dict[str, Any],
        visual_dim: int | None = None,
        subtitle_dim: int | None = None,
        query_dim: int | None = None,
        **kwargs: Any,
    ) -> VcmrCorpus:
        """Open the three stores from `{format, path, options}` dicts, checking every dim
        against the config (a mismatch raises DataError naming the file)."""
        video = _store_from_config(video_store, visual_dim, "video_store")
        sub = _store_from_config(sub_store, subtitle_dim, "sub_store")
        query = _store_from_config(query_store, query_dim, "query_store")
        assert video is not None and query is not None
        return cls(video, sub, query, subtitle_dim=subtitle_dim, **kwargs)

    @property
    def visual_dim(self) -> int:
        return self.video_store.dim

    @property
    def query_dim(self) -> int:
        return self.query_store.dim

    # ------------------------------------------------------------------ splits
    def load_split(
        self,
        name: str,
        annotations: str | Path,
        annotation_format: str = "tvr",
        video2dur: dict[str, dict[str, tuple[float, int]]] | None = None,
        video2dur_split: str | None = None,
        video2dur_path: str | Path | None = None,
    ) -> VcmrSplit:
        """Read one annotation file and check every query and video has features.

        Videos come from `video2dur[video2dur_split]` when given (TVR: every video of the
        split, in the file's order), else from the annotations in order of first appearance.
        A labelled query whose video is not in that list raises DataError naming both files.
        """
        if annotation_format not in ANNOTATION_FORMATS:
            raise ValueError(
                f"annotation_format must be one of {ANNOTATION_FORMATS}, got {annotation_format!r}"
            )
        path = require_exists(annotations, f"{name} annotation file")
        if annotation_format == "tvr":
            queries = read_tvr_jsonl(path)
        elif annotation_format == "didemo_jsonl":
            queries = read_didemo_tvr_style(path)
        else:
            durations = None
            if video2dur is not None and video2dur_split is not None:
                durations = {v: d for v, (d, _) in video2dur.get(video2dur_split, {}).items()}
            queries = read_didemo_raw(path, durations)

        if video2dur is not None and video2dur_split is not None:
            if video2dur_split not in video2dur:
                raise DataError(
                    video2dur_path,
                    f"split {video2dur_split!r} not found (splits: {sorted(video2dur)})",
                )
            entries = video2dur[video2dur_split]
            video_ids = list(entries)
            durations_arr = np.array([entries[v][0] for v in video_ids], dtype=np.float64)
        else:
            video_ids = videos_in_order(queries)
            first: dict[str, float] = {}
            for q in queries:
                if q.video_id is not None and q.video_id not in first:
                    first[q.video_id] = np.nan if q.duration is None else q.duration
            durations_arr = np.array([first[v] for v in video_ids], dtype=np.float64)
        if not video_ids:
            raise DataError(path, f"split {name!r} has no videos")

        position = {v: i for i, v in enumerate(video_ids)}
        query_video = np.full(len(queries), -1, dtype=np.int64)
        for qi, query in enumerate(queries):
            if query.video_id is None:
                continue
            if query.video_id not in position:
                raise DataError(
                    path,
                    f"desc_id {query.query_id}: video {query.video_id!r} is not in split "
                    f"{video2dur_split!r} of {video2dur_path}",
                )
            query_video[qi] = position[query.video_id]

        require_keys(self.query_store, (q.query_id for q in queries), path)
        require_nonempty(self.query_store, (q.query_id for q in queries), path)
        require_keys(self.video_store, video_ids, path)
        if self.sub_store is not None:
            require_keys(self.sub_store, video_ids, path)
        return VcmrSplit(name, path, queries, video_ids, query_video, durations_arr)

    # ---------------------------------------------------------------- features
    def video_inputs(self, video_id: str) -> VideoInputs:
        """One video, aligned, resampled to <= max_clips and L2-normalised (SPEC §1.3)."""
        cached = self._cache.get(video_id)
        if cached is not None:
            return cached
        visual = self.video_store.get(video_id)
        subtitle = sub_mask = None
        if self.sub_store is not None:
            subtitle = self.sub_store.get(video_id)
            get_mask = getattr(self.sub_store, "get_mask", None)
            sub_mask = get_mask(video_id) if callable(get_mask) else None
            if sub_mask is not None and len(sub_mask) != len(subtitle):
                raise DataError(
                    self.sub_store.path,
                    f"key {video_id + '-mask'!r}: {len(sub_mask)} entries for "
                    f"{len(subtitle)} subtitle clips",
                )
        vis, sub, mask, scale = vcmr_video_inputs(
            visual, subtitle, sub_mask, self.max_clips, video_id
        )
        if self.sub_store is None:  # DiDeMo: zero subtitle stream, fully masked
            sub = np.zeros((len(vis), self.subtitle_dim), dtype=np.float32)
        out = VideoInputs(vis, sub, mask, scale)
        if self.cache_videos:
            self._cache[video_id] = out
        return out

    def query_input(self, query_id: str) -> np.ndarray:
        """Query tokens `[<= max_words, Dq]`, L2-normalised per token (SPEC §1.3)."""
        tokens = self.query_store.get(query_id)
        if tokens.ndim != 2 or len(tokens) == 0:
            raise DataError(
                self.query_store.path,
                f"key {query_id!r}: expected [n_tokens >= 1, D], found {tokens.shape}",
            )
        return l2_normalize_rows(tokens[: self.max_words])

    def span_label(self, query: Query, video: VideoInputs) -> tuple[int, int]:
        """The query's moment as inclusive clip indices on the video's (resampled) grid."""
        if query.span is None:
            raise ValueError(f"query {query.query_id} has no moment label")
        return clip_span_label(
            query.span[0], query.span[1], video.num_clips, self.clip_seconds, video.scale
        )


# --------------------------------------------------------------------------------------------
# Datasets and collate functions
# --------------------------------------------------------------------------------------------


class LabelledQueryDataset(SplitDataset):
    """One item per labelled query of a `VcmrSplit` (`indices`: their split positions); a
    split without any is an error naming its annotation file."""

    def __init__(self, corpus: VcmrCorpus, split: VcmrSplit) -> None:
        super().__init__(corpus, split)
        self.indices = np.flatnonzero(split.query_video >= 0)
        if len(self.indices) == 0:
            raise DataError(split.source, f"split {split.name!r} has no labelled queries")

    def __len__(self) -> int:
        return len(self.indices)


class VcmrRetrieverTrainDataset(LabelledQueryDataset):
    """Item = one labelled query with its GT video's clips and its inclusive clip span."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        qi = int(self.indices[index])
        query = self.split.queries[qi]
        vi = int(self.split.query_video[qi])
        video = self.corpus.video_inputs(self.split.video_ids[vi])
        return {
            "query_index": qi,
            "video_index": vi,
            "tokens": self.corpus.query_input(query.query_id),
            "visual": video.visual,
            "subtitle": video.subtitle,
            "sub_mask": video.sub_mask,
            "span": self.corpus.span_label(query, video),
        }


class VcmrVideoDataset(SplitVideoDataset):
    """Evaluation side: every video of a split (`VcmrCorpus`, `VcmrSplit`), once."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.corpus.video_inputs(self.split.video_ids[index]))

    def item(self, index: int, video: Any) -> dict[str, Any]:
        """The loader item of video `index` from its `VcmrCorpus.video_inputs`."""
        return {
            "video_index": index,
            "visual": video.visual,
            "subtitle": video.subtitle,
            "sub_mask": video.sub_mask,
        }


class VcmrQueryDataset(SplitQueryDataset):
    """Evaluation side: every query of a split with its GT video index (−1 when unlabelled)
    and type code; tokens through `corpus.query_input` (a `VcmrCorpus` or a view of one)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        query = self.split.queries[index]
        return {
            "query_index": index,
            "video_index": int(self.split.query_video[index]),
            "query_type": QUERY_TYPE_CODES.get(query.query_type or "", -1),
            "tokens": self.corpus.query_input(query.query_id),
        }


def _pad_masks(masks: list[np.ndarray], length: int) -> Tensor:
    out = np.zeros((len(masks), length), dtype=bool)
    for i, m in enumerate(masks):
        out[i, : len(m)] = m > 0
    return torch.from_numpy(out)


def collate_vcmr_videos(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Videos -> video_index [V], visual [V, L, Dv], subtitle [V, L, Ds], clip_mask [V, L],
    sub_mask [V, L] (True where a subtitle exists), zero-padded to the longest video."""
    visual, clip_mask = pad_sequences([it["visual"] for it in items])
    subtitle, _ = pad_sequences([it["subtitle"] for it in items])
    return {
        "video_index": torch.tensor([it["video_index"] for it in items], dtype=torch.long),
        "visual": visual,
        "subtitle": subtitle,
        "clip_mask": clip_mask,
        "sub_mask": _pad_masks([it["sub_mask"] for it in items], visual.shape[1]),
    }


def collate_vcmr_queries(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Queries -> query_index [B], video_index [B] (GT, −1 unlabelled), query_type [B]
    (`QUERY_TYPE_CODES`, −1 unknown), query_tokens [B, N, Dq], query_mask [B, N]."""
    tokens, mask = pad_sequences([it["tokens"] for it in items])
    return {
        "query_index": torch.tensor([it["query_index"] for it in items], dtype=torch.long),
        "video_index": torch.tensor([it["video_index"] for it in items], dtype=torch.long),
        "query_type": torch.tensor([it.get("query_type", -1) for it in items], dtype=torch.long),
        "query_tokens": tokens,
        "query_mask": mask,
    }


def collate_retriever_batch(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Retriever training batch with the batch's videos de-duplicated (SPEC §4).

    Query side: query_index [B], query_tokens [B, N, Dq], query_mask [B, N], span [B, 2]
    (inclusive clip indices), query_video [B] (column of the query's GT video among the
    batch's V distinct videos). Video side (V <= B): video_index [V] (split index, the id that
    masks a shared video out of every query's negatives, also across DDP ranks), visual, subtitle,
    clip_mask, sub_mask as `collate_vcmr_videos`.
    """
    column: dict[int, int] = {}
    videos: list[dict[str, Any]] = []
    for it in items:
        if it["video_index"] not in column:
            column[it["video_index"]] = len(videos)
            videos.append(it)
    batch = collate_vcmr_videos(videos)
    batch.update(
        {
            "query_index": torch.tensor([it["query_index"] for it in items], dtype=torch.long),
            "query_video": torch.tensor([column[it["video_index"]] for it in items]),
            "span": torch.tensor([it["span"] for it in items], dtype=torch.long),
        }
    )
    batch["query_tokens"], batch["query_mask"] = pad_sequences([it["tokens"] for it in items])
    return batch


# --------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------


def synthetic_sources(vcmr_root: Path) -> dict[str, Any]:
    """The synthetic corpus's VCMR files (SPEC §1.4), as datamodule arguments."""
    return {
        "splits": {
            s: {
                "annotations": str(vcmr_root / f"synthetic_{s}_release.jsonl"),
                "video2dur_split": s,
            }
            for s in SPLITS
        },
        "video2dur_idx": str(vcmr_root / "synthetic_video2dur_idx.json"),
        "video_store": {"format": "hdf5", "path": str(vcmr_root / "video_feature.h5")},
        "sub_store": {"format": "hdf5", "path": str(vcmr_root / "sub_feature.h5")},
        "query_store": {"format": "hdf5", "path": str(vcmr_root / "query_feature.h5")},
    }


class VcmrRetrieverDataModule(pl.LightningDataModule):
    """PREM retriever data: query-centric training batches, full-corpus VR evaluation.

    Training: batches of `batch_size` queries (SPEC §4: 256), each with its GT video; the
    batch's distinct videos are the in-batch negatives. Validation / test: two loaders, the
    split's videos then its queries (the LightningModule encodes both and scores the full
    matrix at epoch end).

    Sources: either `synthetic: {...}` (a `SyntheticConfig`, generated into `cache_dir` on
    first use and read back through the real readers) or real files: `splits` maps
    train/val/test to `{annotations: path, video2dur_split: name}`, `video2dur_idx` the TVR
    index (null: videos from the annotations), and `video_store`, `sub_store` (null: no
    subtitles, DiDeMo), `query_store` as `{format: hdf5|lmdb|bigfile, path, options: {}}`.
    `visual_dim`, `subtitle_dim`, `query_dim` are checked against the stores.

    `splits` (the attribute) holds the labelled splits (VR metrics possible); a split without
    labels (TVR test_public) is in `unlabelled_splits` and only ranked (`all_splits()`).
    With `synthetic`, `subtitles: false` drops the subtitle store (DiDeMo-like).
    """

    def __init__(
        self,
        splits: dict[str, dict[str, Any]] | None = None,
        video2dur_idx: str | None = None,
        video_store: dict[str, Any] | None = None,
        sub_store: dict[str, Any] | None = None,
        query_store: dict[str, Any] | None = None,
        visual_dim: int | None = None,
        subtitle_dim: int | None = 768,
        query_dim: int | None = None,
        annotation_format: str = "tvr",
        subtitles: bool = True,
        batch_size: int = 256,  # PREM §4.2 / SPEC §4
        eval_batch_size: int = 256,
        num_workers: int = 0,
        max_clips: int = 100,  # SPEC §1.3
        max_words: int = 30,  # SPEC §1.3
        clip_seconds: float = CLIP_SECONDS,
        cache_videos: bool = False,
        drop_last: bool = False,
        synthetic: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        root: str | None = None,  # informational: configs interpolate paths from it
    ) -> None:
        super().__init__()
        if synthetic is None and (splits is None or video_store is None or query_store is None):
            raise ValueError(
                "data: give either `synthetic` or real `splits`, `video_store` and `query_store`"
            )
        self.sources = {
            "splits": None if splits is None else {k: dict(v) for k, v in splits.items()},
            "video2dur_idx": video2dur_idx,
            "video_store": None if video_store is None else dict(video_store),
            "sub_store": None if sub_store is None else dict(sub_store),
            "query_store": None if query_store is None else dict(query_store),
        }
        self.dims = {"visual_dim": visual_dim, "subtitle_dim": subtitle_dim, "query_dim": query_dim}
        self.annotation_format = annotation_format
        self.subtitles = subtitles
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.preprocess = {
            "max_clips": max_clips,
            "max_words": max_words,
            "clip_seconds": clip_seconds,
            "cache_videos": cache_videos,
        }
        self.synthetic = None if synthetic is None else SyntheticConfig(**synthetic)
        self.cache_dir = cache_dir
        self.root = root
        self.corpus: VcmrCorpus | None = None
        self.splits: dict[str, VcmrSplit] = {}
        self.unlabelled_splits: dict[str, VcmrSplit] = {}

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            ensure_corpus(self.cache_dir or ".cache", self.synthetic, progress=False)

    def resolved_sources(self) -> dict[str, Any]:
        """The files to read: the synthetic corpus's when `synthetic` is set, else the config's."""
        if self.synthetic is None:
            return self.sources
        paths = ensure_corpus(self.cache_dir or ".cache", self.synthetic, progress=False)
        sources = synthetic_sources(paths.vcmr_root)
        if not self.subtitles:
            sources["sub_store"] = None
        return sources

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        sources = self.resolved_sources()
        sub_store = sources["sub_store"] if self.subtitles else None
        self.corpus = VcmrCorpus.from_config(
            sources["video_store"],
            sub_store,
            sources["query_store"],
            **self.dims,
            **self.preprocess,
        )
        video2dur = None
        if sources["video2dur_idx"] is not None:
            video2dur = read_video2dur_idx(sources["video2dur_idx"])
        for name, spec in sources["splits"].items():
            if name not in SPLIT_NAMES:
                raise ValueError(f"data.splits: unknown split {name!r}; valid: {SPLIT_NAMES}")
            if spec is None or spec.get("annotations") is None:
                continue
            if name == "test" and not Path(spec["annotations"]).exists():
                continue  # an optional split
            split = self.corpus.load_split(
                name,
                spec["annotations"],
                self.annotation_format,
                video2dur,
                spec.get("video2dur_split"),
                sources["video2dur_idx"],
            )
            (self.splits if split.labelled else self.unlabelled_splits)[name] = split
        for required in ("train", "val"):
            if required not in self.splits:
                raise ValueError(f"data.splits.{required}: a labelled {required} split is needed")

    def all_splits(self) -> dict[str, VcmrSplit]:
        """Every loaded split, labelled or not, in train/val/test order (what gets ranked)."""
        merged = {**self.splits, **self.unlabelled_splits}
        return {name: merged[name] for name in SPLIT_NAMES if name in merged}

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, collate) -> DataLoader:
        drop_last = self.drop_last and shuffle
        return make_loader(dataset, batch_size, shuffle, collate, self.num_workers, drop_last)

    def train_dataloader(self) -> DataLoader:
        assert self.corpus is not None
        dataset = VcmrRetrieverTrainDataset(self.corpus, self.splits["train"])
        return self._loader(dataset, self.batch_size, True, collate_retriever_batch)

    def split_loaders(self, split: str) -> tuple[DataLoader, DataLoader]:
        """(videos loader, queries loader) of any loaded split, in order (no shuffling)."""
        assert self.corpus is not None
        data = self.loaded_split(split)
        return eval_loaders(
            VcmrVideoDataset(self.corpus, data),
            VcmrQueryDataset(self.corpus, data),
            video_batch_size=self.eval_batch_size,
            query_batch_size=self.eval_batch_size,
            collate_videos=collate_vcmr_videos,
            collate_queries=collate_vcmr_queries,
            num_workers=self.num_workers,
        )

    def loaded_split(self, split: str) -> VcmrSplit:
        """A loaded split, labelled or not, by name (KeyError naming the loaded ones)."""
        data = self.all_splits().get(split)
        if data is None:
            raise KeyError(f"split {split!r} not loaded; loaded: {list(self.all_splits())}")
        return data

    def val_dataloader(self) -> list[DataLoader]:
        return list(self.split_loaders("val"))

    def test_dataloader(self) -> list[DataLoader]:
        return list(self.split_loaders("test" if "test" in self.splits else "val"))

    def num_videos(self, split: str) -> int:
        return self.all_splits()[split].num_videos
