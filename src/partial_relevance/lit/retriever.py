"""LightningModule for the PREM video retriever (PREM §3.3, SPEC §4, §6.1).

Training: query-centric batches (256 queries, SPEC §4) with their GT videos; the batch's
distinct videos are the in-batch negatives (gathered across DDP ranks when
`gather_negatives`). The loss is `retriever_loss` (`L_q2v + L_v2q`, PREM Eq. 7–8): the strong
positive is Eq. 6 restricted to the GT moment's clips, the weak positive Eq. 6 restricted to
the clips outside it. Every term is logged as `train/<name>`.

Evaluation (VR, SPEC §6.1 / §7): every video of the split is encoded once, every query once;
at epoch end the full query × video Eq. 6 matrix is scored exactly in query chunks and VR R@1 /
5 / 10 / 100 and SumR are logged as `<split>/VR_R@k`, `<split>/VR_SumR` (plus per query type
`<split>/VR_R@k_<type>` where the split has types), gathered across ranks with global ids and
de-duplicated (the DistributedSampler pads).

`export_artifacts` (called by `train(cfg)` after testing the best checkpoint) ranks every
split's queries against that split's videos and writes one ranking file (top-100 videos and
scores per query; `inference.ranking`) into the run directory, for the moment localizer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from partial_relevance.data.rankings import SplitRanking, write_rankings
from partial_relevance.inference.ranking import (
    VIDEO_KEYS,
    CorpusRanking,
    encoded_score_fn,
    pad_clips,
    query_chunk_size,
    rank_corpus,
    stack_query_encodings,
    stack_video_encodings,
)
from partial_relevance.lit.base import OptimizerFactory, VideoQueryEvalModule, as_config
from partial_relevance.lit.prem_modules import PremModules
from partial_relevance.losses.prem import in_batch_negative_mask, retriever_loss, strong_weak_masks
from partial_relevance.metrics.retrieval import gt_columns
from partial_relevance.metrics.store import EvalRows
from partial_relevance.metrics.vcmr import vr_metrics
from partial_relevance.models.prem_retriever import (
    RESTRICTED_SUBTITLE_MODES,
    PremRetriever,
    index_encoding,
    restricted_pair_score,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverEvalConfig:
    """`model.evaluation`: score-block budget (queries per chunk = this // (V · L))."""

    max_elements: int


@dataclass(frozen=True)
class RankingConfig:
    """`model.ranking` (SPEC §6.1): write the ranking file, list length, file name, splits."""

    enabled: bool
    k: int
    file: str
    splits: list[str]


def first_occurrence(ids: Tensor) -> Tensor:
    """`[V]` True at the first column of each id (a video gathered twice counts once)."""
    same = ids[:, None] == ids[None, :]  # [V, V]
    return ~torch.tril(same, diagonal=-1).any(dim=1)


def gather_video_encodings(
    videos: Mapping[str, Tensor],
    video_ids: Tensor,
    gather: Callable[[Tensor], Tensor],
    rank: int,
) -> tuple[dict[str, Tensor], Tensor, int]:
    """Gather encoded videos of every rank (in-batch negatives under DDP, SPEC §4).

    Ranks hold different numbers of videos `V_r` and clips `L_r`, so each pads to the largest
    before `gather` (an all-gather returning `[W, ...]`; with gradients for float tensors), and
    the padding rows are dropped afterwards.

    Returns (encodings `[ΣV_r, L_max, ...]` in rank order, ids `[ΣV_r]`, offset of this rank's
    first video among the gathered columns).
    """
    num_videos, num_clips = videos["clip_mask"].shape
    sizes = gather(torch.tensor([num_videos, num_clips], device=video_ids.device))  # [W, 2]
    v_max, l_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())

    def pad(x: Tensor) -> Tensor:
        x = pad_clips(x, l_max) if x.ndim >= 2 else x
        extra = v_max - x.shape[0]
        return torch.cat([x, x.new_zeros((extra, *x.shape[1:]))]) if extra else x

    out: dict[str, Tensor] = {}
    for key in VIDEO_KEYS:
        value = videos[key]
        if value.dtype == torch.bool:
            out[key] = gather(pad(value.to(torch.uint8))).flatten(0, 1).bool()
        else:
            out[key] = gather(pad(value)).flatten(0, 1)
    ids = gather(pad(video_ids)).flatten(0, 1)
    valid = (torch.arange(v_max, device=sizes.device)[None] < sizes[:, :1]).flatten()  # [W*v]
    offset = int(sizes[:rank, 0].sum())
    return {k: v[valid] for k, v in out.items()}, ids[valid], offset


class PremRetrieverLitModule(VideoQueryEvalModule):
    """Trains and evaluates `PremRetriever` (PREM §3.3); writes the ranking file (§3.5).

    PRVR's modules (`ice`, `irm`, `tcp`, each with an `enabled` switch; `module_loss` their
    similarity rule) add `λ₃ L_ice + λ₄ L_irm + λ₅ L_tcp` (`lit.prem_modules`).

    Switches: `strong_relevance` / `weak_relevance` (Table 2), `tau` (τ), `weak_weight` (β),
    `video_to_query` (L_v2q), `gather_negatives` (DDP), `restricted_subtitle` (see
    `restricted_pair_score`), `positive_warmup_epochs`.

    `positive_warmup_epochs` (**[decision]**, 0 = the paper): from random init, the strong
    positive (a maximum over the few moment clips) starts below the negatives (maxima over
    every clip of a video) by an extreme-value margin; at τ = 0.01 the fastest way to shrink
    the loss is then to make every clip encoding alike (clip-clip cosine -> 0.99 within ~50
    steps on the synthetic corpus), after which it learns only slowly. Training the first
    epochs with the whole-video positive and no L_W (ReLoCLNet's loss) escapes that; the
    synthetic experiment uses it, the paper configs do not.
    """

    def __init__(
        self,
        net: PremRetriever | Mapping,
        optimizer: OptimizerFactory | Mapping,
        tau: float,
        weak_weight: float,
        strong_relevance: bool,
        weak_relevance: bool,
        video_to_query: bool,
        gather_negatives: bool,
        restricted_subtitle: str,
        positive_warmup_epochs: int,
        warmup_fraction: float | None,
        evaluation: RetrieverEvalConfig | Mapping,
        ranking: RankingConfig | Mapping,
        ice: Mapping,
        irm: Mapping,
        tcp: Mapping,
        module_loss: Mapping,
        compile: bool,
    ) -> None:
        """Every value comes from `conf/model/prem_retriever.yaml` (τ, β: SPEC §4)."""
        super().__init__(net, optimizer, warmup_fraction, compile)
        self.tau = tau
        self.weak_weight = weak_weight
        self.strong_relevance = strong_relevance
        self.weak_relevance = weak_relevance
        self.video_to_query = video_to_query
        self.gather_negatives = gather_negatives
        if restricted_subtitle not in RESTRICTED_SUBTITLE_MODES:
            raise ValueError(
                f"restricted_subtitle must be one of {RESTRICTED_SUBTITLE_MODES}, "
                f"got {restricted_subtitle!r}"
            )
        self.restricted_subtitle = restricted_subtitle
        self.positive_warmup_epochs = positive_warmup_epochs
        self.eval_cfg = as_config(RetrieverEvalConfig, evaluation, "evaluation")
        if isinstance(ranking, Mapping):
            ranking = {**ranking, "splits": list(ranking.get("splits", []))}
        self.ranking_cfg = as_config(RankingConfig, ranking, "ranking")
        # Evaluation: encoded videos (by video id) and queries (by query id), every rank's.
        self.eval_videos = EvalRows()
        self.eval_queries = EvalRows()
        # PRVR's ICE / IRM / TCP as switches (lit.prem_modules; all off: the paper's loss).
        self.prvr_modules = PremModules(ice, irm, tcp, module_loss)
        self.prvr_modules.check_net(self.net)

    # ------------------------------------------------------------------ training
    def _batch_videos(
        self, videos: dict[str, Tensor], video_ids: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, int]:
        """The columns of the in-batch score matrix: this rank's videos, or every rank's."""
        if not (self.gather_negatives and self.world_size() > 1):
            return videos, video_ids, 0

        def gather(x: Tensor) -> Tensor:
            return self.all_gather(x, sync_grads=x.is_floating_point() and x.requires_grad)

        return gather_video_encodings(videos, video_ids, gather, self.global_rank)

    def training_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every term of the retriever loss for one batch (dict; `loss` is the total)."""
        net = self.net
        queries = net.encode_queries(batch["query_tokens"], batch["query_mask"])  # [B, D] each
        videos = net.encode_videos(
            batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"]
        )  # [V, L, D] each
        query_video = batch["query_video"]  # [B] column of the GT video
        pairs = index_encoding(videos, query_video)  # [B, L, D]
        strong_mask, weak_mask, weak_valid = strong_weak_masks(batch["span"], pairs["clip_mask"])
        mode = self.restricted_subtitle
        # Curriculum [decision, off by default]: for the first `positive_warmup_epochs` the
        # positive is the whole GT video and L_W is off (ReLoCLNet-style), see the class doc.
        warmup = self.current_epoch < self.positive_warmup_epochs
        if self.strong_relevance and not warmup:
            strong = restricted_pair_score(net, queries, pairs, strong_mask, mode)  # [B]
        else:  # Table 2 ablation: the positive is Eq. 6 over the whole GT video
            strong = net.score_pairs(queries, pairs)
        weak = restricted_pair_score(net, queries, pairs, weak_mask, mode)  # [B]
        weak_weight = self.weak_weight if self.weak_relevance and not warmup else 0.0
        columns, column_ids, offset = self._batch_videos(videos, batch["video_index"])
        scores = net.score(queries, columns)  # [B, V_all]
        own_ids = batch["video_index"][query_video]  # [B]
        negative_mask = in_batch_negative_mask(own_ids, column_ids) & first_occurrence(column_ids)
        terms = retriever_loss(
            strong,
            weak,
            weak_valid,
            scores,
            query_video + offset,
            negative_mask,
            tau=self.tau,
            weak_weight=weak_weight,
            video_to_query=self.video_to_query,
        )
        if self.prvr_modules.any_enabled:
            terms.update(self.prvr_modules.terms(net, batch, queries, videos))
            terms["loss"] = self.prvr_modules.total(terms)
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.training_losses(batch)
        self.log_terms(terms, len(batch["query_video"]))
        return terms["loss"]

    # ---------------------------------------------------------------- evaluation
    def encode_video_batch(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Encoded clips of a `collate_vcmr_videos` batch: vis/sub [v, L, D], masks [v, L]."""
        return self.net.encode_videos(
            batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"]
        )

    def encode_query_batch(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Encoded queries of a `collate_vcmr_queries` batch: vis/sub [b, D]."""
        out = self.net.encode_queries(batch["query_tokens"], batch["query_mask"])
        return {"vis": out["vis"], "sub": out["sub"]}  # type: ignore[dict-item]

    def _eval_step(self, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        """Encode one batch of the evaluation corpus: videos (loader 0) or queries (loader 1)."""
        if dataloader_idx == 0:
            self.eval_videos.update(batch["video_index"], self.encode_video_batch(batch))
        else:
            values = {
                **self.encode_query_batch(batch),
                "positive": batch["video_index"],
                "query_type": batch["query_type"],
            }
            self.eval_queries.update(batch["query_index"], values)

    def _eval_epoch_end(self, prefix: str) -> dict[str, float]:
        """VR over the full split: exact chunked Eq. 6 scores -> GT ranks -> R@k, SumR."""
        if self.eval_videos.is_empty() or self.eval_queries.is_empty():
            self.reset_eval_store()
            return {}
        video_ids, videos = self.eval_videos.compute()
        _, queries = self.eval_queries.compute()
        self.reset_eval_store()
        labelled = queries["positive"] >= 0
        positive, encoded = gt_columns(video_ids, queries["positive"])
        kept = labelled & encoded
        if bool((labelled & ~encoded).any()):
            log.info(
                "evaluating %d of %d labelled queries against %d encoded videos: the other "
                "queries' videos were not encoded (a partial evaluation corpus)",
                int(kept.sum()),
                int(labelled.sum()),
                len(video_ids),
            )
        if not bool(kept.any()):
            return {}
        queries = {**queries, "positive": positive}
        queries = {k: v[kept] for k, v in queries.items()}
        ranking = self._rank(queries, videos, k=1)
        assert ranking.ranks is not None
        metrics = vr_metrics(ranking.ranks, queries["query_type"])
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name in ("VR_R@1", "VR_SumR"))
        return metrics

    def on_validation_epoch_start(self) -> None:
        self.reset_eval_store()

    def on_test_epoch_start(self) -> None:
        self.reset_eval_store()

    def _rank(
        self, queries: Mapping[str, Tensor], videos: Mapping[str, Tensor], k: int
    ) -> CorpusRanking:
        """Chunked exact top-k and GT ranks of `queries` against the encoded `videos`."""
        num_videos, num_clips = videos["clip_mask"].shape
        chunk = query_chunk_size(num_videos, num_clips, self.eval_cfg.max_elements)
        encoded = {"vis": queries["vis"], "sub": queries["sub"]}
        positive = queries.get("positive")
        return rank_corpus(
            encoded_score_fn(self.net.score, encoded, videos),
            len(encoded["vis"]),
            k=k,
            positive=positive,
            chunk=chunk,
        )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------- ranking
    @torch.no_grad()
    def encode_split(
        self, datamodule: Any, split: str, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Encode one split's corpus once (videos, then queries) in eval mode on `device`."""
        video_loader, query_loader = datamodule.split_loaders(split)

        def to_device(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in batch.items()}

        video_chunks, video_index = [], []
        for batch in video_loader:
            video_chunks.append(self.encode_video_batch(to_device(batch)))
            video_index.append(batch["video_index"])
        query_chunks, query_index = [], []
        for batch in query_loader:
            query_chunks.append(self.encode_query_batch(to_device(batch)))
            query_index.append(batch["query_index"])
        for name, index in (("video", video_index), ("query", query_index)):
            flat = torch.cat(index)
            if not torch.equal(flat, torch.arange(len(flat))):
                raise RuntimeError(f"split {split!r}: the {name} loader is not in index order")
        return stack_video_encodings(video_chunks), stack_query_encodings(query_chunks)

    @torch.no_grad()
    def rank_split(
        self, datamodule: Any, split: str, device: torch.device | str = "cpu"
    ) -> tuple[SplitRanking, Tensor | None, None]:
        """Top-k videos of every query of `split` (SPEC §6.1), if labelled the GT ranks, and
        no query types (the VCMR corpora's types are scored by the localizer's tables)."""
        data = datamodule.all_splits()[split]
        videos, queries = self.encode_split(datamodule, split, device)
        positive = None
        if data.labelled:
            positive = torch.as_tensor(data.query_video, device=device)
        queries = {**queries, **({"positive": positive} if positive is not None else {})}
        result = self._rank(queries, videos, k=int(self.ranking_cfg.k))
        return split_ranking(split, data, result), result.ranks, None

    def export_artifacts(
        self, trainer: pl.Trainer, datamodule: Any, output_dir: str | Path
    ) -> dict[str, Any]:
        """Write the ranking file (every split's top-k videos and scores) into `output_dir`.

        Called by `train(cfg)` with the best checkpoint's weights loaded. Only global rank 0
        computes and writes (no collective calls, so other ranks simply return). Returns
        `{"ranking_file": path}` plus each split's VR metrics from the same ranking
        (`<split>/VR_R@k` for the splits not evaluated by validate/test, e.g. train).
        """
        return export_rankings(self, trainer, datamodule, output_dir, metric_splits=("train",))


def split_ranking(split: str, data: Any, result: Any) -> SplitRanking:
    """The ranking file's record of one split: `data` (a loaded split with `queries`,
    `video_ids`, `query_video`) and `result` (`rank_corpus`'s top-k indices and scores)."""
    return SplitRanking(
        split,
        [q.query_id for q in data.queries],
        list(data.video_ids),
        result.indices.cpu().numpy(),
        result.scores.float().cpu().numpy(),
        data.query_video,
    )


def export_rankings(
    module: Any,
    trainer: pl.Trainer,
    datamodule: Any,
    output_dir: str | Path,
    metric_splits: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Write the ranking file of `module.ranking_cfg.splits` (SPEC §6.1) for any first stage
    (a LightningModule with `ranking_cfg` and `rank_split(datamodule, split, device)` ->
    (ranking, GT ranks or None, query types or None)); global rank 0 only. Returns
    `{"ranking_file": path}` plus `<split>/VR_*` for the labelled splits in `metric_splits`
    (None: every labelled split)."""
    cfg: RankingConfig = module.ranking_cfg
    if not cfg.enabled or not hasattr(datamodule, "all_splits"):
        return {}
    path = Path(output_dir) / str(cfg.file)
    out: dict[str, Any] = {"ranking_file": str(path)}
    if not trainer.is_global_zero:
        return out
    device = trainer.strategy.root_device
    was_training = module.training
    module.eval()
    module.to(device)
    try:
        rankings: dict[str, SplitRanking] = {}
        available = datamodule.all_splits()
        for split in cfg.splits:
            if split not in available:
                continue
            rankings[split], ranks, types = module.rank_split(datamodule, split, device)
            if ranks is not None and (metric_splits is None or split in metric_splits):
                metrics = vr_metrics(ranks.cpu(), None if types is None else types.cpu())
                out.update({f"{split}/{k}": v for k, v in metrics.items()})
        write_rankings(path, rankings, attrs={"k": int(cfg.k)})
    finally:
        module.train(was_training)
    return out


__all__ = [
    "PremRetrieverLitModule",
    "RankingConfig",
    "RetrieverEvalConfig",
    "export_rankings",
    "first_occurrence",
    "gather_video_encodings",
    "split_ranking",
]
