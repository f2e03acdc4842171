"""The results notebooks run top to bottom on the synthetic corpus and write their figures.

Each notebook is copied into a temporary folder and executed there (nbclient, the `python3`
kernel of this environment), so its in-process runs (`_runs/`) and figures (`figures/`) never
land in the repository. 30-55 s each on a loaded 2-core CPU: in the default suite.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import h5py
import pytest
import torch

from partial_relevance.data.annotations import read_tvr_jsonl
from partial_relevance.data.synthetic import SyntheticPaths
from partial_relevance.viz import markdown_table, pca_2d, synthetic_token_kinds
from support import TINY_SYNTHETIC

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 180
FIGURES = {
    "prvr_results": (
        "prvr_embedding_map.png",
        "prvr_tcp_accuracy.png",
        "prvr_top5.png",
        "prvr_probes.png",
    ),
    "prem_results": ("prem_word_weights.png",),
}
# Drawn only where the suite has the PREM moment localizer (stage 2).
if importlib.util.find_spec("partial_relevance.lit.localizer") is not None:
    FIGURES["prem_results"] += ("prem_localizer_timelines.png",)


def _check_stripped() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_stripped", NOTEBOOKS / "check_stripped.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(2 * CELL_TIMEOUT_S)
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_on_the_synthetic_corpus(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    work = tmp_path / "notebooks"
    work.mkdir()
    path = work / f"{name}.ipynb"
    shutil.copy(NOTEBOOKS / path.name, path)
    monkeypatch.setenv("PARTIAL_RELEVANCE_ROOT", str(tmp_path))  # no repo tables or caches
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MPLBACKEND", "Agg")

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    for figure in FIGURES[name]:
        written = work / "figures" / figure
        assert written.exists() and written.stat().st_size > 1000, f"{figure} not written"
    assert any((work / "_runs").rglob("metrics.json")), "no in-process run finished"
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors


def test_committed_notebooks_are_stripped() -> None:
    check = _check_stripped()
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    assert check.main([]) == 0


def test_check_stripped_flags_and_strips_outputs(tmp_path: Path) -> None:
    check = _check_stripped()
    notebook = json.loads((NOTEBOOKS / "prvr_results.ipynb").read_text(encoding="utf-8"))
    code = next(i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code")
    notebook["cells"][code]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    notebook["cells"][code]["execution_count"] = 3
    path = tmp_path / "dirty.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    assert check.unstripped_cells(notebook) == [code]
    assert check.main([str(path)]) == 1
    assert check.main(["--strip", str(path)]) == 0
    assert check.main([str(path)]) == 0


# ----------------------------------------------------------------- the notebooks' helpers


def test_synthetic_token_kinds_follow_the_query_types(tiny_corpus: SyntheticPaths) -> None:
    """Visual queries get no subtitle words and vice versa; every query has content words."""
    queries = read_tvr_jsonl(tiny_corpus.vcmr_root / "synthetic_val_release.jsonl")
    with h5py.File(tiny_corpus.vcmr_root / "query_feature.h5", "r") as store:
        for query in queries:
            kinds = synthetic_token_kinds(TINY_SYNTHETIC, query.text, store[query.query_id][()])
            assert set(kinds) <= {"v", "t", "·"}
            assert {"v", "t"} & set(kinds), query.text
            if query.query_type == "v":
                assert "t" not in kinds, query.text
            if query.query_type == "t":
                assert "v" not in kinds, query.text


def test_pca_2d_is_deterministic_and_keeps_the_main_axis() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=generator) * torch.tensor([10.0, 3.0, 1, 1, 1, 1, 1, 1])
    points = pca_2d(x)
    assert points.shape == (200, 2)
    assert torch.equal(points, pca_2d(x))
    assert points[:, 0].var() > points[:, 1].var()
    corr = torch.corrcoef(torch.stack([points[:, 0], x[:, 0]]))[0, 1]
    assert abs(float(corr)) > 0.95


def test_markdown_table_formats_numbers_and_gaps() -> None:
    table = markdown_table(["a", "b"], [["x|y", 1.234], [None, float("nan")]], digits=1)
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.2 |", "| - | - |"]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_first_code_cell_holds_the_parameters(name: str) -> None:
    """The run directory to read is set at the top (papermill's `parameters` tag), None by
    default (the notebook then trains its small demo); no later cell sets it again."""
    notebook = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    names = ("RUN_DIR", "LOCALIZER_RUN_DIR") if name == "prem_results" else ("RUN_DIR",)
    source = "".join(code[0]["source"])
    for variable in names:
        assert f"\n{variable} = None" in source
        assert not any(f"\n{variable} = " in "\n" + "".join(c["source"]) for c in code[1:])
