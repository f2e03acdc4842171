"""Annotation readers -> typed `Query` records (TVR jsonl, DiDeMo, MS-SL caption files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from partial_relevance.data.errors import DataError, require_exists


@dataclass(frozen=True)
class Query:
    """One text query and, where known, where it happens in its video.

    `span` is the training target in seconds (for DiDeMo the most frequent annotator window);
    `windows` keeps every annotator window for DiDeMo's >= 2-window hit rule.
    """

    query_id: str  # MS-SL cap_id, or str(desc_id) for TVR/DiDeMo
    video_id: str | None  # None where the split has no labels (TVR test_public)
    text: str
    span: tuple[float, float] | None = None
    duration: float | None = None
    query_type: str | None = None  # TVR: "v" | "t" | "vt"
    windows: tuple[tuple[float, float], ...] | None = None


def read_caption_file(path: str | Path) -> list[Query]:
    """MS-SL `<collection><split>.caption.txt`: `<cap_id> <text>` a line, split at the first space.

    `video_id = cap_id.split('#')[0]`. Blank lines are skipped; a line without text raises.
    """
    path = require_exists(path, "caption file")
    queries: list[Query] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            cap_id, _, text = line.partition(" ")
            if not text.strip() or "#" not in cap_id:
                raise DataError(
                    path,
                    f"line {line_number}: expected '<video_id>#<n> <text>', found {line[:80]!r}",
                )
            queries.append(Query(cap_id, cap_id.split("#")[0], text.strip()))
    if not queries:
        raise DataError(path, "holds no captions")
    return queries


def videos_in_order(queries: list[Query]) -> list[str]:
    """Video ids in order of first appearance (the MS-SL video order)."""
    return list(dict.fromkeys(q.video_id for q in queries if q.video_id is not None))
