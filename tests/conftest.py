"""Shared fixtures: a tiny synthetic corpus on disk (helpers live in support.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from partial_relevance.data.synthetic import SyntheticConfig, ensure_corpus
from support import TINY_SYNTHETIC

os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for every test that generates a synthetic corpus."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="session")
def tiny_corpus(synthetic_cache: Path):
    """A tiny synthetic corpus written in the real formats (PRVR and VCMR)."""
    return ensure_corpus(synthetic_cache, SyntheticConfig(**TINY_SYNTHETIC), progress=False)
