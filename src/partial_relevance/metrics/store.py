"""The evaluation store: per-row tensors (encodings, GT ids) keyed by a global id, gathered
across ranks as torchmetrics `Metric` states with `dist_reduce_fx="cat"`.

Every LightningModule's evaluation encodes the split's videos and queries batch by batch on
each rank; at epoch end `EvalRows.compute()` returns every rank's rows ordered by global id,
with the DistributedSampler's padding duplicates dropped, identical on every rank. Rows may
differ in their other dims between batches and ranks (e.g. a video's number of clips): they
are zero-padded to the largest (masks pad with False), so a padded clip stays masked.
The rank computation itself stays the project's own (`metrics.retrieval`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat


def _pad_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zero-pad every dim of `x` but the first up to `shape[1:]`."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[1:]), reversed(shape[1:]), strict=True):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


def gather_padded(result: Tensor, group: Any | None = None) -> list[Tensor]:
    """All-gather `result` from every rank, padding every dim to the largest over ranks and
    trimming only the first (rows) back: a list of `[rows_r, *max_shape[1:]]`, one per rank,
    so that they concatenate along dim 0."""
    group = group if group is not None else torch.distributed.group.WORLD
    world_size = torch.distributed.get_world_size(group)
    result = result.contiguous()
    local = torch.tensor(result.shape, device=result.device)
    sizes = [torch.zeros_like(local) for _ in range(world_size)]
    torch.distributed.all_gather(sizes, local, group=group)
    largest = torch.stack(sizes).max(dim=0).values
    padded = F.pad(
        result,
        [p for d in reversed(range(result.ndim)) for p in (0, int(largest[d] - result.shape[d]))],
    )
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded, group=group)
    return [g[: int(size[0])] for g, size in zip(gathered, sizes, strict=True)]


class EvalRows(Metric):
    """Rows of named tensors with a global id each, gathered across ranks (cat states).

    `update(ids [r], {name: [r, ...]})` appends a batch; `compute()` returns
    `(ids [R], {name: [R, ...]})` over every rank, sorted by id, each id once. Bool tensors
    travel as uint8 and come back as bool.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__(compute_with_cache=False, dist_sync_fn=gather_padded)
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self._names: list[str] = []
        self._bool: set[str] = set()

    def is_empty(self) -> bool:
        """True before the first `update` (or after `reset`) on this rank."""
        return isinstance(self.ids, list) and not self.ids

    def update(self, ids: Tensor, values: Mapping[str, Tensor]) -> None:  # type: ignore[override]
        for name, value in values.items():
            state = f"rows_{name}"
            if name not in self._names:
                self.add_state(state, default=[], dist_reduce_fx="cat")
                self._names.append(name)
            if value.dtype == torch.bool:
                self._bool.add(name)
                value = value.to(torch.uint8)
            rows: list[Tensor] = getattr(self, state)
            if rows and rows[0].shape[1:] != value.shape[1:]:
                # Keep one shape per state so the list concatenates: pad to the larger.
                shape = tuple(max(a, b) for a, b in zip(rows[0].shape, value.shape, strict=True))
                rows[:] = [_pad_to(r, shape) for r in rows]
                value = _pad_to(value, shape)
            rows.append(value.detach())
        self.ids.append(ids.detach())

    def compute(self) -> tuple[Tensor, dict[str, Tensor]]:
        ids = dim_zero_cat(self.ids)
        order = torch.argsort(ids, stable=True)
        ids = ids[order]
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        out = {}
        for name in self._names:
            value = dim_zero_cat(getattr(self, f"rows_{name}"))[order][keep]
            out[name] = value.bool() if name in self._bool else value
        return ids[keep], out
