"""A PRVR model as the first stage of VCMR: `PrvrLitModule` + the retriever's ranking file.

Trained on a VCMR corpus through `data.prvr_vcmr.PrvrVcmrDataModule`, the PRVR framework
(any base, with or without ICE / IRM / TCP) ranks every split's queries against the split's
videos with its inference score (PRVR Eq. 14, `net.score_queries`) and writes the **same**
ranking file as PREM's retriever (`inference.ranking.write_rankings`: top-100 videos and
scores per query, SPEC §6.1), so the moment localizer's datamodule (negatives, SPEC §5), the
VCMR inference (top-10 videos, SPEC §6.2), `prem_pipeline --ranking-file` and the tables read
it unchanged. The VR metrics of every labelled split are added from the same ranking under
PREM's names (`<split>/VR_R@k`, `<split>/VR_SumR`, and per query type).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from partial_relevance.data.rankings import SplitRanking
from partial_relevance.inference.ranking import rank_corpus
from partial_relevance.lit.base import as_config
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.lit.retriever import RankingConfig, export_rankings, split_ranking


class PrvrFirstStageLitModule(PrvrLitModule):
    """`PrvrLitModule` that also writes the VCMR ranking file (`export_artifacts`).

    `ranking` (`conf/model/prvr_first_stage.yaml`, the one source of its values): `enabled`,
    `k` (list length), `file` (name in the run directory), `splits`. Every other argument is
    `PrvrLitModule`'s.
    """

    def __init__(self, *args: Any, ranking: RankingConfig | Mapping, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(ranking, Mapping):
            ranking = {**ranking, "splits": list(ranking.get("splits", []))}
        self.ranking_cfg = as_config(RankingConfig, ranking, "ranking")

    @torch.no_grad()
    def encode_split(
        self, datamodule: Any, split: str, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """(video index of every video `{key: [V, ...]}`, query vectors `[Q, D]`, query types
        `[Q]`) of one split, in split order (fp32, eval mode)."""
        video_loader, query_loader = datamodule.split_loaders(split)
        net = self.net
        index: dict[str, list[Tensor]] = {}
        order: list[Tensor] = []
        for batch in video_loader:
            moments, frames = batch["moments"].to(device), batch["frames"].to(device)
            enc = net.encode_videos(moments, frames, batch["frame_mask"].to(device))
            for key, value in net.index_videos(enc).items():
                index.setdefault(key, []).append(value.float())
            order.append(batch["video_index"])
        queries, query_order, types = [], [], []
        for batch in query_loader:
            queries.append(
                net.encode_queries(
                    batch["query_tokens"].to(device), batch["query_mask"].to(device)
                ).float()
            )
            query_order.append(batch["query_index"])
            types.append(batch.get("query_type", torch.full_like(batch["query_index"], -1)))
        for name, ids in (("video", order), ("query", query_order)):
            flat = torch.cat(ids)
            if not torch.equal(flat, torch.arange(len(flat))):
                raise RuntimeError(f"split {split!r}: the {name} loader is not in index order")
        return {k: torch.cat(v) for k, v in index.items()}, torch.cat(queries), torch.cat(types)

    @torch.no_grad()
    def rank_split(
        self, datamodule: Any, split: str, device: torch.device | str = "cpu"
    ) -> tuple[SplitRanking, Tensor | None, Tensor]:
        """Top-k videos of every query of `split` by Eq. 14 (exact, in query chunks), the GT
        ranks when the split is labelled, and the query types."""
        data = datamodule.all_splits()[split]
        index, queries, types = self.encode_split(datamodule, split, device)
        alpha = self.eval_cfg.alpha
        positive = torch.as_tensor(data.query_video, device=device) if data.labelled else None
        result = rank_corpus(
            lambda rows: self.net.score_queries(queries[rows], index, alpha),
            len(queries),
            k=int(self.ranking_cfg.k),
            positive=positive,
            chunk=int(self.eval_cfg.chunk),
        )
        return split_ranking(split, data, result), result.ranks, types

    def export_artifacts(
        self, trainer: pl.Trainer, datamodule: Any, output_dir: str | Path
    ) -> dict[str, Any]:
        """Write the ranking file of every split into `output_dir` (global rank 0 only) and
        return `{"ranking_file": path}` plus each labelled split's `<split>/VR_*` metrics."""
        return export_rankings(self, trainer, datamodule, output_dir)
