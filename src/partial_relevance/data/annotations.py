"""Annotation readers -> typed `Query` records (TVR jsonl, DiDeMo, MS-SL caption files)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partial_relevance.data.errors import DataError, load_json, require_exists
from partial_relevance.data.preprocess import CLIP_SECONDS


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
    line: int | None = field(default=None, compare=False)  # 1-based line in its file


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
            queries.append(Query(cap_id, cap_id.split("#")[0], text.strip(), line=line_number))
    if not queries:
        raise DataError(path, "holds no captions")
    return queries


def videos_in_order(queries: list[Query]) -> list[str]:
    """Video ids in order of first appearance (the MS-SL video order)."""
    return list(dict.fromkeys(q.video_id for q in queries if q.video_id is not None))


# --------------------------------------------------------------------------------------------
# TVR jsonl (SPEC §1.2)
# --------------------------------------------------------------------------------------------


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, dict)` for each non-blank line; a bad line raises DataError."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    path, f"line {line_number}: malformed JSON ({error.msg})", line.strip()[:80]
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    path,
                    f"line {line_number}: expected a JSON object, found {type(record).__name__}",
                )
            yield line_number, record


def _field(path: Path, line_number: int, record: dict, name: str) -> Any:
    """`record[name]`, or a DataError naming the file, line and missing field."""
    if name not in record:
        raise DataError(path, f"line {line_number}: missing field {name!r}")
    return record[name]


def _number(path: Path, where: str, field: str, value: Any) -> float:
    """A finite float, or a DataError naming where and which field is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(path, f"{where}: field {field!r} must be a finite number, found {value!r}")
    return float(value)


def _window(path: Path, where: str, field: str, value: Any) -> tuple[float, float]:
    """A `[st, ed]` pair in seconds with `0 <= st <= ed`."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DataError(path, f"{where}: field {field!r} must be [st, ed], found {value!r}")
    start = _number(path, where, field, value[0])
    end = _number(path, where, field, value[1])
    if start < 0 or end < start:
        raise DataError(path, f"{where}: field {field!r} must satisfy 0 <= st <= ed, found {value}")
    return start, end


def _desc_id(path: Path, where: str, value: Any, seen: set[str]) -> str:
    """`str(desc_id)` for an int id; duplicates raise (SPEC: desc_id is unique)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, f"{where}: field 'desc_id' must be an int, found {value!r}")
    query_id = str(value)
    if query_id in seen:
        raise DataError(path, f"{where}: duplicate desc_id {value}")
    seen.add(query_id)
    return query_id


def most_frequent_window(
    windows: list[tuple[float, float]] | tuple[tuple[float, float], ...],
) -> tuple[float, float]:
    """The window most annotators chose; ties go to the one that comes first (DiDeMo rule)."""
    counts: dict[tuple[float, float], int] = {}
    for window in windows:  # dicts keep first-appearance order, so max() breaks ties by it
        counts[window] = counts.get(window, 0) + 1
    return max(counts, key=counts.__getitem__)


def read_tvr_jsonl(path: str | Path) -> list[Query]:
    """TVR `tvr_{train,val,test_public}_release.jsonl` -> one `Query` per line.

    Labelled splits carry `vid_name`, `duration`, `ts` ([st, ed] s), `type`, `desc`, `desc_id`;
    `test_public` has only `desc` and `desc_id` (its queries get `video_id=None`). Whether the
    file is labelled is decided by its first record, so a labelled file whose later line lacks
    a label field fails loudly instead of yielding an unlabelled query. `type` may be absent
    (other TVR-style corpora); then `query_type` is None.
    """
    return read_moment_jsonl(path, ts_form="one", required=("desc", "duration"))


def read_moment_jsonl(
    path: str | Path,
    ts_form: str = "auto",
    required: tuple[str, ...] = (),
    labels: str = "auto",
) -> list[Query]:
    """The one parser of TVR-style moment jsonl (TVR, TVR-style DiDeMo, submission labels).

    Each line: `desc_id` (int, unique) and, in a labelled file, `vid_name` and `ts`; `desc`,
    `duration` and `type` (v | t | vt) are read when present and must be present when named in
    `required`. `ts_form`: "one" (`[st, ed]`, TVR), "many" (a list of annotator windows,
    DiDeMo: `span` is the most frequent, `windows` all) or "auto" (by the value's shape).
    `labels`: "auto" (labelled iff the first record has `vid_name`) or "required".
    A moment starting before 0, ending before it starts, or ending more than one clip
    (1.5 s) after the video's `duration` is a DataError naming the file and line.
    """
    path = require_exists(path, "annotation file")
    queries: list[Query] = []
    seen: set[str] = set()
    labelled: bool | None = True if labels == "required" else None
    for line_number, record in _iter_jsonl(path):
        where = f"line {line_number}"
        if labelled is None:
            labelled = "vid_name" in record
        if "desc" in required or "desc" in record:
            text = _field(path, line_number, record, "desc")
            if not isinstance(text, str):
                raise DataError(path, f"{where}: field 'desc' must be a string, found {text!r}")
        else:
            text = ""
        query_id = _desc_id(path, where, _field(path, line_number, record, "desc_id"), seen)
        if not labelled:
            queries.append(Query(query_id, None, text.strip(), line=line_number))
            continue
        video_id = _field(path, line_number, record, "vid_name")
        ts = _field(path, line_number, record, "ts")
        if "duration" in required or record.get("duration") is not None:
            duration: float | None = _number(
                path, where, "duration", _field(path, line_number, record, "duration")
            )
        else:
            duration = None
        if not isinstance(video_id, str) or not video_id:
            raise DataError(path, f"{where}: field 'vid_name' must be a non-empty string")
        query_type = record.get("type")
        if query_type is not None and query_type not in ("v", "t", "vt"):
            raise DataError(path, f"{where}: field 'type' must be v, t or vt, found {query_type!r}")
        many = isinstance(ts, list) and bool(ts) and isinstance(ts[0], (list, tuple))
        if ts_form == "many" and not many:
            raise DataError(path, f"{where}: field 'ts' must be a list of [st, ed] windows")
        if ts_form == "one" or not many:
            windows: tuple[tuple[float, float], ...] = (_window(path, where, "ts", ts),)
        else:
            windows = tuple(_window(path, where, "ts", window) for window in ts)
        if duration is not None:
            end = max(w[1] for w in windows)
            if end > duration + CLIP_SECONDS:
                raise DataError(
                    path,
                    f"{where}: field 'ts' ends at {end} s, after the video's duration "
                    f"{duration} s (more than one {CLIP_SECONDS} s clip beyond it)",
                )
        queries.append(
            Query(
                query_id,
                video_id,
                text.strip(),
                span=most_frequent_window(windows) if many else windows[0],
                duration=duration,
                query_type=query_type,
                windows=windows if many else None,
                line=line_number,
            )
        )
    if not queries:
        raise DataError(path, "holds no queries")
    return queries


def write_tvr_jsonl(path: str | Path, queries: list[Query]) -> None:
    """Write queries as TVR jsonl (the inverse of `read_tvr_jsonl`; `desc_id = int(query_id)`).

    Labelled queries get `vid_name, duration, ts, type, desc, desc_id` (the release's field
    order); queries without a video are written test_public-style (`desc`, `desc_id` only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for query in queries:
            if query.video_id is None:
                record: dict[str, Any] = {"desc": query.text, "desc_id": int(query.query_id)}
            else:
                if query.span is None or query.duration is None:
                    raise ValueError(
                        f"query {query.query_id}: a labelled query needs span and duration"
                    )
                record = {
                    "vid_name": query.video_id,
                    "duration": query.duration,
                    "ts": list(query.span),
                    "type": query.query_type,
                    "desc": query.text,
                    "desc_id": int(query.query_id),
                }
            handle.write(json.dumps(record) + "\n")


def read_video2dur_idx(path: str | Path) -> dict[str, dict[str, tuple[float, int]]]:
    """TVR `tvr_video2dur_idx.json`: `{split: {vid_name: [duration, global_idx]}}`.

    The release's splits are `train`, `val`, `test_public` and `test_challenge`; `global_idx`
    numbers every video of all splits together (unique across the file).
    """
    path = require_exists(path, "TVR video2dur_idx file")
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise DataError(path, "expected {split: {vid_name: [duration, global_idx]}}")
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for split, videos in raw.items():
        if not isinstance(videos, dict):
            raise DataError(path, f"split {split!r}: expected {{vid_name: [duration, idx]}}")
        entries: dict[str, tuple[float, int]] = {}
        for video, value in videos.items():
            where = f"split {split!r}, video {video!r}"
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 2
                or isinstance(value[1], bool)
                or not isinstance(value[1], int)
            ):
                raise DataError(path, f"{where}: expected [duration, global_idx], found {value!r}")
            entries[video] = (_number(path, where, "duration", value[0]), value[1])
        out[split] = entries
    return out


# --------------------------------------------------------------------------------------------
# DiDeMo (SPEC §1.2): raw LocalizingMoments JSON and the TVR-style jsonl
# --------------------------------------------------------------------------------------------

DIDEMO_SEGMENT_SECONDS = 5.0  # LocalizingMoments' grid: segment k covers [5k, 5(k+1)) s
DIDEMO_FIELDS = ("annotation_id", "description", "video", "times")


def didemo_segment_to_seconds(start: int, end: int, duration: float | None) -> tuple[float, float]:
    """Inclusive 5 s segment pair `[s, e]` -> seconds `[5s, min(5(e+1), duration)]`."""
    end_seconds = DIDEMO_SEGMENT_SECONDS * (end + 1)
    if duration is not None:
        end_seconds = min(end_seconds, duration)
    return DIDEMO_SEGMENT_SECONDS * start, end_seconds


def read_didemo_raw(path: str | Path, durations: dict[str, float] | None) -> list[Query]:
    """Raw LocalizingMoments JSON (a list of dicts) -> one `Query` per annotation.

    Each item has `annotation_id`, `description`, `video` and `times` (annotator `[s, e]`
    pairs on the inclusive 5 s grid; 4 in the release). `windows` keeps every annotator
    window in seconds (for the >= 2-annotator hit rule) and `span` is the most frequent one
    (counted on the raw segment pairs, ties to the first), the training target. Without
    `durations` the last segment is not clipped to the video's end and `duration` is None;
    with them, a video absent from `durations` is an error.
    """
    path = require_exists(path, "DiDeMo annotation file")
    raw = load_json(path)
    if not isinstance(raw, list):
        raise DataError(path, f"expected a list of annotations, found {type(raw).__name__}")
    queries: list[Query] = []
    seen: set[str] = set()
    for position, item in enumerate(raw):
        where = f"item {position}"
        if not isinstance(item, dict):
            raise DataError(path, f"{where}: expected an object, found {type(item).__name__}")
        for name in DIDEMO_FIELDS:
            if name not in item:
                raise DataError(path, f"{where}: missing field {name!r}")
        query_id = str(item["annotation_id"])
        where = f"{where} (annotation_id {query_id})"
        if query_id in seen:
            raise DataError(path, f"{where}: duplicate annotation_id")
        seen.add(query_id)
        video = item["video"]
        if not isinstance(video, str) or not video:
            raise DataError(path, f"{where}: field 'video' must be a non-empty string")
        duration: float | None = None
        if durations is not None:
            if video not in durations:
                raise DataError(path, f"{where}: video {video!r} has no duration")
            duration = float(durations[video])
        times = item["times"]
        if not isinstance(times, list) or not times:
            raise DataError(path, f"{where}: field 'times' must be a non-empty list of [s, e]")
        segments: list[tuple[int, int]] = []
        for pair in times:
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                or not 0 <= pair[0] <= pair[1]
            ):
                raise DataError(
                    path, f"{where}: field 'times' holds {pair!r}, expected [s, e], 0 <= s <= e"
                )
            segments.append((pair[0], pair[1]))
        best = most_frequent_window(segments)
        queries.append(
            Query(
                query_id,
                video,
                str(item["description"]).strip(),
                span=didemo_segment_to_seconds(*best, duration),
                duration=duration,
                windows=tuple(didemo_segment_to_seconds(s, e, duration) for s, e in segments),
            )
        )
    if not queries:
        raise DataError(path, "holds no annotations")
    return queries


def read_didemo_tvr_style(path: str | Path) -> list[Query]:
    """TVR-style DiDeMo jsonl (HERO/CONQUER): `ts` is a list of annotator `[st, ed]` windows.

    Required: `vid_name`, `ts`, `desc`, `desc_id`; `duration` is read when present. `span` is
    the most frequent window (ties to the first), `windows` all of them, in seconds.
    """
    return read_moment_jsonl(path, ts_form="many", required=("desc",), labels="required")
