"""LightningModule for the PREM moment localizer (PREM §3.4–§3.5, SPEC §5–§6).

Training (Eq. 12): each batch holds B queries, each with its GT video (slot 0) and `n_neg`
negatives drawn from the retriever's top-100 (`data.vcmr_localizer`). The localizer runs on all
B·K (query, video) pairs;

- `L_loc = L_st + L_ed` (Eq. 11): `shared_norm_ce` over the clips of all K videos
  (`shared_norm: false`: a softmax within the GT video only; the negatives still pass through
  the localizer for the adversarial term);
- `L_adv` (relevant-content adversarial classification): positives = spans of the GT video with
  inclusive-clip IoU > 0.7 to the GT span (the data side samples them), negatives = the top-5
  spans the localizer currently predicts in each negative video (indices under `no_grad`, the
  §6 length window); BCE averaged over both (`adversarial: false` drops it);
- `L = L_loc + λ L_adv`, λ = 0.8. Logged: `train/L_st`, `train/L_ed`, `train/L_loc`,
  `train/L_adv`, `train/loss`.

Evaluation: the VCMR pipeline of SPEC §6 (`inference.vcmr`) on the split's queries. At the
start of the epoch every video of the split is encoded once (the query-independent half of the
localizer); each query batch is localized on its top-10 retrieved videos and on its GT video
(SVMR); at epoch end the predictions are gathered across ranks by query index and scored with
the TVR definitions: `<split>/VCMR_R@k IoUθ`, `<split>/SVMR_R@k IoUθ`, `<split>/VR_R@k`, per
query type with a `_v`/`_t`/`_vt` suffix, and `<split>/VCMR_selection` (= VCMR R@1 IoU0.5 +
R@1 IoU0.7, the checkpoint-selection metric of SPEC §5).

`export_artifacts` (called by `train(cfg)` with the best weights) reruns the pipeline on val
and test, writes `submission_<split>.json` (TVR format) and `vcmr_results_<split>.json` (the
nested in-memory metrics) into the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from partial_relevance.inference.spans import repeat_best_span, top_spans
from partial_relevance.inference.vcmr import (
    VcmrInferenceConfig,
    VcmrPredictions,
    VideoCache,
    collect_predictions,
    flat_vcmr_metrics,
    predict_queries,
    run_vcmr,
)
from partial_relevance.lit.base import OptimizerFactory, PartialRelevanceModule
from partial_relevance.losses.prem import adversarial_bce, localizer_loss, shared_norm_ce
from partial_relevance.metrics.submission import write_submission
from partial_relevance.models.precision import inference_net
from partial_relevance.models.prem_localizer import PremLocalizer, index_encoding

__all__ = ["PremLocalizerLitModule"]

LOGGED_ON_PROGRESS_BAR = ("VCMR_selection", "VCMR_R@1 IoU0.7", "SVMR_R@1 IoU0.7")


class PremLocalizerLitModule(PartialRelevanceModule):
    """Trains `PremLocalizer` with Eq. 12 and evaluates it with the SPEC §6 pipeline."""

    def __init__(
        self,
        net: PremLocalizer | Mapping,
        optimizer: OptimizerFactory | Mapping,
        adv_weight: float,
        adversarial: bool,
        shared_norm: bool,
        adv_top_n: int,
        warmup_fraction: float | None,
        inference: Mapping,
        export_splits: Sequence[str],
        compile: bool,
    ) -> None:
        """Every value comes from `conf/model/prem_localizer.yaml` (λ, top-5: SPEC §5)."""
        super().__init__(net, optimizer, warmup_fraction, compile)
        self.adv_weight = adv_weight
        self.adversarial = adversarial
        self.shared_norm = shared_norm
        self.adv_top_n = adv_top_n
        self.inference_cfg = VcmrInferenceConfig.from_mapping(inference)
        self.export_splits = tuple(export_splits)
        self._cache: VideoCache | None = None
        # The net one evaluation pass runs (its reduced-precision copy, if any), in a plain
        # dict so it is never a submodule (nor in checkpoints).
        self._eval_nets: dict[str, torch.nn.Module] = {}
        self._eval_split: str | None = None
        self._eval_out: dict[str, list] = {}
        self.last_predictions: VcmrPredictions | None = None
        self._final_predictions: dict[str, VcmrPredictions] = {}

    # ------------------------------------------------------------------ training
    def training_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every term of Eq. 12 for one batch (dict; `loss` is the total)."""
        net = self.net
        B, K = batch["video_index"].shape
        videos = net.encode_videos(
            batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"]
        )  # [B·K, L, D]
        queries = net.encode_queries(batch["query_tokens"], batch["query_mask"])  # [B, ...]
        pair_query = torch.arange(B, device=self.device).repeat_interleave(K)  # [B·K]
        out = net.localize(videos, index_encoding(queries, pair_query))
        L = out["start"].shape[-1]
        start = out["start"].view(B, K, L)
        end = out["end"].view(B, K, L)
        clip_mask = out["clip_mask"].view(B, K, L)
        gt_st, gt_ed = batch["span"][:, 0], batch["span"][:, 1]
        l_st = shared_norm_ce(start, start, clip_mask, gt_st, gt_st, self.shared_norm) / 2
        l_ed = shared_norm_ce(end, end, clip_mask, gt_ed, gt_ed, self.shared_norm) / 2
        adv = self.adversarial_loss(batch, out, B, K) if self.adversarial else None
        terms = localizer_loss(l_st + l_ed, adv, self.adv_weight)
        return {"L_st": l_st, "L_ed": l_ed, **terms}

    def adversarial_loss(
        self, batch: Mapping[str, Tensor], out: Mapping[str, Tensor], B: int, K: int
    ) -> Tensor:
        """`L_adv` (SPEC §5): BCE on GT-video positives and negative videos' current top spans."""
        fused = out["fused"].view(B, K, *out["fused"].shape[1:])  # [B, K, L, D]
        clip_mask = out["clip_mask"].view(B, K, -1)  # [B, K, L]
        pos_logits = self.net.span_logits(
            fused[:, 0], clip_mask[:, 0], batch["pos_spans"], batch["pos_mask"]
        )  # [B, S]
        logits, labels, masks = [pos_logits], [torch.ones_like(pos_logits)], [batch["pos_mask"]]
        if K > 1:
            neg_fused = fused[:, 1:].reshape(B * (K - 1), *fused.shape[2:])  # [B(K-1), L, D]
            neg_mask = clip_mask[:, 1:].reshape(B * (K - 1), -1)
            with torch.no_grad():
                start = out["start"].view(B, K, -1)[:, 1:].reshape(B * (K - 1), -1)
                end = out["end"].view(B, K, -1)[:, 1:].reshape(B * (K - 1), -1)
                spans = repeat_best_span(
                    *top_spans(
                        start.log_softmax(-1),
                        end.log_softmax(-1),
                        neg_mask,
                        self.inference_cfg.min_len,
                        self.inference_cfg.max_len,
                        self.adv_top_n,
                    )
                )  # [B(K-1), top_n, 2]
            span_mask = neg_mask.any(-1, keepdim=True).expand(-1, spans.shape[1])
            neg_logits = self.net.span_logits(neg_fused, neg_mask, spans, span_mask)
            logits.append(neg_logits.reshape(B, -1))
            labels.append(torch.zeros_like(logits[-1]))
            masks.append(span_mask.reshape(B, -1))
        return adversarial_bce(torch.cat(logits, 1), torch.cat(labels, 1), torch.cat(masks, 1))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.training_losses(batch)
        self.log_terms(terms, len(batch["span"]))
        return terms["loss"]

    # ---------------------------------------------------------------- evaluation
    def _datamodule(self) -> Any:
        return self.trainer.datamodule

    @torch.no_grad()
    def _start_eval(self, split: str) -> None:
        """Encode every video of `split` once (query-independent, reused by every query)."""
        was_training = self.net.training
        self.net.eval()
        self._eval_nets = {"net": inference_net(self.net, self.inference_cfg.precision)}
        self._cache = VideoCache.build(
            self._eval_nets["net"], self._datamodule().video_loader(split), self.device
        )
        self.net.train(was_training)
        self._eval_split = split
        self._eval_out = {"index": [], "vcmr": [], "svmr": [], "vr": []}

    def _eval_step(self, batch: Mapping[str, Tensor]) -> None:
        assert self._cache is not None
        net = self._eval_nets.get("net", self.net)
        out = predict_queries(net, self._cache, batch, self.inference_cfg)
        self._eval_out["index"].extend(batch["query_index"].tolist())
        for key in ("vcmr", "svmr", "vr"):
            self._eval_out[key].extend(out[key])

    def _end_eval(self, prefix: str) -> dict[str, float]:
        """Gather every rank's predictions, score them (SPEC §7), log `<prefix>/...`."""
        gathered = self.gather_objects(self._eval_out)  # every rank's predictions
        store = {k: [x for part in gathered for x in part[k]] for k in self._eval_out}
        split = self._datamodule().all_splits()[self._eval_split]
        predictions = collect_predictions(split, store["index"], store)
        self.last_predictions = predictions
        if self.trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            # trainer.validate / test (train(cfg): the best checkpoint): export reuses these
            self._final_predictions[predictions.split] = predictions
        self._cache, self._eval_out, self._eval_nets = None, {}, {}
        metrics = flat_vcmr_metrics(predictions.evaluate(), prefix)
        for name, value in metrics.items():
            short = name.split("/", 1)[1]
            # every rank holds the same gathered numbers: log them everywhere (no sync)
            self.log(name, value, prog_bar=short in LOGGED_ON_PROGRESS_BAR)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval(self._datamodule().test_split)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test" if self._eval_split == "test" else "val")

    # ------------------------------------------------------------------- export
    def export_artifacts(
        self, trainer: pl.Trainer, datamodule: Any, output_dir: str | Path
    ) -> dict[str, Any]:
        """Predict each split of `export_splits` that has rankings with the loaded (best)
        weights (reusing the predictions of the preceding `trainer.validate` / `test` call,
        else rerunning the SPEC §6 pipeline), write `submission_<split>.json` (TVR format,
        SPEC §7) and `vcmr_results_<split>.json` (the nested in-memory metrics) into
        `output_dir`.

        Returns `{"<split>/submission": path, "<split>/vcmr_results": path}`; only global
        rank 0 writes.
        """
        out: dict[str, Any] = {}
        if not trainer.is_global_zero or not hasattr(datamodule, "rankings"):
            return out
        device = trainer.strategy.root_device
        self.to(device)
        for split in self.export_splits:
            if split not in datamodule.rankings:
                continue
            predictions = self._final_predictions.get(split)
            if predictions is None:
                predictions = run_vcmr(self.net, datamodule, split, self.inference_cfg, device)
            path = Path(output_dir) / f"submission_{split}.json"
            write_submission(
                path,
                predictions.video2idx,
                predictions.queries,
                predictions.vcmr,
                predictions.svmr,
                predictions.vr,
            )
            out[f"{split}/submission"] = str(path)
            results = predictions.evaluate()
            if results:
                results_path = Path(output_dir) / f"vcmr_results_{split}.json"
                results_path.write_text(json.dumps(results, indent=2))
                out[f"{split}/vcmr_results"] = str(results_path)
        return out
