"""The PREM retriever LightningModule, chunked ranking and the ranking file (SPEC §4, §6.1)."""

from __future__ import annotations

import json
from functools import partial
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lit_support import golden_losses, lit_module
from partial_relevance.data.errors import DataError
from partial_relevance.data.rankings import (
    SplitRanking,
    ranking_splits,
    read_rankings,
    write_rankings,
)
from partial_relevance.data.vcmr import VcmrRetrieverDataModule, collate_vcmr_videos
from partial_relevance.inference.ranking import rank_corpus
from partial_relevance.lit.retriever import PremRetrieverLitModule, gather_video_encodings
from partial_relevance.metrics.vcmr import GroundTruth, vr_metrics, vr_recall
from partial_relevance.models.prem_retriever import (
    index_encoding,
    restricted_pair_score,
)
from partial_relevance.train import train
from prem_support import tiny_retriever
from support import TINY_SYNTHETIC, compose_train_config

DIMS = {
    "visual_dim": TINY_SYNTHETIC["vcmr_visual_dim"],
    "subtitle_dim": TINY_SYNTHETIC["subtitle_dim"],
    "query_dim": TINY_SYNTHETIC["query_dim"],
}
# First three training losses of `golden_run` (computed once on CPU, float32; the
# tolerance is ~1e-4 absolute, or 2e-6 relative for these magnitudes).
GOLDEN_LOSSES = (73.714828, 47.937775, 54.418613)  # τ = 0.01: large at init


@pytest.fixture(scope="module")
def dm(synthetic_cache, tiny_corpus) -> VcmrRetrieverDataModule:
    module = VcmrRetrieverDataModule(
        synthetic=TINY_SYNTHETIC,
        cache_dir=str(synthetic_cache),
        batch_size=16,
        eval_batch_size=5,  # several padded batches per split
        **DIMS,
    )
    module.setup()
    return module


def tiny_module(seed: int = 0, **kwargs) -> PremRetrieverLitModule:
    torch.manual_seed(seed)
    net = tiny_retriever()
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    return lit_module(PremRetrieverLitModule, "prem_retriever", net, optimizer, **kwargs)


def golden_run(dm: VcmrRetrieverDataModule, steps: int = 3) -> list[float]:
    module = tiny_module()
    optimizer = module.configure_optimizers()
    torch.manual_seed(1)  # the loader's shuffle
    losses = golden_losses(module, optimizer, islice(dm.train_dataloader(), steps))
    return [step[0] for step in losses]


def test_golden_first_three_training_losses(dm):
    assert golden_run(dm) == pytest.approx(GOLDEN_LOSSES, rel=2e-6, abs=1e-4)


def test_loss_terms_and_ablation_switches(dm):
    batch = next(iter(dm.train_dataloader()))
    full = tiny_module().training_losses(batch)
    assert set(full) == {"L_S", "L_W", "L_q2v", "L_v2q", "loss"}
    torch.testing.assert_close(full["L_q2v"], full["L_S"] + 0.5 * full["L_W"])
    torch.testing.assert_close(full["loss"], full["L_q2v"] + full["L_v2q"])
    no_weak = tiny_module(weak_relevance=False).training_losses(batch)
    torch.testing.assert_close(no_weak["loss"], no_weak["L_S"] + no_weak["L_v2q"])
    no_strong = tiny_module(strong_relevance=False).eval()
    with torch.no_grad():
        terms = no_strong.training_losses(batch)
        net = no_strong.net
        q = net.encode_queries(batch["query_tokens"], batch["query_mask"])
        v = net.encode_videos(
            batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"]
        )
        # The strong positive is the full-video Eq. 6 score: L_S is the plain InfoNCE over
        # the batch's videos, which never ranks the GT video against itself.
        scores = net.score(q, v) / 0.01
        own = batch["query_video"]
        expected = torch.nn.functional.cross_entropy(scores, own)
    torch.testing.assert_close(terms["L_S"], expected, rtol=1e-4, atol=1e-4)


def test_positive_warmup_trains_with_the_whole_video_positive_first(dm):
    batch = next(iter(dm.train_dataloader()))
    warm = tiny_module(positive_warmup_epochs=1).training_losses(batch)
    plain = tiny_module(strong_relevance=False, weak_relevance=False).training_losses(batch)
    for name in ("L_S", "L_v2q", "loss"):
        torch.testing.assert_close(warm[name], plain[name])


def test_restricted_positive_keeps_the_subtitle_term_of_a_subtitled_video():
    """A moment without subtitle clips in a subtitled video: the visual maximum stays inside
    the moment, the subtitle maximum runs over the video (not dropped, SPEC §4 note)."""
    dims = {"visual_dim": 4, "subtitle_dim": 4, "query_dim": 4, "hidden_dim": 2, "num_heads": 1}
    net = tiny_retriever(**dims)
    q = {"vis": torch.tensor([[1.0, 0.0]]), "sub": torch.tensor([[0.0, 1.0]])}
    pairs = {
        "vis": torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]),
        "sub": torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]),
        "clip_mask": torch.tensor([[True, True, True]]),
        "sub_mask": torch.tensor([[False, True, False]]),
    }
    moment = torch.tensor([[True, False, False]])  # clip 0: no subtitle
    # vis max over clip 0 = 1; sub max over the video = clip 1 -> 1.
    assert restricted_pair_score(net, q, pairs, moment, "video").item() == pytest.approx(1.0)
    assert restricted_pair_score(net, q, pairs, moment, "drop").item() == pytest.approx(1.0)
    q["sub"] = torch.tensor([[1.0, -1.0]])  # sub cos with clip 1: -1/√2
    video = restricted_pair_score(net, q, pairs, moment, "video").item()
    assert video == pytest.approx(0.5 * (1.0 - 2**-0.5))
    assert restricted_pair_score(net, q, pairs, moment, "drop").item() == pytest.approx(1.0)


def test_gather_video_encodings_pads_and_orders_ranks():
    """Rank 1 of 2: rank 0 holds 3 videos of 5 clips, rank 1 holds 2 videos of 4 clips."""
    d = 2
    mine = {
        "vis": torch.ones(2, 4, d),
        "sub": torch.ones(2, 4, d) * 2,
        "clip_mask": torch.ones(2, 4, dtype=torch.bool),
        "sub_mask": torch.zeros(2, 4, dtype=torch.bool),
    }
    other = [
        torch.tensor([3, 5]),
        torch.full((3, 5, d), 7.0),
        torch.full((3, 5, d), 8.0),
        torch.ones(3, 5, dtype=torch.uint8),
        torch.ones(3, 5, dtype=torch.uint8),
        torch.tensor([10, 11, 12]),
    ]

    def gather(x: torch.Tensor) -> torch.Tensor:
        theirs = other.pop(0)
        return torch.stack([theirs.to(x.dtype), x])

    videos, ids, offset = gather_video_encodings(mine, torch.tensor([20, 21]), gather, rank=1)
    assert ids.tolist() == [10, 11, 12, 20, 21] and offset == 3
    assert videos["vis"].shape == (5, 5, d)
    assert videos["clip_mask"].dtype == torch.bool
    assert videos["clip_mask"][3:].sum(1).tolist() == [4, 4]  # padded clip masked
    assert torch.equal(videos["vis"][3:, :4], mine["vis"]) and not videos["vis"][3:, 4].any()


def test_rank_corpus_chunks_exactly_and_counts_ties_in_the_querys_favour():
    torch.manual_seed(0)
    scores = torch.randn(7, 9)
    scores[0, :3] = 1.5  # a tie at the top
    positive = torch.tensor([2, 0, 1, 3, 4, 5, 6])
    whole = rank_corpus(lambda rows: scores[rows], 7, k=4, positive=positive, chunk=100)
    chunked = rank_corpus(lambda rows: scores[rows], 7, k=4, positive=positive, chunk=3)
    assert torch.equal(whole.indices, chunked.indices) and torch.equal(whole.ranks, chunked.ranks)
    assert torch.equal(whole.scores, scores.topk(4, dim=1).values)
    assert whole.ranks[0].item() == 1
    expected = (scores > scores.gather(1, positive[:, None])).sum(1) + 1
    assert torch.equal(whole.ranks, expected)


def test_ranking_file_round_trip_and_errors(tmp_path):
    ranking = SplitRanking(
        "val", ["5", "9"], ["a", "b", "c"], [[2, 0], [1, 2]], [[0.9, 0.1], [0.5, 0.4]], [0, -1]
    )
    path = write_rankings(tmp_path / "r.h5", {"val": ranking})
    assert ranking_splits(path) == ["val"]
    back = read_rankings(path, "val")
    assert back.query_ids == ["5", "9"] and back.video_names == ["a", "b", "c"]
    assert back.desc_ids.tolist() == [5, 9] and back.top_videos(9) == ["b", "c"]
    np.testing.assert_array_equal(back.scores, ranking.scores)
    with pytest.raises(DataError, match=r"r\.h5.*split 'train' not found"):
        read_rankings(path, "train")
    with pytest.raises(DataError, match="ranking file not found"):
        read_rankings(tmp_path / "none.h5", "val")


def test_export_writes_a_ranking_file_consistent_with_the_model(dm, tmp_path):
    module = tiny_module().eval()
    trainer = SimpleNamespace(
        is_global_zero=True, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    out = module.export_artifacts(trainer, dm, tmp_path)
    path = Path(out["ranking_file"])
    assert sorted(ranking_splits(path)) == ["test", "train", "val"]
    assert {"train/VR_R@1", "train/VR_SumR"} <= set(out)
    net = module.net
    for split in ("val", "test"):
        ranking = read_rankings(path, split)
        data = dm.splits[split]
        assert ranking.video_names == data.video_ids
        assert ranking.k == data.num_videos  # k = min(100, V)
        np.testing.assert_array_equal(ranking.gt_video_idx, data.query_video)
        # Recompute rows directly: every video in ONE padded batch, one query at a time.
        items = [
            {"video_index": i, **vars(dm.corpus.video_inputs(v))}
            for i, v in enumerate(data.video_ids)
        ]
        batch = collate_vcmr_videos(items)
        with torch.no_grad():
            videos = net.encode_videos(
                batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"]
            )
            for row in (0, 7, len(data.queries) - 1):
                query = data.queries[row]
                tokens = torch.from_numpy(dm.corpus.query_input(query.query_id))[None]
                q = net.encode_queries(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))
                scores = net.score(q, videos)[0]  # [V]
                order = torch.argsort(scores, descending=True)
                r = ranking.row(query.query_id)
                np.testing.assert_allclose(
                    ranking.scores[r], scores[order].numpy(), rtol=1e-5, atol=1e-5
                )
                np.testing.assert_array_equal(ranking.video_idx[r], order.numpy())
        # VR recall from the lists equals the official-definition vr_recall.
        gt = {
            int(q.query_id): GroundTruth(int(q.query_id), int(v), [0.0, 1.0])
            for q, v in zip(data.queries, data.query_video)
        }
        preds = {int(q): ranking.video_idx[i] for i, q in enumerate(ranking.query_ids)}
        ranks = torch.tensor(
            [
                1 + int(np.flatnonzero(ranking.video_idx[i] == v)[0])
                for i, v in enumerate(data.query_video)
            ]
        )
        official = vr_recall(preds, gt)
        ours = vr_metrics(ranks)
        for k in (1, 5, 10, 100):
            assert ours[f"VR_R@{k}"] == pytest.approx(official[f"R@{k}"])


def test_index_encoding_pairs_match_score_diagonal(dm):
    """score_pairs on `index_encoding(videos, query_video)` is the GT column of `score`."""
    module = tiny_module().eval()
    batch = next(iter(dm.train_dataloader()))
    net = module.net
    with torch.no_grad():
        q = net.encode_queries(batch["query_tokens"], batch["query_mask"])
        v = net.encode_videos(
            batch["visual"], batch["subtitle"], batch["clip_mask"], batch["sub_mask"]
        )
        pairs = net.score_pairs(q, index_encoding(v, batch["query_video"]))
        full = net.score(q, v).gather(1, batch["query_video"][:, None])[:, 0]
    torch.testing.assert_close(pairs, full)


def test_train_in_process_writes_metrics_and_a_ranking_file(tmp_path, synthetic_cache):
    out = tmp_path / "run"
    overrides = [
        "experiment=prem_retriever_synthetic",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=16",
        "model.net.hidden_dim=16",
        "model.net.ffn_dim=32",
        *[f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()],
    ]
    cfg = compose_train_config(overrides, out, synthetic_cache)
    assert cfg.monitor == "val/VR_SumR"
    monitored = train(cfg).monitored
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for name in ("VR_R@1", "VR_R@5", "VR_R@10", "VR_R@100", "VR_SumR"):
            assert f"{split}/{name}" in metrics
    assert monitored == metrics["val/VR_SumR"]
    assert metrics["val/VR_R@100"] == 100.0  # 12 videos
    path = Path(metrics["ranking_file"])
    assert path.parent == out and sorted(ranking_splits(path)) == ["test", "train", "val"]
    val = read_rankings(path, "val")
    assert val.video_idx.shape == (len(val.query_ids), TINY_SYNTHETIC["num_val_videos"])
