"""The VCMR / SVMR / VR pipeline (SPEC §6): normalisation, the video-encoding cache, the random
baseline and an in-process run of the whole stage-wise pipeline whose submission round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_support import inference_config
from partial_relevance.inference.spans import decode_top_spans, span_scores
from partial_relevance.inference.vcmr import (
    UniformLocalizer,
    VcmrInferenceConfig,
    VideoCache,
    _gt_logits,
    _localize_pairs,
    boundary_log_probs,
    flat_vcmr_metrics,
    length_groups,
    run_vcmr,
)
from partial_relevance.metrics.submission import ground_truth_from_tvr_jsonl, score_submission
from partial_relevance.models.prem_localizer import PremLocalizer
from partial_relevance.prem_pipeline import run_pipeline
from prem_support import tiny_localizer, tiny_localizer_datamodule, write_random_rankings
from support import TINY_RUN_OVERRIDES, TINY_SYNTHETIC_OVERRIDES


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory, synthetic_cache, tiny_corpus):
    path = write_random_rankings(synthetic_cache, tmp_path_factory.mktemp("rank") / "r.h5")
    return tiny_localizer_datamodule(synthetic_cache, path, k_videos=10, eval_batch_size=8)


def tiny_net(seed: int = 0) -> PremLocalizer:
    torch.manual_seed(seed)
    net = tiny_localizer()
    return net.eval()


def test_joint_normalisation_sums_to_one_over_the_k_videos():
    torch.manual_seed(0)
    B, k, L = 3, 10, 7
    mask = torch.rand(B, k, L) > 0.3
    mask[..., 0] = True
    start, end = torch.randn(B, k, L), torch.randn(B, k, L)
    log_st, log_ed = boundary_log_probs(start, end, mask, "joint")
    for log_p in (log_st, log_ed):
        total = (log_p.exp() * mask).sum(dim=(1, 2))  # [B]
        torch.testing.assert_close(total, torch.ones(B))
        assert float((log_p.exp() * ~mask).sum()) == 0.0
    log_st, _ = boundary_log_probs(start, end, mask, "per_video")
    torch.testing.assert_close((log_st.exp() * mask).sum(-1), torch.ones(B, k))
    with pytest.raises(ValueError, match="norm"):
        boundary_log_probs(start, end, mask, "softmax")


def _reference_predictions(net, dm, cfg: VcmrInferenceConfig, qi: int) -> np.ndarray:
    """One query, every (query, video) pair re-encoded from scratch, unpadded."""
    split = dm.splits["val"]
    query = split.queries[qi]
    ranking = dm.rankings["val"]
    videos = ranking.video_idx[qi, : cfg.k_videos]
    tokens = torch.from_numpy(dm.corpus.query_input(query.query_id))[None]
    starts, ends, lengths, durations, scales = [], [], [], [], []
    for v in videos:
        inputs = dm.corpus.video_inputs(split.video_ids[v])
        L = inputs.num_clips
        out = net(
            torch.from_numpy(inputs.visual)[None],
            torch.from_numpy(inputs.subtitle)[None],
            torch.ones(1, L, dtype=torch.bool),
            torch.from_numpy(inputs.sub_mask > 0)[None],
            tokens,
            torch.ones(tokens.shape[:2], dtype=torch.bool),
        )
        starts.append(out["start"][0])
        ends.append(out["end"][0])
        lengths.append(L)
        durations.append(split.durations[v])
        scales.append(inputs.scale)
    L = max(lengths)
    mask = torch.zeros(1, len(videos), L, dtype=torch.bool)
    start = torch.zeros(1, len(videos), L)
    end = torch.zeros(1, len(videos), L)
    for j, n in enumerate(lengths):
        mask[0, j, :n] = True
        start[0, j, :n], end[0, j, :n] = starts[j], ends[j]
    log_st, log_ed = boundary_log_probs(start, end, mask, cfg.norm)
    retrieval = torch.from_numpy(ranking.scores[qi, : cfg.k_videos])[None]
    scores = span_scores(log_st, log_ed, mask, cfg.min_len, cfg.max_len, retrieval, cfg.tau)
    return decode_top_spans(
        scores[0],
        videos,
        durations,
        scales,
        top_n=cfg.top_n,
        nms_iou=cfg.nms_iou,
        out_n=cfg.out_n,
        clip_seconds=cfg.clip_seconds,
    )


@pytest.mark.parametrize("norm", ["joint", "per_video"])
def test_video_cache_gives_the_predictions_of_reencoding_each_pair(datamodule, norm):
    net = tiny_net()
    cfg = inference_config(k_videos=10, norm=norm, max_len=24)
    cached = run_vcmr(net, datamodule, "val", cfg)
    split = datamodule.splits["val"]
    for qi in (0, 7, len(split.queries) - 1):
        desc_id = int(split.queries[qi].query_id)
        reference = _reference_predictions(net, datamodule, cfg, qi)
        got = cached.vcmr[desc_id]
        assert got.shape == reference.shape
        np.testing.assert_allclose(got[:20, :3], reference[:20, :3], atol=1e-6)
        np.testing.assert_allclose(got[:, 3], reference[:, 3], rtol=1e-4, atol=1e-3)


def test_predictions_shapes_and_random_baseline(datamodule):
    cfg = inference_config(k_videos=10)
    predictions = run_vcmr(UniformLocalizer(), datamodule, "val", cfg)
    split = datamodule.splits["val"]
    ranking = datamodule.rankings["val"]
    assert len(predictions.vcmr) == len(split.queries) == len(predictions.queries)
    for qi, query in enumerate(split.queries):
        rows = predictions.vcmr[int(query.query_id)]
        assert rows.shape[1] == 4 and 0 < len(rows) <= 100
        assert np.all(np.diff(rows[:, 3]) <= 0)  # sorted best first
        assert set(rows[:, 0].astype(int)) <= set(ranking.video_idx[qi, :10].tolist())
        # uniform logits: s(q, V)/τ decides, so the best moment is in the top-1 video
        assert int(rows[0, 0]) == ranking.video_idx[qi, 0]
        svmr = predictions.svmr[int(query.query_id)]
        assert set(svmr[:, 0].astype(int)) == {split.query_video[qi]}
        assert np.all(svmr[:, 2] <= split.durations[split.query_video[qi]] + 1e-9)
    results = predictions.evaluate()
    assert {"VCMR", "SVMR", "VR", "VCMR_v"} <= set(results)
    flat = flat_vcmr_metrics(results, "val")
    assert flat["val/VCMR_selection"] == pytest.approx(
        flat["val/VCMR_R@1 IoU0.5"] + flat["val/VCMR_R@1 IoU0.7"]
    )


def test_pipeline_in_process_round_trips(tmp_path, synthetic_cache, tiny_corpus):
    common = [
        "logger=csv",
        f"paths.cache_dir={synthetic_cache}",
        *TINY_RUN_OVERRIDES,
        "model.net.ffn_dim=32",
        *TINY_SYNTHETIC_OVERRIDES,
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core CI box: oversubscribed threads are far slower
    try:
        result = run_pipeline(tmp_path / "pipe", common=common, localizer=["run_test=false"])
    finally:
        torch.set_num_threads(threads)
    assert result["round_trip_ok"]
    loc = tmp_path / "pipe" / "localizer"
    assert (tmp_path / "pipe" / "retriever" / "rankings.h5").exists()
    for name in ("submission_val.json", "submission_test.json", "metrics.json"):  # export: both
        assert (loc / name).exists()
    in_memory = json.loads((loc / "vcmr_results_val.json").read_text())
    # scored as the official script would: the file's own video2idx + the annotation file
    video2idx = json.loads((loc / "submission_val.json").read_text())["video2idx"]
    truth = ground_truth_from_tvr_jsonl(
        tiny_corpus.vcmr_root / "synthetic_val_release.jsonl", video2idx
    )
    assert score_submission(loc / "submission_val.json", truth) == in_memory
    metrics = json.loads((loc / "metrics.json").read_text())
    # the validated best checkpoint logs the same numbers the export computed in memory
    for key, value in flat_vcmr_metrics(in_memory, "val").items():
        assert metrics[key] == pytest.approx(value, abs=1e-4), key
    assert "val/VCMR_selection" in metrics and "val/SVMR_R@1 IoU0.7_vt" in metrics
    assert set(result["random"]) == set(in_memory)


def test_grouped_localization_and_reused_gt_logits_change_nothing(datamodule):
    """Length-grouped localizer calls and the SVMR pass reusing a top-k row give the logits
    (and predictions) of localizing every pair on its own."""
    net = tiny_net()
    cache = VideoCache.build(net, datamodule.video_loader("val"), "cpu")
    batch = next(iter(datamodule.query_loader("val")))
    queries = net.encode_queries(batch["query_tokens"], batch["query_mask"])
    topk = batch["topk_video"][:, :10]
    b, k = topk.shape
    pair_query = torch.arange(b).repeat_interleave(k)
    one_by_one = _localize_pairs(net, cache, queries, pair_query, topk.flatten(), group=1)
    grouped = _localize_pairs(net, cache, queries, pair_query, topk.flatten(), group=7)
    for a, g in zip(one_by_one, grouped):
        torch.testing.assert_close(a, g, atol=1e-5, rtol=1e-5)
    gt = batch["video_index"]
    labelled = torch.arange(b)
    assert (topk == gt[:, None]).any(1).any() and not (topk == gt[:, None]).any(1).all()
    reused = _gt_logits(net, cache, queries, labelled, gt, topk, *grouped, group=64)
    direct = _localize_pairs(net, cache, queries, labelled, gt, group=64)
    width = direct[2].shape[1]
    assert not reused[2][:, width:].any()
    torch.testing.assert_close(reused[2][:, :width], direct[2])
    for a, d in zip(reused[:2], direct[:2]):
        valid = direct[2]
        torch.testing.assert_close(a[:, :width][valid], d[valid], atol=1e-5, rtol=1e-5)
    cfg = inference_config(k_videos=10)
    small = run_vcmr(net, datamodule, "val", inference_config(k_videos=10, pair_group=1))
    default = run_vcmr(net, datamodule, "val", cfg)
    for desc_id, rows in default.svmr.items():
        np.testing.assert_allclose(rows[:, :3], small.svmr[desc_id][:, :3], atol=1e-6)


def test_cache_pairs_trims_before_gathering(datamodule):
    """`VideoCache.pairs` gives each pair's encoding trimmed to the longest of the pairs'
    videos, the same values as gathering whole rows and trimming, in contiguous tensors."""
    cache = VideoCache.build(tiny_net(), datamodule.video_loader("val"), "cpu")
    shortest = torch.argsort(cache.num_clips)[:3]
    index = torch.cat([shortest, shortest[:1]])  # a repeated video too
    pairs = cache.pairs(index)
    length = int(cache.num_clips[index].max())
    assert length < cache.encoding["vis"].shape[1]  # something is trimmed
    for key, value in cache.encoding.items():
        assert pairs[key].is_contiguous()
        assert torch.equal(pairs[key], value[index][:, :length]), key


def test_bf16_inference_agrees_with_fp32(datamodule):
    """`inference.precision=bf16` (a bf16 copy and bf16 cache) keeps the fp32 weights and
    puts most queries' best moment in the same video as fp32 does."""
    net = tiny_net()
    fp32 = run_vcmr(net, datamodule, "val", inference_config(k_videos=10))
    bf16 = run_vcmr(net, datamodule, "val", inference_config(k_videos=10, precision="bf16"))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    same_video = [bf16.vcmr[d][0, 0] == rows[0, 0] for d, rows in fp32.vcmr.items()]
    assert np.mean(same_video) >= 0.8
    with pytest.raises(ValueError, match="precision"):
        inference_config(precision="fp8")


def test_length_groups_minimise_padding_plus_call_cost() -> None:
    """Hand cases of the split: padded clips + `call_cost` a call, at most `group` a call."""
    # [60, 60, 41, 41]: one call pads 2·19 = 38 clips; two calls cost one more call.
    assert length_groups([60, 60, 41, 41], group=64, call_cost=48) == [0]  # 38 < 48
    assert length_groups([60, 60, 41, 41], group=64, call_cost=30) == [0, 2]  # 38 > 30
    assert length_groups([60, 60, 41, 41], group=3, call_cost=48) == [0, 2]  # 2 + 2 beats 3 + 1
    assert length_groups([50] * 5, group=2, call_cost=0) in ([0, 2, 4], [0, 1, 3], [0, 2, 3])
    assert length_groups([100, 90, 80], group=64, call_cost=0) == [0, 1, 2]  # no padding
    assert length_groups([100, 90, 80], group=64, call_cost=1e6) == [0]  # one call
    assert length_groups([], group=4) == []
    # Every call within `group`, covering every pair once, on random lengths.
    generator = torch.Generator().manual_seed(0)
    sizes = sorted(
        (int(v) for v in torch.randint(1, 101, (500,), generator=generator)), reverse=True
    )
    starts = length_groups(sizes, group=64)
    ends = [*starts[1:], len(sizes)]
    assert starts[0] == 0 and all(0 < e - s <= 64 for s, e in zip(starts, ends, strict=True))
