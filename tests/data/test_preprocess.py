"""MS-SL pooling and frame sampling (SPEC §1.3) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from partial_relevance.data.preprocess import (
    l2_normalize_rows,
    mean_pool,
    pool_boundaries,
    prvr_query_batch,
    prvr_query_input,
    prvr_video_batch,
    prvr_video_inputs,
)


def column(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)[:, None]


def test_pool_fewer_frames_than_clips_repeats_frames():
    # n = 3, 5 windows: bounds round(linspace(0,3,6)) = [0,1,1,2,2,3] -> clamp to 2
    out = mean_pool(column(3), 5)[:, 0]
    np.testing.assert_allclose(out, [0, 1, 1, 2, 2])


def test_pool_n_less_than_32_gives_32_clips():
    out = mean_pool(column(10), 32)
    assert out.shape == (32, 1)
    starts, ends = pool_boundaries(10, 32)
    assert starts.min() == 0 and ends.max() == 9


def test_pool_exactly_32_frames_is_identity_but_last():
    out = mean_pool(column(32), 32)[:, 0]
    # bounds 0..32 clamped to 31: windows [k, k+1) for k < 31, the last [31, 31) -> frame 31
    np.testing.assert_allclose(out, np.arange(32))


def test_pool_more_frames_than_clips_means_windows():
    # n = 10, 4 windows: bounds [0, 2, 5, 8, 10] -> clamp 9: [0,2),[2,5),[5,8),[8,9)
    out = mean_pool(column(10), 4)[:, 0]
    np.testing.assert_allclose(out, [0.5, 3.0, 6.0, 8.0])


def test_frames_kept_below_128_and_pooled_above():
    rng = np.random.default_rng(0)
    short = rng.standard_normal((100, 8)).astype(np.float32)
    moments, frames = prvr_video_inputs(short)
    assert moments.shape == (32, 8) and frames.shape == (100, 8)
    np.testing.assert_allclose(frames, l2_normalize_rows(short), rtol=1e-6)
    long = rng.standard_normal((300, 8)).astype(np.float32)
    _, frames = prvr_video_inputs(long)
    assert frames.shape == (128, 8)
    np.testing.assert_allclose(frames, l2_normalize_rows(mean_pool(long, 128)), rtol=1e-5)


def test_rows_normalised_after_pooling():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalize_rows(x)
    np.testing.assert_allclose(out[0], [3 / (5 + 1e-5), 4 / (5 + 1e-5)], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_l2_normalize_rows_is_bit_identical_to_the_linalg_norm_formula(dtype):
    """The faster form keeps MS-SL's numbers exactly: x / (np.linalg.norm(x) + 1e-5) in float32."""
    x = np.random.default_rng(0).standard_normal((7, 20, 33)).astype(dtype)
    expected = (x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)).astype(np.float32)
    out = l2_normalize_rows(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_queries_truncated_to_30_tokens():
    tokens = np.ones((45, 4), dtype=np.float32)
    out = prvr_query_input(tokens)
    assert out.shape == (30, 4)
    assert np.linalg.norm(out, axis=1) == pytest.approx(np.ones(30), abs=1e-4)


def test_empty_sequence_raises():
    with pytest.raises(ValueError, match="empty"):
        mean_pool(np.zeros((0, 4), dtype=np.float32), 32)


@pytest.mark.parametrize("max_frames", [128, 9])
def test_video_batch_is_the_per_video_inputs_stacked_and_padded_bit_for_bit(max_frames):
    """`prvr_video_batch` writes each video straight into the batch: the numbers must be those
    of `prvr_video_inputs` stacked (moments) and zero-padded (frames), to the bit, with the
    videos pooled above `max_frames` (9) and kept below it."""
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(n, 24)).astype(np.float32) for n in (17, 3, 40, 9, 1)]
    lengths = [len(v) for v in videos]
    moments, frames, mask = prvr_video_batch(iter(videos), lengths, 24, 8, max_frames)
    kept = [min(len(v), max_frames) for v in videos]
    assert moments.shape == (5, 8, 24) and frames.shape == (5, max(kept), 24)
    assert mask.tolist() == [[i < n for i in range(max(kept))] for n in kept]
    for row, video in enumerate(videos):
        expected_moments, expected_frames = prvr_video_inputs(video, 8, max_frames)
        assert np.array_equal(moments[row], expected_moments)
        assert np.array_equal(frames[row, : kept[row]], expected_frames)
        assert not frames[row, kept[row] :].any()  # zero padding
    with pytest.raises(ValueError, match="zero videos"):
        prvr_video_batch([], [], 24)
    with pytest.raises(ValueError, match=r"video 1 of the batch is \[3, 24\], expected \[4, 24\]"):
        prvr_video_batch(videos[:2], [17, 4], 24)
    with pytest.raises(ValueError, match="1 videos for a batch of 2"):
        prvr_video_batch(videos[:1], [17, 3], 24)
    with pytest.raises(ValueError, match="video 1 of the batch .* expected no video"):
        prvr_video_batch(videos[:2], [17], 24)


def test_normalise_and_pool_into_out_give_the_same_bits():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(13, 40)).astype(np.float32)
    out = np.full((2, 13, 40), np.nan, dtype=np.float32)
    assert np.shares_memory(l2_normalize_rows(x, out=out[1]), out)
    assert np.array_equal(out[1], l2_normalize_rows(x))
    in_place = x.copy()
    l2_normalize_rows(in_place, out=in_place)
    assert np.array_equal(in_place, l2_normalize_rows(x))
    pooled = np.empty((5, 40), dtype=np.float32)
    mean_pool(x, 5, out=pooled)
    assert np.array_equal(pooled, mean_pool(x, 5))


def test_query_batch_is_the_per_query_inputs_padded_bit_for_bit():
    rng = np.random.default_rng(2)
    queries = [rng.normal(size=(n, 12)).astype(np.float32) for n in (5, 31, 1, 30)]
    tokens, mask = prvr_query_batch(queries, max_tokens=30)
    kept = [5, 30, 1, 30]
    assert tokens.shape == (4, 30, 12)
    assert mask.tolist() == [[i < n for i in range(30)] for n in kept]
    for row, query in enumerate(queries):
        assert np.array_equal(tokens[row, : kept[row]], prvr_query_input(query, 30))
        assert not tokens[row, kept[row] :].any()
    with pytest.raises(ValueError, match="zero queries"):
        prvr_query_batch([])
