"""Batching helpers shared by every datamodule (PRVR and VCMR)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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
