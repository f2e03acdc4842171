"""Check that the committed notebooks carry no outputs: `python notebooks/check_stripped.py`.

Exits 1 listing every notebook with a code cell that has outputs or an execution count
(`make lint` runs it); `--strip` removes them in place instead. Without paths it checks every
`*.ipynb` beside this script. Plain JSON, no Jupyter packages needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def unstripped_cells(notebook: dict) -> list[int]:
    """Indices of the code cells that have outputs or an execution count."""
    return [
        i
        for i, cell in enumerate(notebook.get("cells", []))
        if cell.get("cell_type") == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def strip(notebook: dict) -> dict:
    """The notebook with every code cell's outputs, execution count and timings cleared
    (written back as nbformat writes: indent 1, sorted keys)."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)  # nbclient's timings
    return notebook


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all here)")
    parser.add_argument("--strip", action="store_true", help="strip them in place")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(HERE.glob("*.ipynb"))
    dirty = []
    for path in paths:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = unstripped_cells(notebook)
        if not cells:
            continue
        if args.strip:
            text = json.dumps(strip(notebook), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
            path.write_text(text, encoding="utf-8")
            print(f"stripped {path} (cells {cells})")
        else:
            dirty.append(f"{path}: outputs or execution counts in code cells {cells}")
    if dirty:
        print("notebooks with outputs (run `python notebooks/check_stripped.py --strip`):")
        print("\n".join(f"  {line}" for line in dirty))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
