"""Mechanism probes of the PRVR modules against the synthetic corpus's latent truth.

Pure functions: does each module do the job PRVR §3.3-3.5 describes?

- ICE (§3.3): how many moment/query pairs Eq. 8 mines and their **precision**: a pair is
  right when its moment lies inside an event of the same topic as the query's own moment
  (`latent_truth.json`, `data.synthetic.load_truth`), beside the chance level (a moment of
  another video drawn at random) and the precision at other β_t on the same similarity matrix.
- IRM (§3.4): mean cosine of r_v with the query and of r_q with the target moment (both must
  be "irrelevant"), against the same statistic for random moments of the query's video.
- TCP (§3.5): order-prediction accuracy on the shuffled sequence's positions.

Topic labels: `moment_topics` maps each of a video's `T_m` pooled moments to the topic of the
events it covers (`-1` when the window spans events of different topics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from partial_relevance.data.preprocess import pooling_weights

MIXED = -1  # moment label: the window covers events of different topics
IGNORE_INDEX = -100  # TCP label of a position that is not predicted


def clip_topics(num_clips: int, events: Sequence[dict]) -> np.ndarray:
    """`[num_clips]` topic of every clip from the sidecar's events (`span` inclusive)."""
    topics = np.full(num_clips, MIXED, dtype=np.int64)
    for event in events:
        st, ed = event["span"]
        topics[int(st) : int(ed) + 1] = int(event["topic"])
    return topics


def moment_topics(num_clips: int, events: Sequence[dict], num_moments: int = 32) -> np.ndarray:
    """`[num_moments]` topic of each pooled moment (the windows of `mean_pool`, SPEC §1.3):
    the topic shared by every clip it averages, `MIXED` (-1) when they differ."""
    clips = clip_topics(num_clips, events)
    inside = pooling_weights(num_clips, num_moments) > 0  # [T_m, num_clips]
    out = np.full(num_moments, MIXED, dtype=np.int64)
    for m in range(num_moments):
        labels = np.unique(clips[inside[m]])
        if len(labels) == 1:
            out[m] = labels[0]
    return out


def ice_pair_precision(
    moment_idx: Tensor, query_idx: Tensor, moment_topic: Tensor, query_topic: Tensor
) -> tuple[int, float]:
    """(number of mined pairs, fraction whose moment's topic is the query's topic).

    `moment_idx`, `query_idx` [n_c]: the pairs (flat batch moment index, query index);
    `moment_topic` [b*T_m] (MIXED never matches), `query_topic` [n]. Precision is NaN
    without pairs.
    """
    n_c = int(query_idx.numel())
    if n_c == 0:
        return 0, float("nan")
    right = moment_topic[moment_idx] == query_topic[query_idx]  # [n_c]
    return n_c, float(right.float().mean())


def ice_chance_precision(
    moment_topic: Tensor, query_topic: Tensor, moment_video: Tensor, query_video: Tensor
) -> float:
    """Precision of a miner that picks, for every query, a moment of another batch video
    uniformly at random: the mean over queries of the same-topic share of those moments.

    `moment_topic` [b*T_m], `moment_video` [b*T_m] (batch video of each moment);
    `query_topic` [n], `query_video` [n]."""
    same_topic = moment_topic[:, None] == query_topic[None, :]  # [b*T_m, n]
    other = moment_video[:, None] != query_video[None, :]  # [b*T_m, n]
    hits = (same_topic & other).sum(dim=0).float()  # [n]
    candidates = other.sum(dim=0).float().clamp_min(1.0)  # [n]
    if query_topic.numel() == 0:
        return float("nan")
    return float((hits / candidates).mean())


def ice_mutual_pairs(similarity: Tensor, moment_video: Tensor, query_video: Tensor) -> Tensor:
    """Eq. 8 without the threshold: `[n]` the mutual-argmax moment of each query, -1 where the
    query has none. `similarity` [b*T_m, n] is the cosine ICE mines on; entries of the query's
    own video are ignored (set to -1, as `losses.prvr.ice_select_pairs` does)."""
    same_video = moment_video[:, None] == query_video[None, :]  # [b*T_m, n]
    S = similarity.masked_fill(same_video, -1.0)
    best_query = S.argmax(dim=1)  # [b*T_m]
    best_moment = S.argmax(dim=0)  # [n]
    queries = torch.arange(S.shape[1], device=S.device)
    keep = (best_query[best_moment] == queries) & ~same_video[best_moment, queries]
    return torch.where(keep, best_moment, torch.full_like(best_moment, -1))


def ice_precision_by_threshold(
    similarity: Tensor,
    moment_video: Tensor,
    query_video: Tensor,
    moment_topic: Tensor,
    query_topic: Tensor,
    thresholds: Sequence[float | None],
) -> dict[float | None, tuple[int, float]]:
    """`{β_t: (pairs, precision)}` of Eq. 8's pairs at each threshold (None: no threshold),
    all from the one similarity matrix of a batch."""
    mutual = ice_mutual_pairs(similarity, moment_video, query_video)  # [n]
    queries = torch.arange(similarity.shape[1], device=similarity.device)
    out: dict[float | None, tuple[int, float]] = {}
    for beta in thresholds:
        keep = mutual >= 0
        if beta is not None:
            keep &= similarity[mutual.clamp_min(0), queries] > beta
        out[beta] = ice_pair_precision(mutual[keep], queries[keep], moment_topic, query_topic)
    return out


def irm_cosines(
    r_v: Tensor,
    r_q: Tensor,
    query: Tensor,
    target_moment: Tensor,
    moments: Tensor,
    query_video: Tensor,
    random_moment: Tensor,
) -> dict[str, float]:
    """IRM's two "irrelevant" features against a random moment of the query's video.

    `r_v`, `r_q`, `query`, `target_moment` [n, D]; `moments` [b, T_m, D]; `query_video` [n];
    `random_moment` [n] long, a moment index per query (drawn by the caller). Returns the mean
    cos(r_v, q), cos(random moment, q), cos(r_q, target moment), cos(random moment, target).
    """
    rand = moments[query_video, random_moment]  # [n, D]
    return {
        "rv_query": float(F.cosine_similarity(r_v, query, dim=-1).mean()),
        "random_query": float(F.cosine_similarity(rand, query, dim=-1).mean()),
        "rq_target": float(F.cosine_similarity(r_q, target_moment, dim=-1).mean()),
        "random_target": float(F.cosine_similarity(rand, target_moment, dim=-1).mean()),
    }


def tcp_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Order-prediction accuracy: argmax of `logits` [P, g] against `labels` [P], positions
    labelled `IGNORE_INDEX` left out; NaN when none is left."""
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return float("nan")
    return float((logits[valid].argmax(dim=-1) == labels[valid]).float().mean())


def threshold_name(beta: float | None) -> str:
    """Metric-name suffix of a β_t value: `none`, `0.4`."""
    return "none" if beta is None else f"{beta:g}"


def batch_probes(
    inputs: dict,
    moment_topic: Tensor,
    query_topic: Tensor,
    thresholds: Sequence[float | None] = (None, 0.2, 0.4, 0.6, 0.8),
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Every probe of one training batch, as sums and counts that add up over batches.

    `inputs`: the `probe_inputs` of `PrvrLitModule.training_step` (TEAM interface 3; keys only
    for the enabled modules). `moment_topic` [b*T_m] is the latent topic of each batch moment
    (`moment_topics` per video, flattened in batch order), `query_topic` [n] of each query.
    Returns `{name: value}` where `*_sum` / `*_n` pairs form a mean over batches:
    `ice_pairs_n` (batches), `ice_pairs_sum` (pairs at the configured β_t), `ice_right_sum`,
    `ice_chance_sum`; per β_t `ice_pairs@b_sum`, `ice_right@b_sum`; `irm_*_sum` and `irm_n`
    (queries); `tcp_<branch>_right_sum`, `tcp_<branch>_n` (positions).
    """
    out: dict[str, float] = {}
    query_video = inputs["query_video"]  # [n]
    if "ice_similarity" in inputs:
        similarity = inputs["ice_similarity"].float()  # [b*T_m, n]
        num_moments = similarity.shape[0] // int(inputs["video_index"].numel())
        moment_video = torch.arange(similarity.shape[0], device=similarity.device) // num_moments
        pairs = inputs["ice_pairs"]  # [n_c, 2] (flat moment, query)
        n_c, precision = ice_pair_precision(pairs[:, 0], pairs[:, 1], moment_topic, query_topic)
        out["ice_n"] = 1.0
        out["ice_pairs_sum"] = float(n_c)
        out["ice_right_sum"] = 0.0 if n_c == 0 else precision * n_c
        out["ice_chance_sum"] = ice_chance_precision(
            moment_topic, query_topic, moment_video, query_video
        )
        by_beta = ice_precision_by_threshold(
            similarity, moment_video, query_video, moment_topic, query_topic, thresholds
        )
        for beta, (count, prec) in by_beta.items():
            name = threshold_name(beta)
            out[f"ice_pairs@{name}_sum"] = float(count)
            out[f"ice_right@{name}_sum"] = 0.0 if count == 0 else prec * count
    if "irm_r_v" in inputs:
        moments = inputs["moments"]  # [b, T_m, D]
        n = int(query_video.numel())
        random_moment = torch.randint(
            moments.shape[1], (n,), generator=generator, device=torch.device("cpu")
        ).to(moments.device)
        cos = irm_cosines(
            inputs["irm_r_v"].float(),
            inputs["irm_r_q"].float(),
            inputs["query"].float(),
            inputs["target_moment"].float(),
            moments.float(),
            query_video,
            random_moment,
        )
        out["irm_n"] = float(n)
        for key, value in cos.items():
            out[f"irm_{key}_sum"] = value * n
    for branch, logits in (inputs.get("tcp_logits") or {}).items():
        labels = inputs["tcp_labels"][branch]
        valid = int((labels != IGNORE_INDEX).sum())
        acc = tcp_accuracy(logits, labels)
        out[f"tcp_{branch}_n"] = float(valid)
        out[f"tcp_{branch}_right_sum"] = 0.0 if valid == 0 else acc * valid
    return out


def summarize_probes(totals: dict[str, float]) -> dict[str, float]:
    """The logged probe values from summed `batch_probes` outputs: pairs per batch, precision
    (pairs pooled over the batches), chance, per-β_t pairs and precision, IRM cosine means,
    TCP accuracies. A ratio with a zero count is left out."""
    out: dict[str, float] = {}

    def ratio(num: str, den: str, name: str) -> None:
        if totals.get(den, 0.0) > 0:
            out[name] = totals.get(num, 0.0) / totals[den]

    ratio("ice_pairs_sum", "ice_n", "ice_pairs")
    ratio("ice_right_sum", "ice_pairs_sum", "ice_precision")
    ratio("ice_chance_sum", "ice_n", "ice_chance")
    for key in totals:
        if key.startswith("ice_pairs@") and key.endswith("_sum"):
            name = key[len("ice_pairs@") : -len("_sum")]
            ratio(key, "ice_n", f"ice_pairs@{name}")
            ratio(f"ice_right@{name}_sum", key, f"ice_precision@{name}")
        if key.startswith("irm_") and key.endswith("_sum"):
            ratio(key, "irm_n", key[: -len("_sum")])
        if key.startswith("tcp_") and key.endswith("_right_sum"):
            branch = key[len("tcp_") : -len("_right_sum")]
            ratio(key, f"tcp_{branch}_n", f"tcp_acc_{branch}")
    return out
