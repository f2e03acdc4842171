"""Shared helpers of the benchmark suite: machine facts, timers, result recording.

Every benchmark prints its result as ONE JSON object on the last line of stdout, appends it to
`benchmarks/results.json` (a list, newest last) and regenerates `benchmarks/RESULTS.md`.
Benchmarks measure and print; they never assert a timing. Only ratios measured on one host in
one sitting mean anything: every result carries the machine facts it was measured with.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from partial_relevance.models.precision import cpu_flags

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


# -------------------------------------------------------------------------------- machine


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict ({} where absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """CPU model name (`/proc/cpuinfo` 'model name', else `platform.processor()`)."""
    fields = _cpuinfo_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def bf16_units() -> dict[str, bool]:
    """Whether the CPU advertises bf16 matrix/vector units (`amx_bf16`, `avx512_bf16`)."""
    flags = cpu_flags() or set()
    return {flag: flag in flags for flag in BF16_FLAGS}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (a loaded host slows every number)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux `ru_maxrss` is KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def matmul_flops(dtype: torch.dtype, size: int = 1024, reps: int = 8) -> float:
    """Dense `size`×`size` matmul rate in FLOP/s (2·n³ per product; median of `reps`): the
    yardstick of every '% of peak' column."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):  # warm-up: kernel selection, page faults
        torch.matmul(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def sustained_matmul_flops(dtype: torch.dtype, seconds: float = 2.0, size: int = 1024) -> float:
    """Dense matmul rate in FLOP/s averaged over `seconds` of back-to-back products: on a
    shared host this is the rate the CPU share of the moment allows, the yardstick a
    benchmark's own achieved rate is compared with (a few short products would catch an idle
    instant instead)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.matmul(a, b)
        count += 1
    return 2.0 * size**3 * count / elapsed


def machine_facts(measure_matmul: bool = True) -> dict[str, Any]:
    """Facts every report carries: CPU, bf16 units, torch, threads, command, load, matmul rate."""
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "bf16_units": bf16_units(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "load_avg": load_average(),
    }
    if measure_matmul:
        facts["matmul_gflops"] = {
            "fp32": round(matmul_flops(torch.float32) / 1e9, 1),
            "bf16": round(matmul_flops(torch.bfloat16) / 1e9, 1),
        }
    return facts


# ------------------------------------------------------------------------- peer projection

# The reference hosts (2 threads): fp32 dense-matmul rates the peers were timed at.
PEER_HOST_FP32_GFLOPS = {"A": 170.0, "B": 400.0}


def peer_on_this_host(value: float, host: str, machine: dict[str, Any], kind: str) -> float:
    """A peer's figure measured on reference host `host`, projected to this host by the ratio
    of fp32 matmul rates (the peers run fp32). `kind`: 'rate' (e.g. queries/s, scales with
    speed) or 'time' (seconds, scales inversely). A projection, not a measurement: the peers'
    code is not run here."""
    ratio = machine["matmul_gflops"]["fp32"] / PEER_HOST_FP32_GFLOPS[host]
    return value * ratio if kind == "rate" else value / ratio


def add_peer_ratio(
    rows: list[dict[str, Any]],
    *,
    measured: str,
    column: str,
    peer: str,
    value: float,
    unit: str,
    host: str,
    machine: dict[str, Any],
    kind: str,
) -> str:
    """Give each row a `column`: how many times better its `measured` figure is than `peer`'s
    `value` (`unit`, timed on reference `host`) projected to this host (`kind`: 'rate', more
    is better, or 'time', less is better). Returns the report note that explains the column."""
    projected = peer_on_this_host(value, host, machine, kind)
    for row in rows:
        if measured not in row:  # a census row: an estimate, nothing measured to compare
            continue
        ours = row[measured]
        row[column] = round(ours / projected if kind == "rate" else projected / ours, 2)
    return (
        f"{column}: `{measured}` against {peer} ({value:g} {unit} on host {host}), "
        f"projected to this host by fp32 matmul rate ({machine['matmul_gflops']['fp32']} vs "
        f"{PEER_HOST_FP32_GFLOPS[host]:g} GFLOP/s) = {projected:.1f} {unit}; a projection, "
        "the peer's code is not run here"
    )


# ---------------------------------------------------------------------------------- timing


class Stopwatch:
    """Accumulates wall-clock seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------------- results


def _cell(value: Any) -> str:
    """A Markdown table cell: floats to 4 significant digits (integral from 1000), dicts/lists
    compact."""
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":")).replace("|", "\\|")
    return str(value).replace("|", "\\|")


def _machine_line(machine: dict[str, Any]) -> str:
    units = [k for k, v in machine.get("bf16_units", {}).items() if v] or ["none"]
    flops = machine.get("matmul_gflops", {})
    return (
        f"{machine.get('cpu', '?')}; {machine.get('threads', '?')} torch threads "
        f"({machine.get('cpu_count', '?')} CPUs); bf16 units: {', '.join(units)}; "
        f"torch {machine.get('torch', '?')}; load avg {machine.get('load_avg', '?')}; "
        f"matmul 1024² fp32 {flops.get('fp32', '?')} GFLOP/s, bf16 {flops.get('bf16', '?')} "
        "GFLOP/s"
    )


def render_markdown(results: list[dict[str, Any]]) -> str:
    """RESULTS.md: per benchmark, each run (newest last) as machine facts + one table."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/common.py` from `results.json` (newest last); do not edit.",
        "Only ratios measured on one host in one sitting mean anything: compare rows of one run.",
        "",
    ]
    names = list(dict.fromkeys(r.get("benchmark", "?") for r in results))
    for name in names:
        lines += [f"## {name}", ""]
        for result in (r for r in results if r.get("benchmark") == name):
            machine = result.get("machine", {})
            lines += [
                f"### {result.get('timestamp', '?')}",
                "",
                f"- machine: {_machine_line(machine)}",
                f"- command: `{machine.get('command', '?')}`",
                f"- parameters: `{_cell(result.get('params', {}))}`",
            ]
            lines += [f"- note: {note}" for note in result.get("notes", [])]
            lines.append("")
            rows = result.get("rows", [])
            if rows:
                columns = list(dict.fromkeys(key for row in rows for key in row))
                lines.append("| " + " | ".join(columns) + " |")
                lines.append("|" + "---|" * len(columns))
                for row in rows:
                    lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
                lines.append("")
    return "\n".join(lines)


def record_result(
    benchmark: str,
    rows: list[dict[str, Any]],
    machine: dict[str, Any],
    params: dict[str, Any],
    notes: list[str] | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Append one result to results.json, regenerate RESULTS.md, print it as one JSON line."""
    notes = list(notes or [])
    load, cpus = machine.get("load_avg") or [0.0], machine.get("cpu_count") or 1
    if load[0] > 0.75 * cpus:
        notes.insert(
            0,
            f"host shared while measuring: 1-min load {load[0]} on {cpus} CPUs (other jobs); "
            "absolute times are inflated, compare only rows of this run",
        )
    result = {
        "benchmark": benchmark,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "params": params,
        "notes": notes,
        "rows": rows,
    }
    if save:
        previous: list[dict[str, Any]] = []
        if RESULTS_JSON.exists():
            try:
                previous = json.loads(RESULTS_JSON.read_text())
            except json.JSONDecodeError:
                print(f"warning: {RESULTS_JSON} is not valid JSON; starting a new list")
        previous.append(result)
        RESULTS_JSON.write_text(json.dumps(previous, indent=1) + "\n")
        RESULTS_MD.write_text(render_markdown(previous) + "\n")
    print(json.dumps(result), flush=True)
    return result


def last_json_line(stdout: str) -> dict[str, Any]:
    """Parse the last stdout line of a child benchmark process as JSON."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("child process printed nothing")
    return json.loads(lines[-1])


def run_config_process(command: list[str], config: str) -> dict[str, Any]:
    """Run one benchmark configuration in its own process (its own peak RSS) and return the
    row it prints as its last JSON line, or `{config, error}` when it fails."""
    print(f"running {config} ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return {"config": config, "error": done.stderr.strip().splitlines()[-1]}
    row = last_json_line(done.stdout)
    print(row, flush=True)
    return row


def _native_mha_flops(
    query: Sequence[int],
    key: Sequence[int],
    value: Sequence[int],
    embed_dim: int,
    *_: Any,
    **__: Any,
) -> int:
    """`nn.MultiheadAttention`'s inference fast path (`aten._native_multi_head_attention`), one
    op that runs the q / k / v projections, both attention products and the output
    projection: 2·B·E·(Lq·E + 2·Lk·E + 2·Lq·Lk + Lq·E) (products only, as `addmm`'s formula)."""
    batch = query[0] if len(query) == 3 else 1  # [B, L, E] (batch_first) or unbatched [L, E]
    lq, lk = query[-2], key[-2]
    return 2 * batch * embed_dim * (2 * lq * embed_dim + 2 * lk * embed_dim + 2 * lq * lk)


def _cpu_flash_attention_flops(
    query: Sequence[int], key: Sequence[int], value: Sequence[int], *_: Any, **__: Any
) -> int:
    """`aten._scaled_dot_product_flash_attention_for_cpu` (SDPA's CPU kernel): q kᵀ and the
    weights times v, as torch counts its GPU flash / efficient kernels."""
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flops(
    grad_out: Sequence[int],
    query: Sequence[int],
    key: Sequence[int],
    value: Sequence[int],
    *_: Any,
    **__: Any,
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# The CPU kernels torch's FlopCounterMode has no formula for (it counts them as 0 FLOPs): the
# localizer's self-attention in eval, every SDPA attention in eval.
_CPU_FLOP_FORMULAS = {
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        _cpu_flash_attention_backward_flops
    ),
}


def count_flops() -> flop_counter.FlopCounterMode:
    """`FlopCounterMode` that also counts the CPU attention kernels torch's own table misses
    (`nn.MultiheadAttention`'s inference fast path, SDPA's CPU flash kernel forward and
    backward); use as `with count_flops() as counter: ...; counter.get_total_flops()`."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=dict(_CPU_FLOP_FORMULAS))


def percent_of_peak(achieved_gflops: float, peak_gflops: float) -> float:
    """`achieved` as a percentage of a measured matmul rate (one decimal)."""
    return round(100.0 * achieved_gflops / peak_gflops, 1)


# --------------------------------------------------------------------------------- harness
# Every configuration benchmark has one shape: the parent writes a generated MS-SL collection
# (or reads any MS-SL directory, so peers can be timed on the same files), runs each
# configuration in its own child process (its own peak RSS) and records the rows.


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU (what `precision=bf16` / Lightning `bf16-mixed` runs), or nothing
    for fp32."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dataset_parser(doc: str, *, collection: str, feature: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark over an MS-SL collection shares:
    `--root/--collection/--feature` (the dataset; none: generate one), `--seed`, `--threads`,
    `--no-save`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="MS-SL dataset root (default: generate one)")
    parser.add_argument("--collection", default=collection, help="collection under --root")
    parser.add_argument("--feature", default=feature, help="FeatureData/<feature> name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-save", action="store_true", help="do not append to results.json")
    return parser


def add_generated_size_arguments(parser: argparse.ArgumentParser, videos: int, frames: int) -> None:
    """`--videos` and `--frames`: the size of the collection generated when no `--root` is
    given."""
    parser.add_argument("--videos", type=int, default=videos, help="generated videos")
    parser.add_argument("--frames", type=int, default=frames, help="generated frames per video")


def host_config() -> dict[str, Any]:
    """`conf/host/default.yaml`: the host settings a training or evaluation run applies."""
    from omegaconf import OmegaConf

    from partial_relevance.train import CONFIG_DIR

    return dict(OmegaConf.load(Path(CONFIG_DIR) / "host" / "default.yaml"))


def default_malloc() -> str:
    """`malloc` of `conf/host/default.yaml`: the host allocator of training and evaluation."""
    return str(host_config()["malloc"])


def apply_host_settings(malloc: str) -> None:
    """What train/evaluate set before anything large is allocated (`host_settings`), with
    this run's `--malloc`."""
    from partial_relevance.host_settings import apply_host_settings as apply

    apply({**host_config(), "malloc": malloc})


def add_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """`--malloc system|reuse` (`partial_relevance.host_malloc`), by default the suite's."""
    from partial_relevance.host_malloc import MALLOC_MODES

    parser.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default=default_malloc(),
        help="host allocator (`malloc` of conf/host/default.yaml, whose value is the default)",
    )


def benchmark_parser(
    doc: str, *, collection: str, feature: str, configs: Sequence[str]
) -> argparse.ArgumentParser:
    """`dataset_parser` plus what every configuration benchmark adds: `--configs`, `--malloc`
    (each child sets it before it allocates) and the hidden `--child --config` its child
    processes get."""
    parser = dataset_parser(doc, collection=collection, feature=feature)
    add_malloc_argument(parser)
    parser.add_argument(
        "--configs", default=",".join(configs), help=f"comma-separated subset of {list(configs)}"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    return parser


def run_parent_or_child(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    script: str,
    known: Callable[[str], bool],
    child_args: Sequence[str],
    layout: Callable[[], Any],
    run_child: Callable[[argparse.Namespace], dict[str, Any]],
    after_row: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]] | None:
    """The shared `main` of a configuration benchmark.

    Child (`--child`): time `args.config` with `run_child` and print its row; returns None.
    Parent: generate the collection `layout()` describes (a `msl_layout.LayoutSpec`) in a
    temporary directory unless `--root` is given, run each of `--configs` (`known(name)` must
    hold) in a child of `script` that gets the options named in `child_args`, and return
    (machine facts, rows, notes); `after_row(row)` may add rows after each one.
    """
    from msl_layout import write_layout  # here: the children never write a layout

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        apply_host_settings(args.malloc)  # as train/evaluate do, before anything is allocated
        print(json.dumps(run_child(args)), flush=True)
        return None
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if not known(c)]
    if unknown:
        parser.error(f"unknown configs {unknown}")
    machine = machine_facts()
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}_") as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            spec = layout()
            start = time.perf_counter()
            counts = write_layout(root, spec)
            notes.append(
                f"generated MS-SL collection {spec.collection!r}: {counts} in "
                f"{time.perf_counter() - start:.1f} s (random features)"
            )
        else:
            notes.append(f"dataset: {root / args.collection} feature {args.feature}")
        for config in configs:
            command = [sys.executable, str(Path(script).resolve()), "--child", "--config", config]
            command += ["--root", str(root), "--collection", args.collection]
            command += ["--feature", args.feature]
            for name in (*child_args, "seed", "threads", "malloc"):
                value = getattr(args, name)
                flag = f"--{name.replace('_', '-')}"
                if isinstance(value, bool):  # an argparse.BooleanOptionalAction
                    command += [flag if value else f"--no-{flag[2:]}"]
                else:
                    command += [flag, str(value)]
            row = run_config_process(command, config)
            rows.append(row)
            if after_row is not None and "error" not in row:
                rows += after_row(row)
    return machine, rows, notes


def record_args(
    benchmark: str,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    machine: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """`record_result` with the command-line options as the parameters (paths as strings,
    the hidden child options dropped)."""
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params.pop("child", None)
    params.pop("config", None)
    return record_result(benchmark, rows, machine, params, notes, save=not args.no_save)


# ------------------------------------------------------------------------------ memory


class SavedActivations:
    """What autograd keeps for backward during the forwards run inside this context: bytes of
    every distinct storage packed by `torch.autograd.graph.saved_tensors_hooks` (parameters
    excluded), by the innermost module that saved it ('<Module type>') and by top-level
    submodule of `model` ('branch'); tensors saved outside any module count as '(functional)'
    (losses, heads called as functions).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.by_module: dict[str, int] = {}
        self.by_branch: dict[str, int] = {}
        self.by_dtype: dict[str, int] = {}
        self._stack: list[tuple[str, str]] = []
        self._handles: list[Any] = []

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer in self.parameters or pointer in self.seen:
            return tensor
        self.seen.add(pointer)
        nbytes = storage.nbytes()
        kind, branch = self._stack[-1] if self._stack else ("(functional)", "(functional)")
        for table, key in (
            (self.by_module, kind),
            (self.by_branch, branch),
            (self.by_dtype, str(tensor.dtype).replace("torch.", "")),
        ):
            table[key] = table.get(key, 0) + nbytes
        return tensor

    def __enter__(self) -> SavedActivations:
        for name, module in self.model.named_modules():
            if not name:
                continue
            parts = name.split(".")
            branch = parts[1] if parts[0] == "net" and len(parts) > 1 else parts[0]
            label = (type(module).__name__, branch)

            def push(_module: Any, _inputs: Any, label: tuple[str, str] = label) -> None:
                self._stack.append(label)

            def pop(_module: Any, _inputs: Any, _output: Any) -> None:
                self._stack.pop()

            self._handles.append(module.register_forward_pre_hook(push))
            self._handles.append(module.register_forward_hook(pop))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def summary(self, top: int = 8) -> dict[str, Any]:
        """Total MiB and the `top` largest entries of each table, in MiB."""

        def mib(table: dict[str, int]) -> dict[str, float]:
            ordered = sorted(table.items(), key=lambda item: -item[1])[:top]
            return {key: round(value / 2**20, 1) for key, value in ordered}

        return {
            "saved MiB": round(sum(self.by_module.values()) / 2**20, 1),
            "saved MiB by module": mib(self.by_module),
            "saved MiB by branch": mib(self.by_branch),
            "saved MiB by dtype": mib(self.by_dtype),
        }


def msl_datamodule(args: argparse.Namespace, stage: str, **options: Any) -> Any:
    """The suite's `PrvrDataModule` over the benchmark's MS-SL collection (`--root`,
    `--collection`, `--feature`, `--num-workers`), set up for `stage`; `options` are further
    datamodule arguments (batch sizes, split, seed)."""
    from partial_relevance.data.prvr import PrvrDataModule

    datamodule = PrvrDataModule(
        root=str(args.root),
        collection=args.collection,
        feature=args.feature,
        num_workers=args.num_workers,
        **options,
    )
    datamodule.setup(stage)
    return datamodule


def model_config(model: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """`model=<model>` composed from the configs (the one source of every default) with Hydra
    `overrides` (e.g. `model.ice.enabled=true`), every interpolation resolved; composed once
    per (model, overrides), a fresh copy each call."""
    return copy.deepcopy(_composed_model(model, tuple(overrides or ())))


@functools.cache
def _composed_model(model: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from partial_relevance.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def model_sections(model: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Every LightningModule argument of `model=<model>` but `net` and `optimizer`."""
    config = model_config(model, overrides)
    return {
        k: v for k, v in config.items() if k not in ("_target_", "_recursive_", "net", "optimizer")
    }


def optimizer_factory(model: str, **overrides: Any) -> Any:
    """The optimiser of `model=<model>` (`conf/model/optimizer/*`) as a factory of parameters,
    with `overrides` (e.g. `lr=2.5e-4`)."""
    import hydra

    config = model_config(model)["optimizer"]
    values = {k: v for k, v in config.items() if not k.startswith("_")}
    return functools.partial(hydra.utils.get_class(config["_target_"]), **{**values, **overrides})


def net_arguments(model: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The net's constructor arguments of `model=<model>` (its `net` section, no `_target_`)."""
    return {k: v for k, v in model_config(model, overrides)["net"].items() if k != "_target_"}


# ------------------------------------------------------------------------------ op census
# The matmul family: what runs on the matrix units (and what `% of peak` counts); every other
# aten op is the "non-matmul" work (elementwise, reductions, copies, RNG) that decides a bf16
# step on a host with fast bf16 matmuls (issue #19).
MATMUL_OPS = frozenset(
    {
        *("mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "_addmm_activation"),
        *("convolution", "convolution_backward", "_native_multi_head_attention"),
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention_for_cpu_backward",
    }
)
# Matmul ops whose every floating output has the inputs' dtype: the ones a bf16 proxy may run
# in fp32 and round back (SDPA's CPU kernels return an fp32 log-sum-exp beside a bf16 output).
# `_native_multi_head_attention` is nn.MultiheadAttention's inference fast path (the PREM
# localizer's cross-modal attention): emulated in bf16 it took 3.1 of a VCMR census's 4.7 s.
_PROXIED_OPS = frozenset(
    {
        *("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward"),
        "_native_multi_head_attention",
    }
)
# Ops torch runs on oneDNN in bf16 only where oneDNN's bf16 check passes (AVX-512 cores, such as
# host A's; `torch.ops.mkldnn._is_mkldnn_bf16_supported()`) and on ATen's own kernel elsewhere,
# while fp32 runs on oneDNN on any x86 host. A census that models host A on a CPU failing that
# check times them as oneDNN runs them in fp32 (`OpCensus.onednn_stand_in`): the full step's bf16
# GELU took 175 ms on ATen's kernel here against 96 ms on oneDNN in fp32 (2-core EPYC).
_ONEDNN_BF16_OPS = frozenset({"gelu", "gelu_backward"})


@functools.cache
def onednn_fp32_only() -> bool:
    """Whether torch here runs fp32 GELU on oneDNN and bf16 GELU on ATen's own kernel (oneDNN
    built in, its bf16 check failing on this CPU), as on the EPYC without AVX-512 of #19."""
    if not torch.backends.mkldnn.is_available():
        return False
    return not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def census_stand_ins(censuses: Sequence[OpCensus], per: float = 1.0) -> dict[str, str]:
    """The census row's note of ops timed by a stand-in, where one of `censuses` stands them in
    (`OpCensus.onednn_stand_in`), and their seconds (÷ `per`: steps) on this CPU's kernel and
    as counted; {} where none does."""
    if not any(census.onednn_stand_in for census in censuses):
        return {}
    own = sum(census.stand_in_own for census in censuses) / per
    counted = sum(census.stand_in_counted for census in censuses) / per
    return {
        "bf16 GELU timed as": "oneDNN fp32, same shape (numbers from ATen's bf16 kernel): "
        "host A's torch runs bf16 GELU on oneDNN, this CPU's on ATen's kernel",
        "bf16 GELU s (ATen here -> counted)": f"{own:.3f} -> {counted:.3f}",
    }


class OpCensus(TorchDispatchMode):
    """Seconds and calls of every aten op run inside it (forward, backward and optimiser), the
    matmul family (`MATMUL_OPS`) apart from the rest.

    With `proxy_bf16_matmuls`, a bf16 mm/addmm/bmm/baddbmm/convolution runs in fp32 (inputs
    upcast, outputs rounded back to bf16: the numbers of a bf16 product to rounding): on a
    host without bf16 units torch emulates bf16 products ~100× slower than fp32, while the
    rest of a bf16 step (the elementwise work in bf16 and fp32) runs as it would anywhere.
    Each op is timed alone, between Python calls, so the census's total exceeds an eager
    step's (idle threads wake up for every op): its non-matmul seconds are an upper bound.

    With proxies and where torch's oneDNN bf16 check fails on this CPU, a bf16 op of
    `_ONEDNN_BF16_OPS` that a passing CPU would run on oneDNN runs as here (its numbers) and is
    timed on fp32 copies of its inputs, which oneDNN runs here (`onednn_stand_in`): an upper
    bound of oneDNN's bf16 kernel, which does the same arithmetic on half the bytes.
    """

    def __init__(self, proxy_bf16_matmuls: bool = False, lean: bool = False) -> None:
        """`lean`: proxies run blockwise (`_proxied_in_blocks`), so that their fp32 temporaries stay
        within a few `LEAN_BLOCK_BYTES` blocks and the step's peak RSS is that of a bf16 step
        to within them (the blocks add calls: time such steps for memory only; no stand-ins,
        whose fp32 copies would count in the peak)."""
        super().__init__()
        self.proxy_bf16_matmuls = proxy_bf16_matmuls
        self.lean = lean
        self.onednn_stand_in = proxy_bf16_matmuls and not lean and onednn_fp32_only()
        self.blocked = 0  # proxies run in blocks (the others ran whole)
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.proxied = 0
        self.stood_in = 0  # ops timed by a oneDNN fp32 stand-in
        # Wall seconds the stand-ins took beyond what they count (this CPU's own kernel, the
        # fp32 copies): a stage timed around the census takes them out of its wall.
        self.stand_in_excess = 0.0
        self.stand_in_own = 0.0  # the stood-in ops' seconds on this CPU's kernel
        self.stand_in_counted = 0.0  # and as counted (their stand-ins')

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        proxy = self.proxy_bf16_matmuls and name in _PROXIED_OPS and _has_bf16((args, kwargs))
        if self.onednn_stand_in and _onednn_would_run(name, args, kwargs):
            start = time.perf_counter()
            out = func(*args, **kwargs)  # the numbers: this CPU's bf16 kernel, not counted
            self.stand_in_own += time.perf_counter() - start
            seconds = _timed_in_fp32(func, args, kwargs)
            self.stand_in_excess += time.perf_counter() - start - seconds
            self.stand_in_counted += seconds
            self.stood_in += 1
        else:
            start = time.perf_counter()
            if proxy:
                out = _proxied_in_blocks(func, args, kwargs) if self.lean else None
                self.blocked += out is not None
                if out is None:
                    out = _proxied_in_fp32(func, args, kwargs)
                self.proxied += 1
            else:
                out = func(*args, **kwargs)
            seconds = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1
        return out

    def totals(self) -> tuple[float, float, int]:
        """(matmul seconds, non-matmul seconds, op calls) so far."""
        matmul = sum(s for name, s in self.seconds.items() if name in MATMUL_OPS)
        return matmul, sum(self.seconds.values()) - matmul, sum(self.calls.values())

    def top(self, count: int = 10, steps: int = 1) -> dict[str, str]:
        """The `count` slowest non-matmul ops: name -> 'ms a step (calls a step)'."""
        ordered = sorted(
            (item for item in self.seconds.items() if item[0] not in MATMUL_OPS),
            key=lambda item: -item[1],
        )[:count]
        return {
            name: f"{1e3 * seconds / steps:.1f} ms ({self.calls[name] / steps:g})"
            for name, seconds in ordered
        }


def _proxied_in_fp32(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """`func(*args, **kwargs)` with its bf16 tensors upcast to fp32 and its outputs rounded back
    to bf16; an `out=` overload runs as its functional overload and copies into `out` (the
    caller's buffer must get the result, not an fp32 copy of it). A tensor passed more than
    once (self-attention's query, key and value) is upcast once and passed as one tensor, as
    the bf16 call passes it: no extra casts, and the op's same-tensor paths are kept."""
    upcasts: dict[int, torch.Tensor] = {}

    def upcast(x: Any) -> Any:
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16):
            return x
        if id(x) not in upcasts:
            upcasts[id(x)] = x.to(torch.float32)
        return upcasts[id(x)]

    if "out" in kwargs:
        kwargs = dict(kwargs)
        out = kwargs.pop("out")
        result = func.overloadpacket.default(*tree_map(upcast, args), **tree_map(upcast, kwargs))
        return out.copy_(result)  # rounds to out's dtype
    result = func(*tree_map(upcast, args), **tree_map(upcast, kwargs))
    return tree_map(functools.partial(_cast_floating, torch.float32, torch.bfloat16), result)


# A lean proxy's fp32 temporaries: each upcast operand block and each fp32 output block at most
# this many bytes (beyond an operand the chosen blocking leaves whole, which in a Linear or an
# attention product is a weight or one batch item), so a lean census step holds at most a few
# such blocks more than a bf16 step instead of a whole product's fp32 operands and output
# (up to ~120 MiB for the FFN's weight gradient at batch 128).
LEAN_BLOCK_BYTES = 8 << 20


def _blocks(total: int, unit_bytes: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges over `total` units, each block at most LEAN_BLOCK_BYTES (>= 1 unit)."""
    step = max(1, LEAN_BLOCK_BYTES // max(1, unit_bytes))
    return [(lo, min(total, lo + step)) for lo in range(0, total, step)]


def _proxied_in_blocks(func: Any, args: Any, kwargs: dict[str, Any]) -> Any | None:
    """`_proxied_in_fp32` blockwise: mm along whichever of M, N, K leaves the smallest operand
    whole (along K the fp32 partial products are summed in fp32, then rounded once), bmm and
    baddbmm along the batch, addmm along M; None for other ops and overloads (proxied whole).
    The numbers of the whole proxy to fp32 rounding; a bf16 output is written block by block."""
    name, overload = func.overloadpacket.__name__, func._overloadname
    scalars = {key: kwargs[key] for key in ("beta", "alpha") if key in kwargs}
    if overload not in ("default", "out") or set(kwargs) - {"out", *scalars}:
        return None
    out = kwargs.get("out")
    if name == "mm":
        return _mm_in_blocks(*args, out=out)
    if name == "bmm":
        a, b = args
        result = _empty_result(out, (a.shape[0], a.shape[1], b.shape[2]), a)
        unit = 4 * (a[0].numel() + b[0].numel() + a.shape[1] * b.shape[2])
        for lo, hi in _blocks(a.shape[0], unit):
            result[lo:hi] = torch.bmm(a[lo:hi].float(), b[lo:hi].float())
        return result
    if name in ("addmm", "baddbmm") and len(args) == 3:
        bias, a, b = args
        rows = a.shape[:-1] + b.shape[-1:]  # [M, N] or [B, M, N]
        result = _empty_result(out, rows, a)
        full_bias = bias.expand(rows)
        op = torch.addmm if name == "addmm" else torch.baddbmm
        per_row = a[0].numel() + (b[0].numel() if name == "baddbmm" else 0) + rows[1:].numel()
        for lo, hi in _blocks(rows[0], 4 * per_row):
            b_block = b if name == "addmm" else b[lo:hi]
            result[lo:hi] = op(
                full_bias[lo:hi].float(), a[lo:hi].float(), b_block.float(), **scalars
            )
        return result
    return None


def _empty_result(out: torch.Tensor | None, shape: Any, like: torch.Tensor) -> torch.Tensor:
    """The caller's `out=` buffer, or a new tensor of `like`'s dtype (bf16) to fill."""
    return out if out is not None else like.new_empty(tuple(shape))


def _mm_in_blocks(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """a [M, K] @ b [K, N] in fp32 blocks, rounded into a's dtype (or `out`)."""
    (M, K), N = a.shape, b.shape[1]
    result = _empty_result(out, (M, N), a)
    whole = {"M": K * N, "N": M * K, "K": M * N}  # what each blocking keeps whole (elements)
    along = min(whole, key=whole.__getitem__)
    if along == "M":
        b32 = b.float()
        for lo, hi in _blocks(M, 4 * (K + N)):
            result[lo:hi] = a[lo:hi].float() @ b32
    elif along == "N":
        a32 = a.float()
        for lo, hi in _blocks(N, 4 * (K + M)):
            result[:, lo:hi] = a32 @ b[:, lo:hi].float()
    else:
        total = torch.zeros(M, N, dtype=torch.float32, device=a.device)
        for lo, hi in _blocks(K, 4 * (M + N)):
            total.addmm_(a[:, lo:hi].float(), b[lo:hi].float())
        result.copy_(total)
    return result


def _onednn_would_run(name: str, args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether `name(*args, **kwargs)` is a bf16 op that torch runs on oneDNN where its bf16
    check passes: exact GELU (or its backward) of a contiguous bf16 input of over one element
    (ATen's `use_mkldnn` in Activation.cpp; a contiguous gradient too, to be sure)."""
    if name not in _ONEDNN_BF16_OPS:
        return False
    x = args[0] if name == "gelu" else args[1]  # gelu(self), gelu_backward(grad, self)
    return (
        kwargs.get("approximate", "none") == "none"  # keyword-only in both schemas
        and x.numel() > 1
        and all(
            a.dtype == torch.bfloat16 and a.is_contiguous()
            for a in args
            if isinstance(a, torch.Tensor)
        )
    )


def _timed_in_fp32(func: Any, args: Any, kwargs: dict[str, Any]) -> float:
    """Seconds of `func` on fp32 copies of its bf16 tensors (copies made before the clock),
    its second call: the first, untimed, faults its output's fresh pages in, which the second
    reuses (under `malloc=reuse`), as a warm step's ops reuse the heap."""
    cast = functools.partial(_cast_floating, torch.bfloat16, torch.float32)
    args32, kwargs32 = tree_map(cast, args), tree_map(cast, kwargs)
    func(*args32, **kwargs32)
    start = time.perf_counter()
    func(*args32, **kwargs32)
    return time.perf_counter() - start


def _has_bf16(tree: Any) -> bool:
    return any(isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 for x in tree_leaves(tree))


def _cast_floating(source: torch.dtype, target: torch.dtype, x: Any) -> Any:
    """`x` cast to `target` when it is a tensor of dtype `source`, else `x`."""
    return x.to(target) if isinstance(x, torch.Tensor) and x.dtype == source else x


# The bf16 1024² matmul rate of issue #19's host A (2-core AMD EPYC with avx512_bf16; fp32 180),
# where the bf16 targets were set: the rate a census projects a bf16 step's share of peak at.
REFERENCE_BF16_GFLOPS = 415.0


def add_reference_bf16_argument(parser: argparse.ArgumentParser) -> None:
    """`--reference-bf16-gflops`: the bf16 matmul rate a census projects at."""
    parser.add_argument(
        "--reference-bf16-gflops",
        type=float,
        default=REFERENCE_BF16_GFLOPS,
        help="bf16 matmul rate a census (`-census` rows) projects its share of peak at "
        "(default: issue #19's host A, a 2-core EPYC with avx512_bf16)",
    )


def census_proxies(precision: str) -> bool:
    """Whether a census of work in `precision` proxies its bf16 products in fp32: bf16 on a
    CPU without bf16 units, by the suite's own test (as training's bf16 warning decides;
    where it cannot tell, proxied too: emulated bf16 products run ~100x slower than fp32)."""
    from partial_relevance.models.precision import cpu_has_bf16_units

    return precision == "bf16" and cpu_has_bf16_units() is not True


def census_products(precision: str, proxy: bool) -> tuple[torch.dtype, str]:
    """(the dtype a census's products ran in, the row's label for it)."""
    ran_as = torch.float32 if proxy or precision == "fp32" else torch.bfloat16
    label = str(ran_as).removeprefix("torch.")
    return ran_as, label + (" (bf16 proxied: no bf16 units known)" if proxy else "")


def projection_column(key: str, reference_gflops: float) -> str:
    """The row column of a `projected_share_of_peak` entry at `reference_gflops`."""
    return f"{key} @ bf16 {reference_gflops:g} GFLOP/s"


def projected_from_stages(
    stages: dict[str, dict[str, float]],
    factors: dict[str, float],
    fixed_s: float,
    ran_gflops: float,
    reference_gflops: float,
) -> dict[str, float]:
    """`projected_share_of_peak` of a job measured in stages and scaled to another size: each
    stage's census (`stages[name]`: "wall" s, "matmul" s, "gflop", as measured here) times its
    work factor (`factors[name]`), everything but the products (wall − matmul: other ops,
    reads, Python) kept as measured, plus `fixed_s` (already scaled).

    -> {"GFLOP", "matmul efficiency", "projected step s", "projected % of peak"}."""
    flops = sum(factors[n] * stages[n]["gflop"] for n in factors)
    matmul_s = sum(factors[n] * stages[n]["matmul"] for n in factors)
    rest_s = fixed_s + sum(factors[n] * (stages[n]["wall"] - stages[n]["matmul"]) for n in factors)
    projected = projected_share_of_peak(flops * 1e9, matmul_s, rest_s, ran_gflops, reference_gflops)
    return {"GFLOP": round(flops, 1), **projected}


# A census row's projection corrected to an eager run: the census's seconds less its excess
# over the same work run eagerly, both measured in fp32 (signed: the op-timed training census
# leaves out the Python between ops, so there the correction adds time).
EAGER_MINUTES = "projected TVR val min, census corrected to eager"  # bench_vcmr_inference
EAGER_SHARE = "projected % of peak, census corrected to eager"  # bench_prvr_eval, _train


def census_minus_eager(
    eager: Callable[[], dict[str, float]],
    census: Callable[[], dict[str, float]],
    rounds: int = 2,
) -> dict[str, float]:
    """Each part's seconds under a census less its seconds in an eager run of the same work,
    measured: `eager()` and `census()` (each -> seconds by part) run in turn, `rounds` times
    each, the faster of each kept. What timing every op alone adds or leaves out, not work a
    bf16 host would do; signed."""
    eager_runs: list[dict[str, float]] = []
    census_runs: list[dict[str, float]] = []
    for _ in range(rounds):
        eager_runs.append(eager())
        census_runs.append(census())
    return {
        name: min(run[name] for run in census_runs) - min(run[name] for run in eager_runs)
        for name in eager_runs[0]
    }


def corrected_to_eager(
    stages: dict[str, dict[str, float]], excess: dict[str, float]
) -> dict[str, dict[str, float]]:
    """`stages` (as `projected_from_stages` takes them) with each stage's wall seconds less the
    census's excess over an eager run measured for it (`excess[name]` s, `census_minus_eager`:
    the same work's wall under an OpCensus minus its eager wall, in fp32; negative adds time);
    a wall never drops below its products' seconds."""
    return {
        name: {**stage, "wall": max(stage["matmul"], stage["wall"] - excess.get(name, 0.0))}
        for name, stage in stages.items()
    }


def projected_share_of_peak(
    flops: float, matmul_s: float, other_s: float, ran_gflops: float, reference_gflops: float
) -> dict[str, float]:
    """A step's % of a reference matmul rate, projected from a census on this host: its
    non-matmul seconds as measured here, plus its FLOPs at the reference rate × the matmul
    efficiency measured here (FLOPs / matmul seconds / `ran_gflops`, the rate of what the
    products ran as, at most 1).

    -> {"matmul efficiency", "projected step s", "projected % of peak"}."""
    efficiency = min(1.0, flops / 1e9 / matmul_s / ran_gflops)
    step = other_s + flops / 1e9 / (reference_gflops * efficiency)
    return {
        "matmul efficiency": round(efficiency, 3),
        "projected step s": round(step, 3),
        "projected % of peak": percent_of_peak(flops / 1e9 / step, reference_gflops),
    }
