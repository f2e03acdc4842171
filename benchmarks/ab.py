"""Before/after of one change in one sitting: run a benchmark for each variant in turn
(A, B, A, B, …), so that both see the same host load, and print each variant's median.

A variant is `NAME:SPEC`, a name and a spec of space-separated tokens: `KEY=VALUE` with an
upper-case KEY sets an environment variable of the run (e.g. `PYTHONPATH=/tmp/base/src` runs an
older copy of the package), every other token is appended to the benchmark's arguments (e.g. a
config).
Each run gets `--no-save`; the comparison is recorded as one result `ab:<benchmark>` (every
run's rows, then the medians). Prints; never asserts a timing.

    .venv/bin/python benchmarks/ab.py --rounds 2 \\
        --variant=before:PYTHONPATH=/tmp/base/src --variant=after: \\
        -- benchmarks/bench_prvr_train.py --configs full-fp32 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    EAGER_MINUTES,
    EAGER_SHARE,
    REFERENCE_BF16_GFLOPS,
    last_json_line,
    load_average,
    machine_facts,
    projection_column,
    record_result,
)

COLUMNS = (
    "queries/s",
    "step s (compute)",
    "step s (min)",
    "warm-up s",
    "% of peak",
    "% of peak (fastest step)",
    "peak RSS MiB",
    "saved MiB",
    "total s",
    "pairs_per_s",
    # bench_prvr_train's `-census` rows
    "matmul s/step",
    "non-matmul s/step",
    projection_column("projected % of peak", REFERENCE_BF16_GFLOPS),
    "peak RSS MiB (census)",
    # bench_vcmr_inference's rows (cached fp32, bf16-census)
    "tvr_val_extrapolated_min",
    "localize_s",
    "non-matmul s",
    projection_column("matmul efficiency", REFERENCE_BF16_GFLOPS),
    projection_column("projected TVR val min", REFERENCE_BF16_GFLOPS),
    projection_column(EAGER_MINUTES, REFERENCE_BF16_GFLOPS),
    projection_column(EAGER_SHARE, REFERENCE_BF16_GFLOPS),
)


def parse_spec(spec: str) -> tuple[dict[str, str], list[str]]:
    """`KEY=VALUE` tokens (upper-case KEY) -> environment; the rest -> arguments."""
    env: dict[str, str] = {}
    extra: list[str] = []
    for token in spec.split():
        key, sep, value = token.partition("=")
        if sep and key.isupper() and key.replace("_", "").isalnum():
            env[key] = value
        else:
            extra.append(token)
    return env, extra


def row_name(row: dict[str, Any]) -> str:
    return str(row.get("config", row.get("mode", row.get("reader", "?"))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="A, B pairs to run")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME:SPEC",
        help="a variant's name, a colon, its spec (write --variant=NAME:SPEC)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not append to results.json")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [arguments]")
    args = parser.parse_args()
    args.variant = [tuple(v.split(":", 1)) if ":" in v else (v, "") for v in args.variant]
    command = [c for c in args.command if c != "--"]
    if not command:
        parser.error("give the benchmark after --")
    runs: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for name, spec in args.variant:
            env, extra = parse_spec(spec)
            load = load_average()[:1]
            argv = [sys.executable, *command, *extra, "--no-save"]
            print(f"--- round {round_index + 1}, {name}: {' '.join(argv)} {env}", flush=True)
            done = subprocess.run(
                argv, capture_output=True, text=True, env={**os.environ, **env}, check=False
            )
            if done.returncode != 0:
                print(done.stdout[-2000:] + done.stderr[-3000:], file=sys.stderr)
                return 1
            rows = last_json_line(done.stdout)["rows"]
            failed = [row for row in rows if "error" in row]
            if failed:  # a configuration's child crashed: no medians from a partial run
                for row in failed:
                    print(f"{name}: {row_name(row)} failed: {row['error']}", file=sys.stderr)
                return 1
            for row in rows:
                kept = {c: row[c] for c in COLUMNS if isinstance(row.get(c), (int, float))}
                runs.append(
                    {"variant": name, "round": round_index + 1, "row": row_name(row)}
                    | kept
                    | {"load avg": load}
                )
                print(runs[-1], flush=True)
    medians: list[dict[str, Any]] = []
    for name, _ in args.variant:
        for row in dict.fromkeys(r["row"] for r in runs if r["variant"] == name):
            mine = [r for r in runs if r["variant"] == name and r["row"] == row]
            median = {"variant": name, "round": "median", "row": row}
            for column in COLUMNS:
                values = [r[column] for r in mine if column in r]
                if values:
                    median[column] = round(statistics.median(values), 3)
            medians.append(median)
    for row in medians:
        print(row, flush=True)
    variants = "; ".join(f"{name}: {spec!r}" for name, spec in args.variant)
    notes = [
        f"variants run in turn, {args.rounds} rounds (A, B, A, B, …) in one sitting: {variants}",
        "median over the rounds; load avg is the 1-min load when each run started",
    ]
    benchmark = "ab:" + Path(command[0]).stem
    params = {"command": command, "rounds": args.rounds, "variants": args.variant}
    record_result(benchmark, runs + medians, machine_facts(), params, notes, not args.no_save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
