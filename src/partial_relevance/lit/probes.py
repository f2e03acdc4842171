"""`PrvrProbes`: the PRVR mechanism probes logged during a synthetic run (`callbacks=prvr_probes`).

Reads the synthetic corpus's latent truth (`latent_truth.json`, never read by the model) and,
every training epoch, logs under `probe/` (metrics/probes.py for the definitions):

- ICE: `ice_pairs` (mined pairs a batch at the configured β_t), `ice_precision`, `ice_chance`,
  and `ice_pairs@<β>`, `ice_precision@<β>` for every β in `thresholds`, same batches;
- IRM: `irm_rv_query`, `irm_random_query`, `irm_rq_target`, `irm_random_target`;
- TCP: `tcp_acc_<branch>` (training batches' shuffled sequences) and `tcp_acc_<branch>_val`
  (the first `val_tcp_batches` validation video batches, under `no_grad`), and
  `tcp_acc_<branch>_moved_val` on the positions whose content came from another group (the
  rest keep their position's group: predictable from the position alone).

It consumes TEAM interface 3 of `PrvrLitModule`: it sets `collect_probe_inputs = True` and reads
`outputs["probe_inputs"]`. Probing draws no number from the global RNGs (its own generator;
the validation TCP shuffle runs inside `torch.random.fork_rng`), so a run with probes trains
exactly as without.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from partial_relevance.data.synthetic import load_truth
from partial_relevance.metrics.probes import (
    IGNORE_INDEX,
    batch_probes,
    moment_topics,
    summarize_probes,
    tcp_accuracy,
)

PREFIX = "probe/"


class PrvrProbes(pl.Callback):
    """Logs the ICE / IRM / TCP probes of a synthetic PRVR run under `probe/` (see module doc)."""

    def __init__(
        self,
        thresholds: Sequence[float | None] = (None, 0.2, 0.4, 0.6, 0.8),
        val_tcp_batches: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.thresholds = tuple(None if t is None else float(t) for t in thresholds)
        self.val_tcp_batches = val_tcp_batches
        self.generator = torch.Generator().manual_seed(seed)
        self.video_topics: Tensor | None = None  # [V, T_m] per training video
        self.query_topic: Tensor | None = None  # [Q] per training query
        self.queries_of_video: list[list[int]] = []
        self.totals: dict[str, float] = defaultdict(float)
        self.val_totals: dict[str, float] = defaultdict(float)
        self.val_batches = 0

    # ---------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if getattr(dm, "synthetic", None) is None or not hasattr(dm, "splits"):
            raise ValueError(
                "callbacks.prvr_probes: the probes read the synthetic corpus's latent truth; "
                "use a synthetic PRVR data config (data=prvr_synthetic or prvr_synthetic_fig1)"
            )
        if not hasattr(pl_module, "collect_probe_inputs"):
            raise ValueError(
                "callbacks.prvr_probes: the model has no `collect_probe_inputs` (a PRVR "
                "LightningModule provides it)"
            )
        dm.setup("fit")
        truth = load_truth(Path(dm.dataset_root()).parent)["splits"]["train"]
        split = dm.splits["train"]
        num_moments = int(dm.preprocess["num_moments"])
        topics = []
        for video_id in split.video_ids:
            video = truth["videos"][video_id]
            topics.append(moment_topics(video["num_clips"], video["events"], num_moments))
        self.video_topics = torch.from_numpy(np.stack(topics))
        self.query_topic = torch.tensor(
            [truth["queries"][q.query_id]["topic"] for q in split.queries], dtype=torch.long
        )
        self.queries_of_video = split.queries_of_video
        pl_module.collect_probe_inputs = True

    def _topics(self, inputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(moment topics [b*T_m], query topics [n]) of a training batch."""
        assert self.video_topics is not None and self.query_topic is not None
        videos = inputs["video_index"].cpu()
        if "query_index" in inputs:
            queries = inputs["query_index"].cpu()
        else:  # the training collate lists each video's queries in split order
            queries = torch.tensor(
                [q for v in videos.tolist() for q in self.queries_of_video[v]], dtype=torch.long
            )
        if len(queries) != int(inputs["query_video"].numel()):
            raise RuntimeError("prvr_probes: the batch's queries do not match the split's")
        return self.video_topics[videos].reshape(-1), self.query_topic[queries]

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.totals = defaultdict(float)

    def on_train_batch_end(self, _trainer: Any, _module: Any, outputs: Any, *_: Any) -> None:
        """Accumulate the probes of one training batch (its `probe_inputs`; trainer, module,
        batch and index unused)."""
        inputs = outputs.get("probe_inputs") if isinstance(outputs, dict) else None
        if not inputs:
            return
        inputs = {
            k: ({b: t.cpu() for b, t in v.items()} if isinstance(v, dict) else v.cpu())
            for k, v in inputs.items()
        }
        moment_topic, query_topic = self._topics(inputs)
        for key, value in batch_probes(
            inputs, moment_topic, query_topic, self.thresholds, self.generator
        ).items():
            self.totals[key] += value

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        values = summarize_probes(dict(self.totals))
        if values:
            pl_module.log_dict(
                {PREFIX + k: float(v) for k, v in values.items()}, on_step=False, on_epoch=True
            )

    # ---------------------------------------------------------------- validation (TCP)
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.val_totals = defaultdict(float)
        self.val_batches = 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        tcp = getattr(pl_module, "tcp_cfg", None)
        if dataloader_idx != 0 or not getattr(tcp, "enabled", False):
            return
        if trainer.sanity_checking or self.val_batches >= self.val_tcp_batches:
            return
        self.val_batches += 1
        devices = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            enc = pl_module.net.encode_videos(
                batch["moments"], batch["frames"], batch["frame_mask"]
            )
            branches = pl_module.tcp_predictions(enc)
        for name, (_, place, logits, labels) in branches.items():
            logits = logits.reshape(-1, logits.shape[-1]).float().cpu()
            labels, place = labels.reshape(-1).cpu(), place.reshape(-1).cpu()
            # every position, and only those whose content came from another group (the
            # others keep their position's group, predictable from the position alone)
            moved = labels.masked_fill(labels == place, IGNORE_INDEX)
            for key, target in ((name, labels), (f"{name}_moved", moved)):
                valid = int((target != IGNORE_INDEX).sum())
                if valid:
                    self.val_totals[f"{key}_n"] += valid
                    self.val_totals[f"{key}_right"] += tcp_accuracy(logits, target) * valid

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {
            f"{PREFIX}tcp_acc_{key[: -len('_n')]}_val": self.val_totals[
                key[: -len("_n")] + "_right"
            ]
            / n
            for key, n in self.val_totals.items()
            if key.endswith("_n") and n > 0
        }
        if values:
            pl_module.log_dict(values, on_step=False, on_epoch=True)
