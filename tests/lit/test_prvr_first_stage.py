"""A PRVR model as the VCMR first stage (lit.prvr_first_stage, data.prvr_vcmr): it trains on the
PRVR view of the VCMR corpus and writes the retriever's ranking file, which the localizer's
datamodule reads unchanged (SPEC §3, §5, §6.1)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lit_support import lit_module, model_net
from partial_relevance.data.prvr_vcmr import PrvrVcmrDataModule
from partial_relevance.data.rankings import ranking_splits, read_rankings
from partial_relevance.lit.prvr_first_stage import PrvrFirstStageLitModule
from partial_relevance.prem_pipeline import first_stage_experiment, main, parse_choices
from partial_relevance.train import train
from prem_support import tiny_localizer_datamodule
from support import (
    TINY_RUN_OVERRIDES,
    TINY_SYNTHETIC,
    TINY_SYNTHETIC_OVERRIDES,
    TINY_VCMR_DIMS,
    compose_train_config,
)


def test_train_writes_a_ranking_file_the_localizer_reads(tmp_path, synthetic_cache, tiny_corpus):
    out = tmp_path / "prvr"
    overrides = [
        "experiment=prvr_vcmr_synthetic_small",
        "logger=none",
        *TINY_RUN_OVERRIDES,
        *TINY_SYNTHETIC_OVERRIDES,
    ]
    cfg = compose_train_config(overrides, out, synthetic_cache)
    assert cfg.model._target_.endswith("PrvrFirstStageLitModule") and cfg.monitor == "val/SumR"
    train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    path = Path(metrics["ranking_file"])
    assert path.parent == out and sorted(ranking_splits(path)) == ["test", "train", "val"]
    # The ranking ranks as the PRVR evaluation does (Eq. 14 over the full split).
    for split in ("val", "test"):
        for k in (1, 5, 10, 100):
            assert metrics[f"{split}/VR_R@{k}"] == pytest.approx(metrics[f"{split}/R@{k}"])
    val = read_rankings(path, "val")
    assert val.video_idx.shape == (len(val.query_ids), TINY_SYNTHETIC["num_val_videos"])
    assert np.all(np.diff(val.scores, axis=1) <= 0)  # best first
    # The localizer's datamodule aligns it with its own splits and draws negatives from it.
    dm = tiny_localizer_datamodule(synthetic_cache, path)
    assert set(dm.rankings) == {"train", "val", "test"}
    item = dm.train_dataset()[0]
    assert len(item["videos"]) == 1 + dm.n_neg


@pytest.mark.parametrize("base", ["prvr", "prvr_mssl"])
def test_every_base_exports_the_ranking_of_its_inference_score(base, tmp_path, synthetic_cache):
    lengths = {"num_moments": 4, "max_frames": 50}
    dm = PrvrVcmrDataModule(
        synthetic=TINY_SYNTHETIC,
        cache_dir=str(synthetic_cache),
        **TINY_VCMR_DIMS,
        **lengths,
        eval_batch_size=7,
        eval_video_batch_size=5,
    )
    dm.setup()
    torch.manual_seed(0)
    dims = {"video_dim": TINY_VCMR_DIMS["visual_dim"], "query_dim": TINY_VCMR_DIMS["query_dim"]}
    net = model_net(base, **dims, hidden_dim=16, num_heads=2, dropout=0.0, **lengths)
    module = lit_module(
        PrvrFirstStageLitModule,
        "prvr_first_stage",
        net,
        partial(torch.optim.Adam),
        ranking={"k": 5},
    )
    trainer = SimpleNamespace(
        is_global_zero=True, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    out = module.export_artifacts(trainer, dm, tmp_path)
    ranking = read_rankings(out["ranking_file"], "val")
    assert ranking.k == 5
    # The stored top-5 is the top of Eq. 14 on the whole split, scored query by query.
    index, queries, _ = module.encode_split(dm, "val")
    with torch.no_grad():
        scores = net.score_queries(queries, index, 0.7)
    top = torch.topk(scores, 5, dim=1)
    np.testing.assert_array_equal(ranking.video_idx, top.indices.numpy())
    np.testing.assert_allclose(ranking.scores, top.values.numpy(), atol=1e-5)
    assert out["val/VR_R@100"] == 100.0


def test_pipeline_first_stage_choice(tmp_path):
    assert first_stage_experiment("prem", "small") == "prem_retriever_synthetic_small"
    assert first_stage_experiment("prvr", "small") == "prvr_vcmr_synthetic_small"
    assert first_stage_experiment("prvr_full", "full") == "prvr_full_vcmr_synthetic"
    assert first_stage_experiment("prem_modules", "small").startswith("prem_retriever_modules")
    assert parse_choices([]) == {"first_stage": "prem"}
    assert parse_choices(["first_stage=prvr"]) == {"first_stage": "prvr"}
    with pytest.raises(ValueError, match="choices"):
        first_stage_experiment("nope", "small")
    with pytest.raises(SystemExit):
        parse_choices(["trainer.max_epochs=1"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "second_stage=prvr"])


@pytest.mark.slow
def test_train_prem_with_the_prvr_first_stage_end_to_end(tmp_path, synthetic_cache, tiny_corpus):
    """`make train-prem ARGS="first_stage=prvr"` on a tiny config: PRVR ranks, the localizer
    trains on its rankings, the tables print, the submission round-trips."""
    common = [
        "logger=csv",
        f"paths.cache_dir={synthetic_cache}",
        *TINY_RUN_OVERRIDES,
        "run_test=false",
        *TINY_SYNTHETIC_OVERRIDES,
    ]
    argv = ["first_stage=prvr", "--out", str(tmp_path / "pipe"), "--threads", "1"]
    argv += [a for c in common for a in ("--common", c)]
    argv += ["--localizer", "model.net.ffn_dim=32"]
    assert main(argv) == 0
    retriever = json.loads((tmp_path / "pipe" / "retriever" / "metrics.json").read_text())
    assert "val/SumR" in retriever and "val/VR_R@1" in retriever
    results = json.loads((tmp_path / "pipe" / "localizer" / "vcmr_results_val.json").read_text())
    # VR of the localizer run is the PRVR model's ranking.
    assert results["VR"]["R@1"] == pytest.approx(retriever["val/VR_R@1"])
