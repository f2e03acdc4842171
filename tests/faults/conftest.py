"""Fixtures of the fault-injection suite: a private, writable copy of the tiny synthetic corpus
per test, into which each test writes one bad input."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # killer.py for the kill tests


@pytest.fixture
def corpus_copy(tiny_corpus, tmp_path: Path) -> Path:
    """A copy of the tiny synthetic corpus (PRVR and VCMR layouts) that a test may corrupt."""
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus.root, root)
    return root
