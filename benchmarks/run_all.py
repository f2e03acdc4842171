"""Run every benchmark at its default sizes, one after another (what `make bench` calls).

Each benchmark runs as a subprocess with this interpreter, prints its own output and appends
its result to `benchmarks/results.json` / `RESULTS.md`. Benchmarks measure and print; they
never assert a timing, so this script fails only when a benchmark crashes.

    .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --only bench_bigfile --extra=--no-save
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = (
    "bench_bigfile",
    "bench_prvr_train",
    "bench_prvr_eval",
    "bench_vcmr_inference",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument(
        "--extra", action="append", default=[], help="argument passed to every benchmark"
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    failed: list[str] = []
    seconds: dict[str, float] = {}
    for name in names:
        print(f"=== {name} ===", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), *args.extra])
        seconds[name] = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            failed.append(name)
    print(f"=== wall seconds: {seconds}; total {round(sum(seconds.values()), 1)} ===")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results: {BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
