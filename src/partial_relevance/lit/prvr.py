"""LightningModule for the PRVR framework: Eq. 13 training, full-matrix evaluation (Eq. 14).

The model (any base with the interface of `models.prvr`) and the loss functions stay pure;
this module wires them, logs every loss term, and scores the whole query × video matrix of
the evaluation split at epoch end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from partial_relevance.lit.optim import parameter_groups, warmup_linear_schedule
from partial_relevance.losses.contrastive import multi_positive_infonce, triplet_ranking_loss
from partial_relevance.losses.prvr import (
    ice_loss,
    ice_select_pairs,
    irm_neg_loss,
    irm_red_loss,
    tcp_group_labels,
    tcp_loss,
    tcp_shuffle,
)
from partial_relevance.metrics.retrieval import chunked_ranks, gt_columns, recall_at_k
from partial_relevance.models.layers import TransformerEncoder, l2_normalize
from partial_relevance.models.precision import check_precision, inference_net, net_dtype
from partial_relevance.models.prvr import IrmProjection, PrvrVideoEncoding, TcpClassifier

DEFAULT_LOSS = {
    "margin": 0.2,  # PRVR §4.1.3 (peers use 0.1 on TVR)
    "nce_sim": "dot",  # SPEC §3 [decision]: unnormalised dot products, as MS-SL/GMMFormer
    "tau": 1.0,
    "nce_average": "video",
    "lambda_video_nce": 0.02,  # λ₁, PRVR Eq. 7 as printed
    "lambda_moment_nce": 0.04,  # λ₂
    "hard_negative_start_epoch": 20,
    "hard_topk": 20,
}
# β_t, λ₃ (PRVR §4.1.3); nce_weight: λ₂ of Eq. 7 on ICE's InfoNCE (SPEC §3, revised).
DEFAULT_ICE = {"enabled": False, "threshold": 0.4, "weight": 0.1, "nce_weight": 0.04}
DEFAULT_IRM = {
    "enabled": False,
    "neg": True,
    "red": True,
    "shared_fc": True,
    "weight": 1.0,  # λ₄
    # InfoNCE weight inside L_neg / L_red: λ₂ of Eq. 7 (SPEC §3, revised); 1 = unweighted.
    "neg_nce_weight": 0.04,
    "red_nce_weight": 0.04,
}
DEFAULT_TCP = {
    "enabled": False,
    "video": True,
    "moment": True,
    "groups": 8,  # g, PRVR §4.1.3
    "ratio": 0.25,  # β_r
    "weight": 1.0,  # λ₅
}
DEFAULT_EVAL = {
    "alpha": 0.7,  # α of Eq. 14
    "chunk": 1024,  # query rows scored at once
    "precision": "fp32",  # encoding precision: fp32 | bf16 (a bf16 copy of the net)
    "index_dtype": "float16",  # stored per-video index; scoring upcasts it, fp32 accumulation
}
log = logging.getLogger(__name__)
INDEX_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _merged(defaults: dict, given: dict | None) -> dict:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; valid keys: {sorted(defaults)}")
    return {**defaults, **(given or {})}


class PrvrLitModule(pl.LightningModule):
    """Trains a PRVR base model with optional ICE, IRM and TCP (PRVR Eq. 13)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: dict | None = None,
        ice: dict | None = None,
        irm: dict | None = None,
        tcp: dict | None = None,
        evaluation: dict | None = None,
        warmup_fraction: float = 0.01,
        weight_decay: float = 0.01,
        activation_checkpointing: bool = False,
    ) -> None:
        """`activation_checkpointing`: every Transformer layer of the net recomputes its
        activations in the backward pass (same gradients; at batch 128 on CPU about 0.5 GB
        (base) to 1 GB (full model) less peak memory for ~35 % more step time)."""
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"], logger=False)
        self.net = net
        for module in net.modules():
            if isinstance(module, TransformerEncoder):
                module.checkpointing = activation_checkpointing
        self.optimizer_factory = optimizer
        self.loss_cfg = _merged(DEFAULT_LOSS, loss)
        self.ice_cfg = _merged(DEFAULT_ICE, ice)
        self.irm_cfg = _merged(DEFAULT_IRM, irm)
        self.tcp_cfg = _merged(DEFAULT_TCP, tcp)
        self.eval_cfg = _merged(DEFAULT_EVAL, evaluation)
        check_precision(self.eval_cfg["precision"], "model.evaluation.precision")
        if self.eval_cfg["index_dtype"] not in INDEX_DTYPES:
            raise ValueError(
                f"model.evaluation.index_dtype must be one of {sorted(INDEX_DTYPES)}, "
                f"got {self.eval_cfg['index_dtype']!r}"
            )
        self.warmup_fraction = warmup_fraction
        self.weight_decay = weight_decay
        dim = net.hidden_dim
        self.irm_projection = (
            IrmProjection(dim, self.irm_cfg["shared_fc"]) if self.irm_cfg["enabled"] else None
        )
        if self.tcp_cfg["enabled"]:
            self.tcp_frame = TcpClassifier(dim, self.tcp_cfg["groups"])
            self.tcp_clip = TcpClassifier(dim, self.tcp_cfg["groups"])
        self._eval_store: dict[str, list] = {}
        # The reduced-precision copy of `net` used for one evaluation pass (a plain dict, so
        # it is neither a submodule nor in checkpoints).
        self._eval_nets: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ training
    def training_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every term of Eq. 13 for one video-centric batch (a dict, `loss` = the total)."""
        cfg = self.loss_cfg
        net = self.net
        q = net.encode_queries(batch["query_tokens"], batch["query_mask"])  # [n, D]
        enc = net.encode_videos(batch["moments"], batch["frames"], batch["frame_mask"])
        y = batch["query_video"]  # [n]
        hard = self.current_epoch >= cfg["hard_negative_start_epoch"]
        tau, sim = cfg["tau"], cfg["nce_sim"]

        video_cos = net.video_scores(q, enc, "cos")  # [n, b]
        moment_cos, _ = net.moment_scores(q, enc, "cos")  # [n, b]
        video_nce = video_cos if sim == "cos" else net.video_scores(q, enc, sim)
        moment_nce = moment_cos if sim == "cos" else net.moment_scores(q, enc, sim)[0]
        terms: dict[str, Tensor] = {
            "L_v_trip": triplet_ranking_loss(video_cos, y, cfg["margin"], hard, cfg["hard_topk"]),
            "L_m_trip": triplet_ranking_loss(moment_cos, y, cfg["margin"], hard, cfg["hard_topk"]),
            "L_v_nce": multi_positive_infonce(video_nce / tau, y, cfg["nce_average"]),
            "L_m_nce": multi_positive_infonce(moment_nce / tau, y, cfg["nce_average"]),
        }
        total = (
            terms["L_v_trip"]
            + terms["L_m_trip"]
            + cfg["lambda_video_nce"] * terms["L_v_nce"]
            + cfg["lambda_moment_nce"] * terms["L_m_nce"]
        )
        terms["L_base"] = total
        if self.ice_cfg["enabled"]:
            terms.update(self._ice_terms(q, enc, y))
            total = total + self.ice_cfg["weight"] * terms["L_ice"]
        if self.irm_cfg["enabled"]:
            terms.update(self._irm_terms(q, enc, y, moment_cos, moment_nce))
            total = total + self.irm_cfg["weight"] * terms["L_irm"]
        if self.tcp_cfg["enabled"]:
            terms.update(self._tcp_terms(enc))
            total = total + self.tcp_cfg["weight"] * terms["L_tcp"]
        terms["loss"] = total
        return terms

    def _ice_terms(self, q: Tensor, enc: PrvrVideoEncoding, y: Tensor) -> dict[str, Tensor]:
        """ICE (PRVR §3.3): mutual-argmax moment-query pairs of other videos above β_t."""
        b, num_clips, dim = enc.clips.shape
        clips = enc.clips.reshape(b * num_clips, dim)  # [n_m, D]
        clip_video = torch.arange(b, device=q.device).repeat_interleave(num_clips)
        with torch.no_grad():
            cos = l2_normalize(clips) @ l2_normalize(q).T  # [n_m, n]
            same_video = clip_video[:, None] == y[None, :]
            moment_idx, query_idx = ice_select_pairs(cos, same_video, self.ice_cfg["threshold"])
        cfg = self.loss_cfg
        loss = ice_loss(
            clips[moment_idx],
            q[query_idx],
            cfg["margin"],
            cfg["nce_sim"],
            cfg["tau"],
            cfg["nce_average"],
            nce_weight=self.ice_cfg["nce_weight"],
        )
        return {"L_ice": loss, "n_c": torch.tensor(float(len(query_idx)), device=q.device)}

    def _irm_terms(
        self, q: Tensor, enc: PrvrVideoEncoding, y: Tensor, moment_cos: Tensor, moment_nce: Tensor
    ) -> dict[str, Tensor]:
        """IRM (PRVR §3.4, Eq. 9-10): redundant features as hard negatives and aligned."""
        assert self.irm_projection is not None
        v = self.net.video_features(q, enc, y)  # [n, D]
        target = self.net.target_moments(q, enc, y)  # [n, D]
        r_v, r_q = self.irm_projection(v, target, q)
        cfg = self.loss_cfg
        zero = q.sum() * 0
        irm = self.irm_cfg
        neg = (
            irm_neg_loss(
                r_v,
                r_q,
                q,
                moment_cos,
                moment_nce,
                y,
                cfg["margin"],
                cfg["nce_sim"],
                cfg["tau"],
                nce_weight=irm["neg_nce_weight"],
            )
            if irm["neg"]
            else zero
        )
        red = (
            irm_red_loss(
                r_v,
                r_q,
                cfg["margin"],
                cfg["nce_sim"],
                cfg["tau"],
                cfg["nce_average"],
                nce_weight=irm["red_nce_weight"],
            )
            if irm["red"]
            else zero
        )
        return {"L_neg": neg, "L_red": red, "L_irm": neg + red}

    def _tcp_terms(self, enc: PrvrVideoEncoding) -> dict[str, Tensor]:
        """TCP (PRVR §3.5, Eq. 11-12): predict temporal groups of shuffled positions."""
        cfg = self.tcp_cfg
        out: dict[str, Tensor] = {}
        branches = []
        if cfg["video"]:
            branches.append(("frame", enc.frame_inputs, enc.frames, enc.frame_mask, self.tcp_frame))
        if cfg["moment"]:
            branches.append(("clip", enc.clip_inputs, enc.clips, enc.clip_mask, self.tcp_clip))
        total = enc.clips.sum() * 0
        for name, inputs, encoded, mask, head in branches:
            lengths = mask.sum(1)
            labels = tcp_group_labels(lengths, inputs.shape[1], cfg["groups"])  # [b, T]
            shuffled, source = tcp_shuffle(inputs, lengths, cfg["ratio"])
            encoded_shuffled = self.net.encode_branch(name, shuffled, mask)
            logits_o, logits_s = head(encoded), head(encoded_shuffled)
            labels_s = labels.gather(1, source)
            loss = tcp_loss(logits_o, labels, logits_s, labels_s)
            valid = labels_s != -100
            accuracy = (logits_s.argmax(-1) == labels_s)[valid].float().mean()
            out[f"L_tcp_{name}"] = loss
            out[f"tcp_acc_{name}"] = accuracy.detach()
            total = total + loss
        out["L_tcp"] = total
        return out

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.training_losses(batch)
        batch_size = len(batch["query_video"])
        for name, value in terms.items():
            self.log(
                f"train/{name}",
                value.detach(),
                prog_bar=name == "loss",
                batch_size=batch_size,
                on_step=True,
                on_epoch=True,
            )
        return terms["loss"]

    # ---------------------------------------------------------------- evaluation
    def eval_net(self) -> nn.Module:
        """The net that encodes the evaluation corpus: `net` itself in fp32, else a copy cast
        to `evaluation.precision` (made once per evaluation pass, dropped at its end)."""
        if "net" not in self._eval_nets:
            self._eval_nets["net"] = inference_net(self.net, self.eval_cfg["precision"])
        return self._eval_nets["net"]

    def _eval_step(self, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        """Encode one batch of the evaluation corpus: videos (loader 0) or queries (loader 1).

        Video indices are stored in `evaluation.index_dtype` (fp16 by default: half the
        memory, and scoring upcasts to fp32); query vectors in fp32.
        """
        store = self._eval_store
        net = self.eval_net()
        dtype = net_dtype(net)
        if dtype != torch.float32:
            batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        if dataloader_idx == 0:
            enc = net.encode_videos(batch["moments"], batch["frames"], batch["frame_mask"])
            store.setdefault("video_index", []).append(batch["video_index"])
            index_dtype = INDEX_DTYPES[self.eval_cfg["index_dtype"]]
            for key, value in net.index_videos(enc).items():
                store.setdefault(f"index/{key}", []).append(value.to(index_dtype))
        else:
            q = net.encode_queries(batch["query_tokens"], batch["query_mask"])
            store.setdefault("query_index", []).append(batch["query_index"])
            store.setdefault("query_video", []).append(batch["video_index"])
            store.setdefault("query", []).append(q.float())

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def _gathered(self, key: str, index_key: str) -> tuple[Tensor, Tensor]:
        """Concatenate a stored tensor across batches and ranks, ordered by global index,
        with the DistributedSampler's padding duplicates removed: (values, sorted ids)."""
        values = torch.cat(self._eval_store[key])
        index = torch.cat(self._eval_store[index_key])
        if self._trainer is not None and self.trainer.world_size > 1:
            values = self.all_gather(values).flatten(0, 1)
            index = self.all_gather(index).flatten(0, 1)
        order = torch.argsort(index, stable=True)
        index, values = index[order], values[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return values[keep], index[keep]

    def score_eval_store(self) -> dict[str, float]:
        """R@k / SumR of the corpus encoded so far; empties the store. What every evaluation
        epoch ends with."""
        ranks = self.eval_ranks()
        return {} if ranks is None else recall_at_k(ranks)

    def eval_ranks(self) -> Tensor | None:
        """1-based rank of each query's GT video [Q] (split order) over the corpus encoded so
        far (full query × video matrix, scored in query chunks); empties the store. None when
        nothing was encoded.

        A partial corpus (`fast_dev_run`, `limit_val_batches`) is scored over the queries whose
        GT video was encoded, against the encoded videos, and says so in the log.
        """
        if not self._eval_store.get("query") or not self._eval_store.get("video_index"):
            self._eval_store, self._eval_nets = {}, {}
            return None
        keys = [k for k in self._eval_store if k.startswith("index/")]
        index = {k.split("/", 1)[1]: self._gathered(k, "video_index")[0] for k in keys}
        video_ids = self._gathered("video_index", "video_index")[0]
        query, _ = self._gathered("query", "query_index")
        positive_ids, _ = self._gathered("query_video", "query_index")
        self._eval_store, self._eval_nets = {}, {}
        positive, encoded = gt_columns(video_ids, positive_ids)
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
        alpha = self.eval_cfg["alpha"]
        return chunked_ranks(
            lambda rows: self.net.score_queries(query[rows], index, alpha),
            positive,
            len(query),
            self.eval_cfg["chunk"],
        )

    def _eval_epoch_end(self, prefix: str) -> dict[str, float]:
        """Score the evaluation corpus and log R@k and SumR under `prefix`."""
        metrics = self.score_eval_store()
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name in ("R@1", "SumR"))
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._eval_nets = {}  # a fresh reduced-precision copy of this epoch's weights

    def on_test_epoch_start(self) -> None:
        self._eval_nets = {}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(parameter_groups(self, self.weight_decay))
        total_steps = int(self.trainer.estimated_stepping_batches) if self.trainer else 1
        scheduler = warmup_linear_schedule(optimizer, max(1, total_steps), self.warmup_fraction)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
