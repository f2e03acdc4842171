"""PRVR rank metrics against hand-computed values (SPEC §7)."""

from __future__ import annotations

import pytest
import torch

from partial_relevance.metrics.retrieval import (
    chance_recall,
    chunked_ranks,
    ranks_from_scores,
    recall_at_k,
)


def test_ranks_with_ties_count_in_the_querys_favour():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5],  # GT 0: nothing higher -> rank 1
            [0.4, 0.4, 0.8],  # GT 1: 0.4 ties 0.4 (not counted), 0.8 higher -> rank 2
            [0.7, 0.7, 0.7],  # GT 2: all tied -> rank 1
            [0.3, 0.2, 0.1],  # GT 2: two higher -> rank 3
        ]
    )
    positive = torch.tensor([0, 1, 2, 2])
    assert ranks_from_scores(scores, positive).tolist() == [1, 2, 1, 3]


def test_recall_at_k_and_sumr_hand_values():
    ranks = torch.tensor([1, 2, 1, 3])
    out = recall_at_k(ranks, ks=(1, 2, 5))
    assert out["R@1"] == pytest.approx(50.0)
    assert out["R@2"] == pytest.approx(75.0)
    assert out["R@5"] == pytest.approx(100.0)
    assert out["SumR"] == pytest.approx(225.0)


def test_sumr_sums_unrounded_values():
    ranks = torch.tensor([1, 5, 5])  # R@1 = 33.333.., R@5 = 100
    out = recall_at_k(ranks, ks=(1, 5))
    assert out["SumR"] == pytest.approx(100 / 3 + 100)


def test_chunked_ranks_equals_full_matrix():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(37, 11, generator=generator)
    positive = torch.randint(0, 11, (37,), generator=generator)
    full = ranks_from_scores(scores, positive)
    chunked = chunked_ranks(lambda rows: scores[rows], positive, 37, chunk=5)
    assert torch.equal(full, chunked)


def test_negative_scores_still_rank():
    # torchmetrics' RetrievalRecall would call these "not retrieved"; ranks do not care.
    scores = torch.tensor([[-0.5, -0.9], [-0.9, -0.5]])
    assert ranks_from_scores(scores, torch.tensor([0, 1])).tolist() == [1, 1]


def test_chance_level():
    out = chance_recall(500)
    assert out["R@1"] == pytest.approx(0.2)
    assert out["R@100"] == pytest.approx(20.0)
    assert out["SumR"] == pytest.approx(0.2 + 1 + 2 + 20)
    assert chance_recall(50)["R@100"] == 100.0


def test_empty_ranks_raise():
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k(torch.zeros(0, dtype=torch.long))
