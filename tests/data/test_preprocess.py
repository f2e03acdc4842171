"""MS-SL pooling and frame sampling (SPEC §1.3) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from partial_relevance.data.preprocess import (
    l2_normalize_rows,
    mean_pool,
    pool_boundaries,
    prvr_query_input,
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
