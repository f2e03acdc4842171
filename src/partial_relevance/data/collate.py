"""Loaders, split datasets and batching helpers shared by every datamodule (PRVR and VCMR)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


def pad_sequences(arrays: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Stack `[n_i, D]` arrays into `[B, max n, D]` zero-padded plus a bool mask `[B, max n]`."""
    lengths = [len(a) for a in arrays]
    dim = arrays[0].shape[-1]
    out = np.zeros((len(arrays), max(lengths), dim), dtype=np.float32)
    mask = np.zeros((len(arrays), max(lengths)), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


class PrebuiltBatch(dict):
    """A batch's tensors that a dataset's `__getitems__` built whole (each item written
    straight into the batch arrays, with no per-item arrays to copy); the collate functions
    hand it on unchanged. The DataLoader passes what `__getitems__` returns to `collate_fn`."""


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    num_workers: int,
    drop_last: bool = False,
) -> DataLoader:
    """The DataLoader every datamodule builds: worker processes kept alive between epochs,
    page-locked batches on a GPU machine (async host->GPU copies)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


class SplitDataset(Dataset):
    """A dataset over one split, read through `corpus` (a corpus, or a view of one that has
    its `video_inputs` / `query_input`); items are visited in `order` (default: split order)
    and always carry their split position, so consumers never depend on the order."""

    def __init__(self, corpus: Any, split: Any, order: list[int] | None = None) -> None:
        self.corpus = corpus
        self.split = split
        self.order = order

    def split_index(self, position: int) -> int:
        """The split position of the item at loader `position`."""
        return position if self.order is None else self.order[position]


class SplitVideoDataset(SplitDataset):
    """One item per video of the split (`split.video_ids`)."""

    def __len__(self) -> int:
        return len(self.split.video_ids)


class SplitQueryDataset(SplitDataset):
    """One item per query of the split (`split.queries`)."""

    def __len__(self) -> int:
        return len(self.split.queries)


def eval_loaders(
    videos: SplitVideoDataset,
    queries: SplitQueryDataset,
    *,
    video_batch_size: int,
    query_batch_size: int,
    collate_videos: Callable[[list[dict[str, Any]]], dict[str, Any]],
    collate_queries: Callable[[list[dict[str, Any]]], dict[str, Any]],
    num_workers: int,
) -> tuple[DataLoader, DataLoader]:
    """(videos loader, queries loader) of one split's evaluation, unshuffled: the pair every
    evaluating datamodule hands the LightningModule (it encodes both, then scores the matrix)."""
    return (
        make_loader(videos, video_batch_size, False, collate_videos, num_workers),
        make_loader(queries, query_batch_size, False, collate_queries, num_workers),
    )
