"""PRVR rank metrics against hand-computed values (SPEC §7)."""

from __future__ import annotations

import pytest
import torch

from partial_relevance.inference.ranking import rank_corpus
from partial_relevance.metrics.retrieval import (
    chance_recall,
    chunked_ranks,
    finite_scores,
    gt_columns,
    ranks_from_scores,
    recall_at_k,
)

NAN, INF = float("nan"), float("inf")


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


def test_non_finite_gt_score_is_the_worst_rank_never_a_hit():
    # Issue #18: a NaN compares false, so `scores > NaN` counted nothing and gave rank 1.
    scores = torch.tensor(
        [
            [NAN, 0.1, 0.5, 0.2],  # GT 0 NaN -> rank 4 (number of videos)
            [0.3, INF, 0.8, 0.2],  # GT 1 +inf -> rank 4, not 1
            [0.3, 0.1, -INF, 0.2],  # GT 2 -inf -> rank 4
            [NAN, NAN, NAN, NAN],  # everything NaN (e.g. a zero-token query) -> rank 4
        ]
    )
    positive = torch.tensor([0, 1, 2, 3])
    assert ranks_from_scores(scores, positive).tolist() == [4, 4, 4, 4]
    assert recall_at_k(ranks_from_scores(scores, positive), ks=(1, 3))["SumR"] == 0.0


def test_non_finite_other_scores_never_beat_a_finite_gt():
    scores = torch.tensor(
        [
            [0.2, NAN, INF, 0.5],  # GT 0: NaN and +inf are the worst; 0.5 higher -> rank 2
            [-0.9, -INF, NAN, -1.0],  # GT 0: nothing finite higher -> rank 1
            [0.1, INF, 0.3, 0.0],  # GT 3: +inf worst; 0.1 and 0.3 higher -> rank 3
        ]
    )
    assert ranks_from_scores(scores, torch.tensor([0, 0, 3])).tolist() == [2, 1, 3]


def test_finite_scores_maps_every_non_finite_value_to_minus_inf():
    out = finite_scores(torch.tensor([1.0, NAN, INF, -INF, -2.0]))
    assert out.tolist() == [1.0, -INF, -INF, -INF, -2.0]


def test_rank_corpus_never_lists_a_non_finite_score_first():
    scores = torch.tensor([[0.1, NAN, 0.3, INF], [NAN, 0.2, 0.1, 0.0]])
    ranking = rank_corpus(lambda rows: scores[rows], 2, k=2, positive=torch.tensor([3, 0]))
    assert ranking.indices.tolist() == [[2, 0], [1, 2]]
    assert ranking.ranks.tolist() == [4, 4]  # both GT scores are non-finite


def test_gt_columns_maps_global_ids_and_flags_videos_not_encoded():
    # Columns are the encoded videos 3, 5, 9 (a partial corpus, e.g. under fast_dev_run).
    columns, encoded = gt_columns(torch.tensor([3, 5, 9]), torch.tensor([9, 4, 3, 12, 5]))
    assert encoded.tolist() == [True, False, True, False, True]
    assert columns[encoded].tolist() == [2, 0, 1]
    columns, encoded = gt_columns(torch.zeros(0, dtype=torch.long), torch.tensor([1]))
    assert encoded.tolist() == [False]
