"""The one error type the data layer raises for bad input: it always names the file and key.

Also the two file checks every reader starts with (`require_exists`, `load_json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the key, line or field."""

    def __init__(self, path: str | Path | None, problem: str, hint: str | None = None) -> None:
        where = f"{path}: " if path is not None else ""
        message = f"{where}{problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.hint = hint

    def __reduce__(self):  # picklable, so errors cross DataLoader/multiprocessing workers
        return (DataError, (self.path, self.problem, self.hint))


def require_exists(path: str | Path, what: str) -> Path:
    """Return `path` as a Path, or raise DataError naming it and what it should have held."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    return path


def load_json(path: Path) -> Any:
    """The JSON value of a whole file, or a DataError naming the file and the line of the
    syntax error (the caller checks the value's layout)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON (line {error.lineno}: {error.msg})") from None
