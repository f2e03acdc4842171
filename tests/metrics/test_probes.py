"""The mechanism probes (metrics/probes.py) on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import torch

from partial_relevance.metrics.probes import (
    IGNORE_INDEX,
    MIXED,
    clip_topics,
    ice_chance_precision,
    ice_mutual_pairs,
    ice_pair_precision,
    ice_precision_by_threshold,
    irm_cosines,
    moment_topics,
    tcp_accuracy,
)

EVENTS = [
    {"span": [0, 3], "topic": 7},
    {"span": [4, 5], "topic": 2},
    {"span": [6, 7], "topic": 7},
]


def test_clip_and_moment_topics_follow_the_pooling_windows() -> None:
    assert clip_topics(8, EVENTS).tolist() == [7, 7, 7, 7, 2, 2, 7, 7]
    # 8 clips -> 4 moments: bounds round(linspace(0, 8, 5)) = 0 2 4 6 8, clamped to 7, so the
    # windows are [0,2) [2,4) [4,6) [6,7): all inside one event each.
    assert moment_topics(8, EVENTS, 4).tolist() == [7, 7, 2, 7]
    # 8 clips -> 3 moments: bounds 0 3 5 7 -> [0,3) topic 7, [3,5) clips 3 (7) and 4 (2): mixed,
    # [5,7) clips 5 (2), 6 (7): mixed.
    assert moment_topics(8, EVENTS, 3).tolist() == [7, MIXED, MIXED]


def test_ice_pair_precision_counts_right_pairs() -> None:
    moment_topic = torch.tensor([1, 2, MIXED, 1])
    query_topic = torch.tensor([1, 2, 3])
    n_c, precision = ice_pair_precision(
        torch.tensor([0, 2, 3]), torch.tensor([0, 2, 1]), moment_topic, query_topic
    )
    # pairs: (m0 topic 1, q0 topic 1) right; (m2 mixed, q2) wrong; (m3 topic 1, q1 topic 2) wrong
    assert n_c == 3 and math.isclose(precision, 1 / 3, rel_tol=1e-6)
    none = torch.zeros(0, dtype=torch.long)
    n_c, precision = ice_pair_precision(none, none, moment_topic, query_topic)
    assert n_c == 0 and math.isnan(precision)


def test_ice_chance_precision_averages_per_query() -> None:
    # two videos of 2 moments each: video 0 topics [1, 2], video 1 topics [1, 1]
    moment_topic = torch.tensor([1, 2, 1, 1])
    moment_video = torch.tensor([0, 0, 1, 1])
    # q0 (video 0, topic 1): other moments are video 1's, both topic 1 -> 1.0
    # q1 (video 1, topic 2): other moments are video 0's, one of two topic 2 -> 0.5
    chance = ice_chance_precision(
        moment_topic, torch.tensor([1, 2]), moment_video, torch.tensor([0, 1])
    )
    assert math.isclose(chance, 0.75, rel_tol=1e-6)


def test_ice_mutual_pairs_and_thresholds() -> None:
    # 2 videos x 2 moments, 2 queries (q0 of video 0, q1 of video 1)
    S = torch.tensor(
        [
            [0.9, 0.3],  # m0 (video 0): own video for q0, so only q1 counts for it
            [0.1, 0.5],  # m1 (video 0)
            [0.7, 0.2],  # m2 (video 1)
            [0.6, 0.8],  # m3 (video 1): own video for q1
        ]
    )
    moment_video = torch.tensor([0, 0, 1, 1])
    query_video = torch.tensor([0, 1])
    # q0: best other moment is m2 (0.7); m2's best query (q1 masked) is q0 -> mutual.
    # q1: best other moment is m1 (0.5); m1's best query: q0 masked (own video) -> q1: mutual.
    assert ice_mutual_pairs(S, moment_video, query_video).tolist() == [2, 1]
    moment_topic = torch.tensor([5, 6, 5, 6])
    query_topic = torch.tensor([5, 5])  # q0 with m2 (topic 5): right; q1 with m1 (6): wrong
    got = ice_precision_by_threshold(
        S, moment_video, query_video, moment_topic, query_topic, [None, 0.4, 0.6, 0.8]
    )
    assert got[None] == (2, 0.5)
    assert got[0.4] == (2, 0.5)
    assert got[0.6] == (1, 1.0)  # only q0's pair (0.7) passes
    assert got[0.8][0] == 0 and math.isnan(got[0.8][1])


def test_irm_cosines_against_random_moments() -> None:
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    query = torch.stack([e1, e1])  # [2, 2]
    target = torch.stack([e2, e2])
    r_v = torch.stack([e2, -e1])  # cos with query: 0, -1 -> mean -0.5
    r_q = torch.stack([e2, e1])  # cos with target: 1, 0 -> mean 0.5
    moments = torch.stack([torch.stack([e1, e2]), torch.stack([e2, e1])])  # [b=2, T_m=2, 2]
    query_video = torch.tensor([0, 1])
    random_moment = torch.tensor([0, 0])  # q0 -> video 0 moment 0 = e1; q1 -> video 1 m0 = e2
    got = irm_cosines(r_v, r_q, query, target, moments, query_video, random_moment)
    assert math.isclose(got["rv_query"], -0.5, abs_tol=1e-6)
    assert math.isclose(got["rq_target"], 0.5, abs_tol=1e-6)
    assert math.isclose(got["random_query"], 0.5, abs_tol=1e-6)  # cos(e1,e1)=1, cos(e2,e1)=0
    assert math.isclose(got["random_target"], 0.5, abs_tol=1e-6)  # 0 and 1


def test_tcp_accuracy_ignores_unlabelled_positions() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, IGNORE_INDEX, 1])
    assert math.isclose(tcp_accuracy(logits, labels), 2 / 3, rel_tol=1e-6)
    assert math.isnan(tcp_accuracy(logits[:1], torch.tensor([IGNORE_INDEX])))


def test_moment_topics_short_video_repeats_clips() -> None:
    # 3 clips pooled to 4 moments: bounds 0 1 2 2 3 -> clamp to 2: [0,1) [1,2) [2,2)->clip 2
    # [2,2)->clip 2
    events = [{"span": [0, 0], "topic": 1}, {"span": [1, 2], "topic": 4}]
    assert moment_topics(3, events, 4).tolist() == [1, 4, 4, 4]
    assert np.all(moment_topics(3, events, 4) >= 0)


def test_batch_probes_and_summary_on_a_hand_computed_batch() -> None:
    from partial_relevance.metrics.probes import batch_probes, summarize_probes

    S = torch.tensor([[0.9, 0.3], [0.1, 0.5], [0.7, 0.2], [0.6, 0.8]])  # 2 videos x T_m 2
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    inputs = {
        "video_index": torch.tensor([10, 11]),
        "query_video": torch.tensor([0, 1]),
        "ice_similarity": S,
        "ice_pairs": torch.tensor([[2, 0], [1, 1]]),  # at the configured β_t = 0.4
        "query": torch.stack([e1, e1]),
        "irm_r_v": torch.stack([e2, e2]),  # orthogonal to the queries: cos 0
        "irm_r_q": torch.stack([e2, e2]),
        "target_moment": torch.stack([e2, e2]),  # cos(r_q, target) 1
        "moments": torch.stack([torch.stack([e1, e1]), torch.stack([e1, e1])]),
        "tcp_logits": {"clip": torch.tensor([[1.0, 0.0], [1.0, 0.0]])},
        "tcp_labels": {"clip": torch.tensor([0, 1])},
    }
    moment_topic = torch.tensor([5, 6, 5, 6])
    query_topic = torch.tensor([5, 5])
    got = batch_probes(inputs, moment_topic, query_topic, (None, 0.6))
    assert got["ice_pairs_sum"] == 2 and got["ice_right_sum"] == 1.0
    # chance: q0 (video 0) vs video 1's moments [5, 6] -> 1/2; q1 (video 1) vs [5, 6] -> 1/2
    assert math.isclose(got["ice_chance_sum"], 0.5)
    assert got["ice_pairs@none_sum"] == 2 and got["ice_pairs@0.6_sum"] == 1
    assert got["ice_right@0.6_sum"] == 1.0
    assert got["irm_n"] == 2 and math.isclose(got["irm_rv_query_sum"], 0.0, abs_tol=1e-6)
    assert math.isclose(got["irm_rq_target_sum"], 2.0, rel_tol=1e-6)
    assert math.isclose(got["irm_random_query_sum"], 2.0, rel_tol=1e-6)  # every moment is e1
    assert got["tcp_clip_n"] == 2 and got["tcp_clip_right_sum"] == 1.0
    # two identical batches: means are per batch (pairs) or pooled (precision, cosines)
    totals = {k: 2 * v for k, v in got.items()}
    summary = summarize_probes(totals)
    assert summary["ice_pairs"] == 2.0 and summary["ice_precision"] == 0.5
    assert math.isclose(summary["ice_chance"], 0.5)
    assert summary["ice_precision@0.6"] == 1.0 and summary["ice_pairs@0.6"] == 1.0
    assert math.isclose(summary["irm_rq_target"], 1.0, rel_tol=1e-6)
    assert summary["tcp_acc_clip"] == 0.5
    assert "ice_precision@0.8" not in summary
