"""The experiments `make train-prem` runs per `--size` (prem_pipeline.EXPERIMENTS): they
compose, the two stages of a size read the same synthetic corpus, and the small presets keep
the paper's method (modality pooling, strong + weak relevance, shared-norm, adversarial)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from partial_relevance.prem_pipeline import EXPERIMENTS, compose_stage


def _stages(size: str, tmp_path: Path) -> tuple:
    names = EXPERIMENTS[size]
    retriever = compose_stage([f"experiment={names['retriever']}"], tmp_path / "r")
    localizer = compose_stage(
        [f"experiment={names['localizer']}", "data.ranking_file=/x/rankings.h5"], tmp_path / "l"
    )
    return retriever, localizer


@pytest.mark.parametrize("size", sorted(EXPERIMENTS))
def test_both_stages_of_a_size_read_the_same_corpus(size, tmp_path):
    retriever, localizer = _stages(size, tmp_path)
    assert retriever.model._target_.endswith("PremRetrieverLitModule")
    assert localizer.model._target_.endswith("PremLocalizerLitModule")
    assert OmegaConf.to_container(retriever.data.synthetic) == OmegaConf.to_container(
        localizer.data.synthetic
    )
    assert retriever.monitor == "val/VR_SumR" and localizer.monitor == "val/VCMR_selection"


def test_small_presets_keep_the_papers_method(tmp_path):
    retriever, localizer = _stages("small", tmp_path)
    assert retriever.data.synthetic.num_train_videos == 400
    net = retriever.model
    assert net.net.pooling == "modality" and net.strong_relevance and net.weak_relevance
    # the warm-up (whole-video positive) is a prefix; the strong positive trains after it
    assert 0 < net.positive_warmup_epochs < retriever.trainer.max_epochs
    loc = localizer.model
    assert loc.shared_norm and loc.adversarial and loc.net.gates
    assert loc.net.use_vis and loc.net.use_sub and net.net.use_vis and net.net.use_sub
    full_retriever, full_localizer = _stages("full", tmp_path)
    assert full_retriever.task_name == "prem_retriever_synthetic"
    assert full_localizer.task_name == "prem_synthetic"
