"""The ranking file lives in the data layer (DESIGN: `data` imports nothing above it).

`data.rankings` holds the reader and writer of the retriever's ranking file that the moment
localizer's datamodule reads, and `data.vcmr_localizer` the adversarial positives the
datamodule computes; each name has that one address (no re-export shims above it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

import partial_relevance
from partial_relevance.data import rankings as data_rankings
from partial_relevance.data import vcmr_localizer
from partial_relevance.inference import ranking as inference_ranking
from partial_relevance.inference import spans

PACKAGE_DIR = Path(partial_relevance.__file__).resolve().parent
UPPER_LAYERS = ("inference", "lit", "models", "losses", "train", "evaluate", "tables")


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (top level or nested)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_data_layer_imports_nothing_above_it() -> None:
    offenders = []
    for path in sorted((PACKAGE_DIR / "data").rglob("*.py")):
        for module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] == "partial_relevance" and len(parts) > 1 and parts[1] in UPPER_LAYERS:
                offenders.append(f"{path.relative_to(PACKAGE_DIR)} imports {module}")
    assert not offenders, offenders


def test_each_data_layer_name_has_one_address() -> None:
    for name in ("SplitRanking", "write_rankings", "read_rankings", "ranking_splits"):
        assert hasattr(data_rankings, name) and not hasattr(inference_ranking, name)
    assert not hasattr(inference_ranking, "RANKING_FORMAT_VERSION")
    assert not hasattr(spans, "adversarial_span_positives")


def test_ranking_file_round_trip_through_the_data_layer(tmp_path: Path) -> None:
    ranking = data_rankings.SplitRanking(
        "val",
        ["7", "q-x"],
        ["a", "b", "c"],
        np.array([[2, 0, 1], [1, 2, 0]]),
        np.array([[0.9, 0.5, 0.1], [0.8, 0.3, -0.2]]),
        np.array([0, -1]),
    )
    path = data_rankings.write_rankings(tmp_path / "r.h5", {"val": ranking}, attrs={"k": 3})
    assert data_rankings.ranking_splits(path) == ["val"]
    back = data_rankings.read_rankings(path, "val")
    assert back.query_ids == ["7", "q-x"] and back.video_names == ["a", "b", "c"]
    assert back.desc_ids.tolist() == [7, -1]
    np.testing.assert_array_equal(back.video_idx, ranking.video_idx)
    np.testing.assert_array_equal(back.scores, ranking.scores)
    assert back.top_videos("q-x", 2) == ["b", "c"]


def test_adversarial_positives_in_the_data_layer_follow_spec_example() -> None:
    """SPEC §5: GT [5, 8] gives [5,8], [4,8], [5,9], [5,7], [6,8], not [4,9]."""
    positives = vcmr_localizer.adversarial_span_positives((5, 8), num_clips=20)
    assert positives[0].tolist() == [5, 8]
    assert {tuple(s) for s in positives.tolist()} == {(5, 8), (4, 8), (5, 9), (5, 7), (6, 8)}
