"""Rebuild a paper table: `python -m partial_relevance.tables --table prvr_ablation`.

A table is a file `experiments/<table>.yaml` (SPEC §8): its rows (each one experiment config:
overrides per data mode) and the numbers the paper reports. Building it

1. plans one job per (row, seed): the row's overrides (the table's `common` ones for the data
   mode, then the row's own, then `--override`s) are hashed, and the job's directory is
   `<root>/<table>/<data>/runs/<row>-<hash>/seed<k>`, so a job whose `metrics.json` is already
   there (same config, same seed) is not run again, and a killed job resumes from its
   `last.ckpt` (train(cfg) does that);
2. writes each row as a config file `<root>/<table>/<data>/conf/table_row/<row>-<hash>.yaml`
   (`# @package _global_`: its group choices become `override /group: choice` in its defaults
   list, its values a config) and runs every pending job as ONE Hydra multirun over the rows
   and the seeds: `python -m partial_relevance.train -m hydra.searchpath=[file://...]
   +table_row=<row1>,<row2>,... seed=0,1,2 hydra.sweep.dir=<runs> <--overrides>`. Rows whose
   pending seeds differ (a rerun after some jobs finished) go into one multirun per distinct
   set of pending seeds; `launcher=local|slurm` (`--launcher`) runs them through submitit;
3. reads every job's `metrics.json` (never wandb) and writes `<root>/<table>.md` and `.csv`
   (and a copy per data mode in `<root>/<table>/<data>/`): ours, mean ± std over the seeds,
   beside the paper's numbers, with the checkpoint-selection protocol the runs used.

Stage-wise rows (the PREM localizer tables, SPEC §5): a table file with a `retriever:` entry
(overrides per data mode, e.g. `[experiment=prem_retriever_synthetic]`) trains the localizer
on a retriever run's ranking file. Before the rows' multirun, one retriever job per seed runs
(its own multirun, same mechanism) in `<root>/_retrievers/<data>/runs/<name>-<hash>/seed<k>`,
the hash over the retriever overrides and the `--override`s; a finished one (a `metrics.json`
whose `"artifacts"` report a `ranking_file` that exists) is reused, also by every other table
with the same retriever config. Each row's config then sets `data.ranking_file` to the file
that run reports, its seed directory written `seed${seed}` (the retriever run of the job's
own seed; never a guessed file name), and the row's hash includes the retriever's key, so a
localizer trained on another retriever is not taken for it. `--override`s apply to both
stages, `--retriever-override`s to the retriever stage only. A row may name its own
`retriever:` (per data mode; a table comparing first stages, e.g. `cross_first_stage`): its
localizer then reads that retriever's rankings.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from partial_relevance.cli import exits_on_user_error

# Packaged with the code (src/partial_relevance/{experiments,conf} -> the repo's folders).
EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
CONF_DIR = Path(__file__).resolve().parent / "conf"
DATA_MODES = ("synthetic", "real")
ROW_GROUP = "table_row"  # the config group the row files form
RETRIEVER_DIR = "_retrievers"  # under the tables root: retriever runs any table may reuse
# The retriever run's ranking file: read by value from its metrics.json ("artifacts", as
# train(cfg) reports it), never a guessed file name (model.ranking.file is configurable).
RANKING_ARTIFACT = "ranking_file"


class TableSpecError(ValueError):
    """A table file that does not say what a table needs (names the file and the field)."""


@dataclass(frozen=True)
class Column:
    name: str  # header, and the key of the paper's numbers (e.g. "R@1")
    keys: tuple[str, ...]  # metrics.json keys to read, first present wins (e.g. "test/R@1")


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]  # for every data mode
    data: dict[str, tuple[str, ...]]  # data mode -> overrides
    paper: dict[str, float | None]  # column name -> the paper's number (None: "-")
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> own metric keys
    # data mode -> the row's own retriever stage (overrides the table's `retriever`)
    retriever: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reference: bool = False  # the paper's numbers only (e.g. another method's): never run


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    common: dict[str, tuple[str, ...]]  # data mode -> overrides every row gets
    dataset: dict[str, str] = field(default_factory=dict)  # data mode -> what the rows run on
    notes: tuple[str, ...] = ()
    path: Path | None = None
    # data mode -> overrides of the retriever stage whose ranking file every row reads
    # (empty: the rows are single-stage runs)
    retriever: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    row: Row
    seed: int
    overrides: tuple[str, ...]  # common + row (not the seed, not --override)
    key: str  # "<row slug>-<hash>": the row config's name and the job's parent directory
    run_dir: Path
    retriever: Job | None = None  # the stage-1 run (same seed) whose ranking file it reads
    # artifacts (names in metrics.json["artifacts"]) a finished job must have written
    artifacts: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        """metrics.json is there, and every required artifact it reports exists."""
        if not (self.run_dir / "metrics.json").exists():
            return False
        return all(
            (path := artifact_path(self.run_dir, name)) is not None and path.exists()
            for name in self.artifacts
        )

    @property
    def ranking_file(self) -> str | None:
        """`data.ranking_file` of this job's row config: the ranking file its finished
        retriever run reports (metrics.json), the seed directory written as `seed${seed}` so
        that one row config serves every seed of the multirun; None while it is not done."""
        if self.retriever is None or not self.retriever.done:
            return None
        path = artifact_path(self.retriever.run_dir, RANKING_ARTIFACT)
        assert path is not None  # done
        run_dir = self.retriever.run_dir.resolve()
        if not path.resolve().is_relative_to(run_dir):
            raise TableSpecError(
                f"{self.retriever.run_dir}: its ranking file {path} lies outside the run "
                "directory; a table needs one per seed (keep model.ranking.file relative)"
            )
        return str(run_dir.parent / "seed${seed}" / path.resolve().relative_to(run_dir))


def artifact_path(run_dir: Path, name: str) -> Path | None:
    """A file a finished run reports in its metrics.json: `artifacts[name]` (train(cfg)'s
    RunResult.artifacts), or the flat key of runs written before that; None if absent."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    value = (metrics.get("artifacts") or {}).get(name) or metrics.get(name)
    return Path(value) if isinstance(value, str) else None


def job_seconds(run_dir: Path) -> float | None:
    """Wall time of a finished job: its saved config (written when the job starts) to its
    metrics.json (written last). A resumed job counts from its last start."""
    start, end = Path(run_dir) / ".hydra" / "config.yaml", Path(run_dir) / "metrics.json"
    if not (start.exists() and end.exists()):
        return None
    seconds = end.stat().st_mtime - start.stat().st_mtime
    return seconds if seconds > 0 else None


@dataclass
class RowSummary:
    row: Row
    n: int  # seeds with results
    mean: dict[str, float]
    std: dict[str, float]  # NaN with fewer than 2 seeds
    seeds: list[int]


# --------------------------------------------------------------------------- table files
def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TableSpecError(f"{where}: expected a list of override strings, got {value!r}")
    return tuple(value)


def _per_mode(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    value = value or {}
    if not isinstance(value, dict) or set(value) - set(DATA_MODES):
        raise TableSpecError(f"{where}: expected a mapping with keys {DATA_MODES}, got {value!r}")
    return {mode: _strings(value.get(mode), f"{where}.{mode}") for mode in DATA_MODES}


def load_table_spec(table: str | Path, experiments_dir: Path = EXPERIMENTS_DIR) -> TableSpec:
    """Read `experiments/<table>.yaml` (or a path) into a TableSpec, checking its fields."""
    path = Path(table)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(experiments_dir) / f"{table}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(experiments_dir).glob("*.yaml"))
        raise FileNotFoundError(f"no table file {path}; tables: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    columns = []
    for i, col in enumerate(raw.get("columns") or []):
        if not isinstance(col, dict) or "name" not in col or "key" not in col:
            raise TableSpecError(f"{where}: columns[{i}] needs `name` and `key`")
        keys = col["key"] if isinstance(col["key"], list) else [col["key"]]
        columns.append(Column(str(col["name"]), tuple(str(k) for k in keys)))
    if not columns:
        raise TableSpecError(f"{where}: no `columns`")
    names = {c.name for c in columns}
    rows = []
    for i, row in enumerate(raw.get("rows") or []):
        if not isinstance(row, dict) or "name" not in row:
            raise TableSpecError(f"{where}: rows[{i}] needs a `name`")
        paper = dict(row.get("paper") or {})
        unknown = set(paper) - names
        if unknown:
            raise TableSpecError(
                f"{where}: row {row['name']!r}: paper numbers for unknown columns "
                f"{sorted(unknown)}; columns: {sorted(names)}"
            )
        keys = {}
        for col, key in (row.get("keys") or {}).items():
            if col not in names:
                raise TableSpecError(
                    f"{where}: row {row['name']!r}: keys for unknown column {col!r}"
                )
            keys[col] = tuple(str(k) for k in (key if isinstance(key, list) else [key]))
        rows.append(
            Row(
                name=str(row["name"]),
                keys=keys,
                overrides=_strings(row.get("overrides"), f"{where}: rows[{i}].overrides"),
                data=_per_mode(row.get("data"), f"{where}: rows[{i}].data"),
                paper={k: (None if v is None else float(v)) for k, v in paper.items()},
                retriever=_per_mode(row["retriever"], f"{where}: rows[{i}].retriever")
                if row.get("retriever")
                else {},
                reference=bool(row.get("reference", False)),
            )
        )
    if not rows:
        raise TableSpecError(f"{where}: no `rows`")
    slugs = [slugify(r.name) for r in rows]
    if len(set(slugs)) != len(slugs):
        raise TableSpecError(f"{where}: row names must differ (after slugify): {slugs}")
    return TableSpec(
        name=path.stem,
        title=str(raw.get("title", path.stem)),
        columns=tuple(columns),
        rows=tuple(rows),
        common=_per_mode(raw.get("common"), f"{where}: common"),
        dataset={str(k): str(v) for k, v in (raw.get("dataset") or {}).items()},
        notes=tuple(str(n) for n in raw.get("notes") or ()),
        path=path,
        retriever=_per_mode(raw.get("retriever"), f"{where}: retriever")
        if raw.get("retriever")
        else {},
    )


# --------------------------------------------------------------------------------- jobs
def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


def overrides_hash(overrides: Sequence[str]) -> str:
    """A short stable hash of an override list (order kept: Hydra applies them in order)."""
    return hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:10]


def row_overrides(spec: TableSpec, row: Row, data: str) -> tuple[str, ...]:
    if data not in DATA_MODES:
        raise ValueError(f"data must be one of {DATA_MODES}, got {data!r}")
    return spec.common[data] + row.overrides + row.data[data]


def plan_retriever_jobs(
    spec: TableSpec,
    data: str,
    seeds: Iterable[int],
    extra: Sequence[str] = (),
    root: Path = Path("outputs/tables"),
    overrides: Sequence[str] | None = None,
) -> list[Job]:
    """The retriever stage of a stage-wise table: one job per seed (none when the table has
    no `retriever` for `data`; with `overrides`: that retriever, e.g. a row's own). Its
    directory `<root>/_retrievers/<data>/runs/<name>-<hash>/seed<k>` depends only on the
    retriever config (overrides + `extra`), not on the table, so tables that need the same
    retriever share its runs. Finished = metrics.json and the ranking file."""
    overrides = tuple(spec.retriever.get(data, ()) if overrides is None else overrides)
    if not overrides:
        return []
    experiments = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    name = experiments[-1] if experiments else "retriever"
    key = f"{slugify(name)}-{overrides_hash([*overrides, *extra])}"
    row = Row(name=f"retriever {name}", overrides=overrides, data={}, paper={})
    runs = Path(root) / RETRIEVER_DIR / data / "runs"
    artifacts = (RANKING_ARTIFACT,)
    return [
        Job(row, int(seed), overrides, key, runs / key / f"seed{seed}", artifacts=artifacts)
        for seed in seeds
    ]


def plan_jobs(
    spec: TableSpec,
    data: str,
    seeds: Iterable[int],
    extra: Sequence[str] = (),
    root: Path = Path("outputs/tables"),
    retriever_extra: Sequence[str] = (),
) -> list[Job]:
    """One job per (row, seed); its directory is named after the hash of the row's overrides
    together with the extra ones (`--override`), so the same config finds the same dir. Rows
    with the same config (e.g. several metrics of one run) share one job per seed.

    In a stage-wise table each job also names its retriever job (same seed, see
    `plan_retriever_jobs`; `extra` and `retriever_extra` configure it), whose key enters the
    job's hash."""
    runs = Path(root) / spec.name / data / "runs"
    seeds = [int(s) for s in seeds]
    stages: dict[tuple[str, ...], dict[int, Job]] = {}  # retriever overrides -> seed -> job
    jobs = []
    keys: dict[str, str] = {}  # hash -> key, named after the first row with that config
    for row in spec.rows:
        if row.reference:  # printed beside ours, nothing to run
            continue
        # The row's own retriever (a table comparing first stages) or the table's.
        stage = row.retriever.get(data) or spec.retriever.get(data, ())
        if stage not in stages:
            planned = plan_retriever_jobs(
                spec, data, seeds, [*extra, *retriever_extra], root, stage
            )
            stages[stage] = {j.seed: j for j in planned}
        retrievers = stages[stage]
        overrides = row_overrides(spec, row, data)
        stage1 = [f"retriever={retrievers[seeds[0]].key}"] if retrievers else []
        digest = overrides_hash([*overrides, *extra, *stage1])
        key = keys.setdefault(digest, f"{slugify(row.name)}-{digest}")
        for seed in seeds:
            run_dir = runs / key / f"seed{seed}"
            jobs.append(Job(row, seed, overrides, key, run_dir, retrievers.get(seed)))
    return jobs


def retriever_jobs(jobs: Sequence[Job]) -> list[Job]:
    """The distinct retriever jobs the given jobs read from, in order."""
    return list({j.retriever.run_dir: j.retriever for j in jobs if j.retriever}.values())


def _is_group(key: str, conf_dir: Path) -> bool:
    return key.startswith("hydra/") or (conf_dir / key).is_dir()


def row_config(
    overrides: Sequence[str],
    key: str,
    row: Row,
    conf_dir: Path = CONF_DIR,
    ranking_file: str | None = None,
) -> str:
    """The `# @package _global_` config file that applies a row's overrides inside a sweep:
    group choices become `override /group: choice`, values a nested config. `ranking_file`
    (a stage-wise row) becomes `data.ranking_file`, set after the overrides so that it wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    defaults: list[str] = []
    values = OmegaConf.create({})
    for text in overrides:
        ov = parser.parse_override(text)
        if ov.is_sweep_override() or ov.is_delete():
            raise TableSpecError(f"row {row.name!r}: {text!r}: a row is one config (no sweep, ~)")
        name = ov.key_or_group
        value = ov.value()
        if _is_group(name, conf_dir):
            defaults.append(f"override /{name}: {value}")
        else:
            OmegaConf.update(values, name, value, merge=True, force_add=True)
    if ranking_file is not None:
        OmegaConf.update(values, "data.ranking_file", ranking_file, merge=True, force_add=True)
    body = OmegaConf.to_container(values)
    assert isinstance(body, dict)
    body[ROW_GROUP] = {"name": row.name, "key": key}
    body["hydra"] = {"sweep": {"subdir": f"{key}/seed${{seed}}"}}
    lines = ["# @package _global_", f"# Generated by partial_relevance.tables: row {row.name!r}."]
    if defaults:
        lines.append("defaults:")
        lines += [f"  - {d}" for d in defaults]
    text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    return "\n".join(lines) + "\n" + text


def write_row_configs(jobs: Sequence[Job], conf_dir: Path) -> Path:
    """Write one row config per distinct job key under `conf_dir/table_row/`. A stage-wise
    row whose retriever runs are not all finished is not written (it cannot run yet); the
    ranking files of its seeds must follow one pattern (they do: one retriever config)."""
    group = Path(conf_dir) / ROW_GROUP
    group.mkdir(parents=True, exist_ok=True)
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.key, []).append(job)
    for key, row_jobs in by_key.items():
        job = row_jobs[-1]  # as before: the last row with this config names it
        ranking_file = None
        if job.retriever is not None:
            if not all(j.retriever is not None and j.retriever.done for j in row_jobs):
                continue
            ranking_file = job.ranking_file
            for other in row_jobs:
                reported = artifact_path(other.retriever.run_dir, RANKING_ARTIFACT)  # type: ignore[union-attr]
                expected = str(ranking_file).replace("${seed}", str(other.seed))
                if reported is None or str(reported.resolve()) != expected:
                    raise TableSpecError(
                        f"retriever run {other.retriever.run_dir} reports ranking file "  # type: ignore[union-attr]
                        f"{reported}, expected {expected} as for seed {job.seed}"
                    )
        text = row_config(job.overrides, key, job.row, ranking_file=ranking_file)
        (group / f"{key}.yaml").write_text(text)
    return Path(conf_dir)


def sweep_commands(
    jobs: Sequence[Job],
    conf_dir: Path,
    runs_dir: Path,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[list[str]]:
    """The multiruns that compute the pending jobs: one per distinct set of pending seeds
    (normally one for the whole table)."""
    pending: dict[str, set[int]] = {}
    for job in jobs:
        if not job.done:
            pending.setdefault(job.key, set()).add(job.seed)
    by_seeds: dict[tuple[int, ...], list[str]] = {}
    for key, seeds in pending.items():
        by_seeds.setdefault(tuple(sorted(seeds)), []).append(key)
    commands = []
    for seeds, keys in by_seeds.items():
        commands.append(
            [
                python,
                "-m",
                "partial_relevance.train",
                "-m",
                f"hydra.searchpath=[file://{Path(conf_dir).resolve()}]",
                f"+{ROW_GROUP}={','.join(keys)}",
                f"seed={','.join(str(s) for s in seeds)}",
                f"hydra.sweep.dir={Path(runs_dir).resolve()}",
                *extra,
            ]
        )
    return commands


# ------------------------------------------------------------------------------ results
def collect_results(run_dirs: Iterable[Path]) -> dict[Path, dict[str, Any]]:
    """`{run_dir: metrics}` for every run directory that holds a metrics.json."""
    results = {}
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        if path.exists():
            results[Path(run_dir)] = json.loads(path.read_text())
    return results


def _value(metrics: dict[str, Any], column: Column, row: Row) -> float | None:
    for key in row.keys.get(column.name, column.keys):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not math.isnan(value):
            return float(value)
    return None


def summarize(
    spec: TableSpec, jobs: Sequence[Job], results: dict[Path, dict[str, Any]]
) -> list[RowSummary]:
    """Mean and sample std (n - 1) over the seeds of each row, per column."""
    out = []
    for row in spec.rows:
        row_jobs = [j for j in jobs if j.row.name == row.name and j.run_dir in results]
        mean, std = {}, {}
        for column in spec.columns:
            values = [
                v for j in row_jobs if (v := _value(results[j.run_dir], column, row)) is not None
            ]
            if values:
                mean[column.name] = statistics.fmean(values)
                std[column.name] = statistics.stdev(values) if len(values) > 1 else math.nan
        out.append(RowSummary(row, len(row_jobs), mean, std, sorted(j.seed for j in row_jobs)))
    return out


def selection_protocol(run_dirs: Iterable[Path]) -> str:
    """How the runs chose their checkpoint, from their saved `.hydra/config.yaml`."""
    seen = []
    for run_dir in run_dirs:
        path = Path(run_dir) / ".hydra" / "config.yaml"
        if not path.exists():
            continue
        cfg = yaml.safe_load(path.read_text()) or {}
        monitor = cfg.get("monitor", "?")
        select_on = (cfg.get("data") or {}).get("select_on")
        if select_on == "train_holdout":
            frac = (cfg.get("data") or {}).get("holdout_fraction", 0.05)
            text = (
                f"best `{monitor}` on {100 * float(frac):g} % of the training videos held out "
                "(`data.select_on=train_holdout`: an honest number, SPEC §3)"
            )
        elif select_on == "val":
            text = (
                f"best `{monitor}` on the val split (`data.select_on=val`, the peers' protocol: "
                "in the MS-SL releases the val caption file holds the test queries, SPEC §3)"
            )
        else:
            text = f"best `{monitor}` on the val split"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) if seen else "unknown (no run config found)"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render_markdown(
    spec: TableSpec,
    summary: Sequence[RowSummary],
    data: str,
    protocol: str,
    seeds: Sequence[int] = (),
) -> str:
    """A Markdown table: per column, ours (mean ± std over seeds) then the paper's number."""
    header = ["row"]
    for column in spec.columns:
        header += [f"{column.name} ours", f"{column.name} paper"]
    header.append("seeds")
    lines = [
        f"# {spec.title}",
        "",
        f"- data: **{data}**" + (f" ({spec.dataset[data]})" if data in spec.dataset else ""),
        f"- ours: mean ± std (sample, n - 1) over seeds {list(seeds) or '-'}; "
        "paper: the numbers the paper reports (SPEC §8)",
        f"- checkpoint selection: {protocol}",
        "- metrics from each run's metrics.json; columns: "
        + ", ".join(f"{c.name} = `{' | '.join(c.keys)}`" for c in spec.columns),
    ]
    if data == "synthetic":
        lines.append(
            "- the synthetic corpus is not the paper's dataset: compare the ordering of the rows, "
            "not the values"
        )
    lines += [f"- {note}" for note in spec.notes]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [s.row.name]
        for column in spec.columns:
            mean = s.mean.get(column.name)
            std = s.std.get(column.name, math.nan)
            ours = _fmt(mean) if mean is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
            cells += [ours, _fmt(s.row.paper.get(column.name))]
        cells.append("ref." if s.row.reference else str(s.n))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(spec: TableSpec, summary: Sequence[RowSummary], data: str) -> str:
    """One line per row: `<col>_mean`, `<col>_std`, `<col>_paper` for every column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["table", "data", "row", "n"]
    for column in spec.columns:
        header += [f"{column.name}_mean", f"{column.name}_std", f"{column.name}_paper"]
    writer.writerow(header)

    def num(value: float | None) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.4f}"

    for s in summary:
        line = [spec.name, data, s.row.name, str(s.n)]
        for column in spec.columns:
            line += [
                num(s.mean.get(column.name)),
                num(s.std.get(column.name)),
                num(s.row.paper.get(column.name)),
            ]
        writer.writerow(line)
    return buffer.getvalue()


def build_table(
    spec: TableSpec, jobs: Sequence[Job], data: str, seeds: Sequence[int], root: Path
) -> tuple[str, str, list[Path]]:
    """Collect the jobs' metrics and write the Markdown + CSV files; returns them and paths."""
    results = collect_results(j.run_dir for j in jobs)
    summary = summarize(spec, jobs, results)
    protocol = selection_protocol(results)
    markdown = render_markdown(spec, summary, data, protocol, seeds)
    table_csv = render_csv(spec, summary, data)
    written = []
    for folder in (Path(root), Path(root) / spec.name / data):
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".md", markdown), (".csv", table_csv)):
            path = folder / f"{spec.name}{suffix}"
            path.write_text(text)
            written.append(path)
    return markdown, table_csv, written


def log_to_wandb(spec: TableSpec, table_csv: str, data: str, root: Path) -> None:
    """Log the finished table as a wandb Table (offline unless WANDB_MODE says otherwise)."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    rows = list(csv.reader(io.StringIO(table_csv)))
    run = wandb.init(
        project="partial-relevance",
        job_type="table",
        name=f"{spec.name}-{data}",
        group=f"tables-{spec.name}-{data}",
        dir=str(Path(root) / spec.name / data),
    )
    run.log({f"tables/{spec.name}": wandb.Table(columns=rows[0], data=rows[1:])})
    run.finish()


# ---------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m partial_relevance.tables",
        description="Run a paper table's rows as one Hydra multirun and write ours beside the "
        "paper's numbers (Markdown + CSV).",
    )
    parser.add_argument("--table", required=True, help="experiments/<table>.yaml, or a path")
    parser.add_argument("--data", choices=DATA_MODES, default="synthetic")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for every row (repeatable): trainer=gpu, trainer.max_epochs=2",
    )
    parser.add_argument(
        "--retriever-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the retriever stage only (stage-wise tables, repeatable)",
    )
    parser.add_argument("--launcher", choices=("local", "slurm"), help="run jobs via submitit")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("PARTIAL_RELEVANCE_ROOT", ".")) / "outputs" / "tables",
    )
    parser.add_argument(
        "--rows",
        default=None,
        metavar="A,B",
        help="run only these rows (names or slugs, comma-separated); the table file still "
        "shows every row that has results",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and a time estimate from this table's finished runs, run nothing",
    )
    parser.add_argument(
        "--collect-only", action="store_true", help="only build the table from finished runs"
    )
    parser.add_argument("--wandb", action="store_true", help="also log the table to wandb")
    return parser.parse_args(argv)


def select_rows(spec: TableSpec, rows: str | None) -> set[str]:
    """The row names `--rows a,b` picks (by name or slug, case-insensitive); every row when
    None. An unknown name is an error listing the table's rows."""
    if not rows:
        return {r.name for r in spec.rows}
    by_slug = {slugify(r.name): r.name for r in spec.rows}
    picked, unknown = set(), []
    for name in (n.strip() for n in rows.split(",") if n.strip()):
        if slugify(name) in by_slug:
            picked.add(by_slug[slugify(name)])
        else:
            unknown.append(name)
    if unknown or not picked:
        raise TableSpecError(
            f"{spec.path or spec.name}: --rows {rows!r}: unknown row(s) {unknown}; rows: "
            + ", ".join(f"{r.name!r} ({slugify(r.name)})" for r in spec.rows)
        )
    return picked


def format_duration(seconds: float) -> str:
    """`1 h 05 min`, `4 min 12 s`, `35 s`."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def estimate(pending: Sequence[Job], runs_dir: Path) -> str:
    """A time estimate for running `pending` one after another, from the finished jobs under
    `runs_dir` (`<key>/seed<k>`: the same table and data mode): each pending job takes the
    mean of the finished seeds of its own config if any, else the mean of every finished
    job there. Jobs on more workers (a SLURM sweep) finish sooner."""
    finished: dict[str, list[float]] = {}
    for metrics in sorted(Path(runs_dir).glob("*/seed*/metrics.json")):
        seconds = job_seconds(metrics.parent)
        if seconds is not None:
            finished.setdefault(metrics.parent.parent.name, []).append(seconds)
    every = [t for times in finished.values() for t in times]
    pending = list({j.run_dir: j for j in pending}.values())  # rows sharing a run: one job
    if not pending:
        return "nothing to run"
    if not every:
        return f"no finished run under {runs_dir} to estimate {len(pending)} job(s) from"
    total = sum(statistics.fmean(finished.get(j.key, every)) for j in pending)
    return (
        f"estimate: {len(pending)} job(s) ~ {format_duration(total)} one after another "
        f"(from {len(every)} finished run(s) here, {format_duration(statistics.fmean(every))} "
        "each on average)"
    )


class JobProgress:
    """While a sweep runs, print one line per job that finishes (its metrics.json appears):
    `[k/n] <row> seed <s> done in <time>: <column> <value> ...` (a thread polling the jobs'
    run directories every `interval` seconds; works for any launcher)."""

    def __init__(
        self, jobs: Sequence[Job], spec: TableSpec | None = None, interval: float = 2.0
    ) -> None:
        self.jobs = list({j.run_dir: j for j in jobs}.values())
        self.spec = spec
        self.interval = interval
        self.reported: set[Path] = {j.run_dir for j in self.jobs if j.done}
        self.total = len(self.jobs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def poll(self) -> None:
        for job in self.jobs:
            if job.run_dir in self.reported or not job.done:
                continue
            self.reported.add(job.run_dir)
            line = f"[{len(self.reported)}/{self.total}] {job.row.name} seed {job.seed} done"
            seconds = job_seconds(job.run_dir)
            if seconds is not None:
                line += f" in {format_duration(seconds)}"
            if self.spec is not None:
                metrics = json.loads((job.run_dir / "metrics.json").read_text())
                values = [(c.name, _value(metrics, c, job.row)) for c in self.spec.columns]
                shown = [f"{name} {value:.2f}" for name, value in values if value is not None]
                if shown:
                    line += ": " + ", ".join(shown)
            print(line, flush=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> JobProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def _list_jobs(jobs: Sequence[Job], selected: set[str] | None = None) -> None:
    for job in jobs:
        state = "done" if job.done else "todo"
        if selected is not None and job.row.name not in selected and not job.done:
            state = "skip"
        print(f"  [{state}] {job.row.name:<24} seed {job.seed}  {job.run_dir}")


def run_retrievers(
    jobs: Sequence[Job],
    extra: Sequence[str],
    dry_run: bool = False,
    call: Callable[[list[str]], int] = subprocess.call,
) -> int:
    """Stage 1 of a stage-wise table: run the pending retriever jobs the `jobs` read from, as
    one multirun (per distinct seed set) in their shared directory; returns the exit status.
    `extra`: every override the retriever sweep gets (`--override`, `--retriever-override`,
    launcher)."""
    retrievers = retriever_jobs(jobs)
    pending = [r for r in retrievers if not r.done]
    if not retrievers:
        return 0
    print(f"retriever stage: {len(retrievers) - len(pending)} done, {len(pending)} to run")
    _list_jobs(retrievers)
    status = 0
    if pending:
        base = retrievers[0].run_dir.parents[1]  # <root>/_retrievers/<data>/runs
        print(estimate(pending, base), flush=True)
        conf_dir = write_row_configs(retrievers, base.parent / "conf")
        for command in sweep_commands(retrievers, conf_dir, base, extra):
            print("$ " + " ".join(command), flush=True)
            if not dry_run:
                with JobProgress(retrievers):
                    status = call(command) or status
    return status


@exits_on_user_error  # DataError, refused run, bad config value: one line, exit 1
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_table_spec(args.table)
    selected = select_rows(spec, args.rows)
    seeds = list(range(args.seeds))
    extra = list(args.override)
    retriever_extra = list(args.retriever_override)
    jobs = plan_jobs(spec, args.data, seeds, extra, args.root, retriever_extra)
    base = Path(args.root) / spec.name / args.data
    launcher = [f"launcher={args.launcher}"] if args.launcher else []
    chosen = [j for j in jobs if j.row.name in selected]
    pending = [j for j in chosen if not j.done]
    rows = f"{len(selected)} of {len(spec.rows)} rows" if args.rows else f"{len(spec.rows)} rows"
    print(
        f"table {spec.name} ({args.data}): {rows} x {len(seeds)} seeds, "
        f"{sum(j.done for j in jobs)} done, {len(pending)} to run"
    )
    _list_jobs(jobs, selected)
    status = 0
    if pending and not args.collect_only:
        # Stage 1 (stage-wise tables): the retrievers whose rankings the pending jobs read.
        status = run_retrievers(
            pending, [*extra, *retriever_extra, *launcher], args.dry_run, subprocess.call
        )
        blocked = [j for j in pending if j.retriever and not j.retriever.done]
        if blocked and not args.dry_run:
            print(
                f"{len(blocked)} job(s) wait for a retriever run that did not finish (no "
                f"metrics.json reporting its {RANKING_ARTIFACT}); not run",
                file=sys.stderr,
            )
        ready = pending if args.dry_run else [j for j in pending if j not in blocked]
        print(estimate(ready, base / "runs"), flush=True)
        conf_dir = write_row_configs(ready, base / "conf")
        for command in sweep_commands(ready, conf_dir, base / "runs", [*extra, *launcher]):
            print("$ " + " ".join(command), flush=True)
            if not args.dry_run:
                with JobProgress(ready, spec):
                    status = subprocess.call(command) or status
    if args.dry_run:
        return 0
    markdown, table_csv, written = build_table(spec, jobs, args.data, seeds, args.root)
    print(markdown)
    print("written: " + ", ".join(str(p) for p in written))
    if args.wandb:
        log_to_wandb(spec, table_csv, args.data, args.root)
    missing = [j for j in chosen if not j.done]
    if missing and not args.collect_only:
        print(f"{len(missing)} job(s) have no metrics.json", file=sys.stderr)
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
