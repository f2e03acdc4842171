"""`host_blas.limit_numpy_blas`: numpy's bundled BLAS on one thread, torch's threads and the
OpenMP pool untouched, the same numbers to float32 rounding; bad values are a ConfigError."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from partial_relevance.cli import ConfigError
from partial_relevance.host_blas import limit_numpy_blas

# In a fresh process (the setting lasts for the process): numpy's BLAS threads, the OpenMP
# pools' and torch's, and a threaded product and a mean pooling before and after.
SCRIPT = """
import json
import numpy as np
import torch
from threadpoolctl import threadpool_info
from partial_relevance.data.preprocess import mean_pool
from partial_relevance.host_blas import limit_numpy_blas, numpy_blas_controllers

def openmp():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]

rng = np.random.default_rng(0)
a = rng.standard_normal((256, 512)).astype(np.float32)
b = rng.standard_normal((512, 3072)).astype(np.float32)
frames = rng.standard_normal((97, 3072)).astype(np.float32)
before = {
    "numpy": [lib.num_threads for lib in numpy_blas_controllers()],
    "openmp": openmp(),
    "torch": torch.get_num_threads(),
}
product, pooled = a @ b, mean_pool(frames, 32)
changed = limit_numpy_blas(1)
print(json.dumps({
    "changed": changed,
    "before": before,
    "after": {
        "numpy": [lib.num_threads for lib in numpy_blas_controllers()],
        "openmp": openmp(),
        "torch": torch.get_num_threads(),
    },
    "product": float(np.abs(a @ b - product).max() / np.abs(product).max()),
    "pooled": float(np.abs(mean_pool(frames, 32) - pooled).max()),
}))
"""


def test_numpy_blas_on_one_thread_torch_untouched_same_numbers() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["changed"]:
        pytest.skip("numpy uses a BLAS shared with other packages here: nothing to limit")
    assert result["before"]["numpy"] == [2] and result["after"]["numpy"] == [1]
    assert result["after"]["openmp"] == result["before"]["openmp"]
    assert result["after"]["torch"] == result["before"]["torch"]
    # The same numbers to float32 rounding (a threaded product may split its sums differently).
    assert result["product"] < 1e-6 and result["pooled"] < 1e-6


def test_null_leaves_numpy_blas_and_bad_values_are_config_errors() -> None:
    assert limit_numpy_blas(None) == []
    for bad in (0, -1, 1.5, "one", True):
        with pytest.raises(ConfigError, match="numpy_blas_threads"):
            limit_numpy_blas(bad)  # type: ignore[arg-type]
