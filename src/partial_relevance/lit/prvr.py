"""LightningModule for the PRVR framework: Eq. 13 training, full-matrix evaluation (Eq. 14).

The model (any base with the interface of `models.prvr`) and the losses (`losses.prvr`) stay
pure; this module wires them to Lightning's hooks, logs every loss term, and scores the whole
query × video matrix of the evaluation split at epoch end (`metrics.retrieval`), the
encodings gathered across ranks by `metrics.store.EvalRows`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from partial_relevance.lit.base import OptimizerFactory, VideoQueryEvalModule, as_config
from partial_relevance.losses.prvr import (
    IceConfig,
    IrmConfig,
    PrvrLossConfig,
    TcpConfig,
    base_loss,
    ice_terms,
    irm_terms,
    tcp_group_labels,
    tcp_shuffle,
    tcp_terms,
    total_loss,
)
from partial_relevance.metrics.retrieval import chunked_ranks, gt_columns, recall_at_k
from partial_relevance.metrics.store import EvalRows
from partial_relevance.models.layers import TransformerEncoder, set_recompute_elementwise
from partial_relevance.models.precision import check_precision, inference_net, net_dtype
from partial_relevance.models.prvr import IrmProjection, PrvrVideoEncoding, TcpClassifier

log = logging.getLogger(__name__)
INDEX_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class PrvrEvalConfig:
    """`model.evaluation`: α of Eq. 14, query rows scored at once, encoding precision and the
    dtype of the stored per-video index."""

    alpha: float
    chunk: int
    precision: str
    index_dtype: str


class PrvrLitModule(VideoQueryEvalModule):
    """Trains a PRVR base model with optional ICE, IRM and TCP (PRVR Eq. 13).

    `collect_probe_inputs` (default False): `training_step` then returns
    `{"loss", "probe_inputs"}` with the detached tensors a probe callback reads (TEAM
    interface 3): `video_index`, `query_index`, `query_video`, `query`, `moments`, and per
    enabled module `ice_similarity`, `ice_pairs`; `irm_r_v`, `irm_r_q`, `target_moment`;
    `tcp_logits`, `tcp_labels` (dicts branch -> shuffled valid positions `[P, g]`, `[P]`).
    """

    def __init__(
        self,
        net: nn.Module | Mapping,
        optimizer: OptimizerFactory | Mapping,
        loss: PrvrLossConfig | Mapping,
        ice: IceConfig | Mapping,
        irm: IrmConfig | Mapping,
        tcp: TcpConfig | Mapping,
        evaluation: PrvrEvalConfig | Mapping,
        warmup_fraction: float,
        activation_checkpointing: bool,
        compile: bool,
        recompute_elementwise: bool,
    ) -> None:
        """`activation_checkpointing`: every Transformer layer of the net recomputes its
        activations in the backward pass (same gradients; at batch 128 on CPU about 0.5 GB
        (base) to 1 GB (full model) less peak memory for ~35 % more step time).
        `recompute_elementwise`: only the elementwise work between matmuls is recomputed
        (`models.layers.recompute_elementwise`; same numbers)."""
        super().__init__(net, optimizer, warmup_fraction, compile)
        for module in self.net.modules():
            if isinstance(module, TransformerEncoder):
                module.checkpointing = activation_checkpointing
        set_recompute_elementwise(self.net, recompute_elementwise)
        self.loss_cfg = as_config(PrvrLossConfig, loss, "loss")
        self.ice_cfg = as_config(IceConfig, ice, "ice")
        self.irm_cfg = as_config(IrmConfig, irm, "irm")
        self.tcp_cfg = as_config(TcpConfig, tcp, "tcp")
        self.eval_cfg = as_config(PrvrEvalConfig, evaluation, "evaluation")
        check_precision(self.eval_cfg.precision, "model.evaluation.precision")
        if self.eval_cfg.index_dtype not in INDEX_DTYPES:
            raise ValueError(
                f"model.evaluation.index_dtype must be one of {sorted(INDEX_DTYPES)}, "
                f"got {self.eval_cfg.index_dtype!r}"
            )
        dim = self.net.hidden_dim
        self.irm_projection = (
            IrmProjection(dim, self.irm_cfg.shared_fc) if self.irm_cfg.enabled else None
        )
        if self.tcp_cfg.enabled:
            self.tcp_frame = TcpClassifier(dim, self.tcp_cfg.groups)
            self.tcp_clip = TcpClassifier(dim, self.tcp_cfg.groups)
        self.collect_probe_inputs = False
        # Evaluation: encoded videos (index tensors by video id) and queries (by query id).
        self.eval_videos = EvalRows()
        self.eval_queries = EvalRows()
        # The reduced-precision copy of `net` used for one evaluation pass (a plain dict, so
        # it is neither a submodule nor in checkpoints).
        self._eval_nets: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ training
    def training_losses(
        self, batch: dict[str, Tensor], probes: dict[str, Any] | None = None
    ) -> dict[str, Tensor]:
        """Every term of Eq. 13 for one video-centric batch (a dict, `loss` = the total).

        `probes`, when given, receives the detached probe inputs (see the class doc).
        """
        cfg = self.loss_cfg
        net = self.net
        q = net.encode_queries(batch["query_tokens"], batch["query_mask"])  # [n, D]
        enc = net.encode_videos(batch["moments"], batch["frames"], batch["frame_mask"])
        y = batch["query_video"]  # [n]
        hard = self.current_epoch >= cfg.hard_negative_start_epoch
        sim = cfg.nce_sim

        video_cos = net.video_scores(q, enc, "cos")  # [n, b]
        moment_cos, _ = net.moment_scores(q, enc, "cos")  # [n, b]
        video_nce = video_cos if sim == "cos" else net.video_scores(q, enc, sim)
        moment_nce = moment_cos if sim == "cos" else net.moment_scores(q, enc, sim)[0]
        terms = base_loss(video_cos, moment_cos, video_nce, moment_nce, y, cfg, hard)
        if self.ice_cfg.enabled:
            ice = ice_terms(enc.clips, q, y, cfg, self.ice_cfg)
            similarity, pairs = ice.pop("ice_similarity"), ice.pop("ice_pairs")
            terms.update(ice)
            if probes is not None:
                probes.update(ice_similarity=similarity, ice_pairs=pairs)
        if self.irm_cfg.enabled:
            assert self.irm_projection is not None
            v = net.video_features(q, enc, y)  # [n, D]
            target = net.target_moments(q, enc, y)  # [n, D]
            r_v, r_q = self.irm_projection(v, target, q)
            irm_inputs = (r_v, r_q, q, moment_cos, moment_nce, y)
            terms.update(irm_terms(*irm_inputs, cfg=cfg, irm=self.irm_cfg))
            if probes is not None:
                probes.update(irm_r_v=r_v, irm_r_q=r_q, target_moment=target)
        if self.tcp_cfg.enabled:
            branches = self.tcp_predictions(enc)
            terms.update(tcp_terms(branches))
            if probes is not None:
                valid = {name: b[3] != -100 for name, b in branches.items()}
                probes["tcp_logits"] = {n: b[2][valid[n]] for n, b in branches.items()}
                probes["tcp_labels"] = {n: b[3][valid[n]] for n, b in branches.items()}
        terms["loss"] = total_loss(terms, self.ice_cfg, self.irm_cfg, self.tcp_cfg)
        if probes is not None:
            probes.update(
                video_index=batch["video_index"],
                query_video=y,
                query=q,
                moments=enc.clips,
            )
            if "query_index" in batch:
                probes["query_index"] = batch["query_index"]
        return terms

    def tcp_predictions(
        self, enc: PrvrVideoEncoding
    ) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """TCP (PRVR §3.5): per enabled branch, (p_o, y_o, p_s, y_s) of the ordinary and the
        shuffled-then-re-encoded sequence; logits [b, T, g], labels [b, T] (−100 padding)."""
        cfg = self.tcp_cfg
        branches = []
        if cfg.video:
            branches.append(("frame", enc.frame_inputs, enc.frames, enc.frame_mask, self.tcp_frame))
        if cfg.moment:
            branches.append(("clip", enc.clip_inputs, enc.clips, enc.clip_mask, self.tcp_clip))
        out = {}
        for name, inputs, encoded, mask, head in branches:
            lengths = mask.sum(1)
            labels = tcp_group_labels(lengths, inputs.shape[1], cfg.groups)  # [b, T]
            shuffled, source = tcp_shuffle(inputs, lengths, cfg.ratio)
            encoded_shuffled = self.net.encode_branch(name, shuffled, mask)
            out[name] = (head(encoded), labels, head(encoded_shuffled), labels.gather(1, source))
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Any:
        probes: dict[str, Any] | None = {} if self.collect_probe_inputs else None
        terms = self.training_losses(batch, probes)
        self.log_terms(terms, len(batch["query_video"]))
        if probes is None:
            return terms["loss"]
        return {"loss": terms["loss"], "probe_inputs": _detached(probes)}

    # ---------------------------------------------------------------- evaluation
    def eval_net(self) -> nn.Module:
        """The net that encodes the evaluation corpus: `net` itself in fp32, else a copy cast
        to `evaluation.precision` (made once per evaluation pass, dropped at its end)."""
        if "net" not in self._eval_nets:
            self._eval_nets["net"] = inference_net(self.net, self.eval_cfg.precision)
        return self._eval_nets["net"]

    def _eval_step(self, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        """Encode one batch of the evaluation corpus: videos (loader 0) or queries (loader 1).

        Video indices are stored in `evaluation.index_dtype` (fp16 by default: half the
        memory, and scoring upcasts to fp32); query vectors in fp32.
        """
        net = self.eval_net()
        dtype = net_dtype(net)
        if dtype != torch.float32:
            batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        if dataloader_idx == 0:
            enc = net.encode_videos(batch["moments"], batch["frames"], batch["frame_mask"])
            index_dtype = INDEX_DTYPES[self.eval_cfg.index_dtype]
            index = {k: v.to(index_dtype) for k, v in net.index_videos(enc).items()}
            self.eval_videos.update(batch["video_index"], index)
        else:
            q = net.encode_queries(batch["query_tokens"], batch["query_mask"])
            values = {"query": q.float(), "query_video": batch["video_index"]}
            self.eval_queries.update(batch["query_index"], values)

    def score_eval_store(self) -> dict[str, float]:
        """R@k / SumR of the corpus encoded so far; empties the store. What every evaluation
        epoch ends with."""
        ranks = self.eval_ranks()
        return {} if ranks is None else recall_at_k(ranks)

    def reset_eval_store(self) -> None:
        super().reset_eval_store()
        self._eval_nets = {}

    def eval_ranks(self) -> Tensor | None:
        """1-based rank of each query's GT video [Q] (split order) over the corpus encoded so
        far (full query × video matrix, scored in query chunks); empties the store. None when
        nothing was encoded.

        A partial corpus (`fast_dev_run`, `limit_val_batches`) is scored over the queries whose
        GT video was encoded, against the encoded videos, and says so in the log.
        """
        if self.eval_videos.is_empty() or self.eval_queries.is_empty():
            self.reset_eval_store()
            return None
        video_ids, index = self.eval_videos.compute()
        _, queries = self.eval_queries.compute()
        self.reset_eval_store()
        query = queries["query"]
        positive, encoded = gt_columns(video_ids, queries["query_video"])
        if not bool(encoded.all()):
            log.info(
                "evaluating %d of %d queries against %d encoded videos: the other queries' "
                "videos were not encoded (a partial evaluation corpus)",
                int(encoded.sum()),
                len(encoded),
                len(video_ids),
            )
            if not bool(encoded.any()):
                return None
            query, positive = query[encoded], positive[encoded]
        alpha = self.eval_cfg.alpha
        return chunked_ranks(
            lambda rows: self.net.score_queries(query[rows], index, alpha),
            positive,
            len(query),
            self.eval_cfg.chunk,
        )

    def _eval_epoch_end(self, prefix: str) -> dict[str, float]:
        """Score the evaluation corpus and log R@k and SumR under `prefix`."""
        metrics = self.score_eval_store()
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name in ("R@1", "SumR"))
        return metrics

    def on_validation_epoch_start(self) -> None:
        self.reset_eval_store()  # and a fresh reduced-precision copy of this epoch's weights

    def on_test_epoch_start(self) -> None:
        self.reset_eval_store()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


def _detached(value: Any) -> Any:
    """`value` with every tensor (also inside dicts) detached."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value
