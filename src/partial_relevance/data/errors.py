"""The one error type the data layer raises for bad input: it always names the file and key."""

from __future__ import annotations

from pathlib import Path


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
