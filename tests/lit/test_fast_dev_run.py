"""`+trainer.fast_dev_run=true` runs every task (issue #22): one batch of each loader, so the
evaluation corpus is partial and is scored over the queries whose video was encoded."""

from __future__ import annotations

import json

from partial_relevance.train import train
from support import TINY_SYNTHETIC, compose_train_config

TINY = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
COMMON = ["logger=none", "+trainer.fast_dev_run=true", "trainer.enable_progress_bar=false"]


def test_prvr_fast_dev_run_scores_the_partial_corpus(tmp_path, synthetic_cache):
    # 5 videos of the 12 per evaluation batch: the queries of the other 7 are left out.
    overrides = [*COMMON, *TINY, "data.batch_size=4", "data.eval_video_batch_size=5"]
    out = tmp_path / "prvr"
    train(compose_train_config(overrides, out, synthetic_cache))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["val/SumR"] <= 400 and 0 <= metrics["test/SumR"] <= 400


def test_prem_fast_dev_run_retriever_then_localizer(tmp_path, synthetic_cache):
    small = ["model.net.hidden_dim=16", "model.net.ffn_dim=32"]
    retriever = tmp_path / "retriever"
    overrides = ["experiment=prem_retriever_synthetic", *COMMON, *TINY, *small]
    overrides += ["data.batch_size=8", "data.eval_batch_size=5"]
    train(compose_train_config(overrides, retriever, synthetic_cache))
    metrics = json.loads((retriever / "metrics.json").read_text())
    assert 0 <= metrics["val/VR_SumR"] <= 400
    localizer = tmp_path / "localizer"
    overrides = ["experiment=prem_synthetic", *COMMON, *TINY, *small]
    overrides += [f"data.ranking_file={metrics['ranking_file']}", "data.batch_size=4"]
    overrides += ["data.eval_batch_size=5"]
    train(compose_train_config(overrides, localizer, synthetic_cache))
    assert (localizer / "metrics.json").is_file()
