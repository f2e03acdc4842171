"""Reduced-precision copies of a net for evaluation and inference (`precision=bf16`).

Training keeps fp32 weights (Lightning's bf16-mixed autocasts them per op); encoding a corpus
runs a copy cast once to bf16, so every op runs in bf16 and no weight is recast per call.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_precision(precision: str, key: str) -> None:
    """Raise a ValueError naming config `key` when `precision` is not fp32 or bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key} must be one of {sorted(PRECISIONS)}, got {precision!r}")


# CPU flags of bf16 matrix / vector units (x86 AMX or AVX-512 BF16, Arm BF16).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (x86 `flags`, Arm `Features` lines of `/proc/cpuinfo`), or None
    where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU advertises bf16 units (True/False), or None where it cannot tell (no
    `/proc/cpuinfo`). Without them bf16 matmuls are emulated: ~1 GFLOP/s against ~150 in fp32
    on a 2-core AVX2 EPYC (benchmarks/RESULTS.md), so `precision=bf16` is a slowdown there."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else any(flag in flags for flag in CPU_BF16_FLAGS)


def net_dtype(net: nn.Module) -> torch.dtype:
    """The floating dtype of a net's parameters (float32 for a parameter-free baseline)."""
    for parameter in net.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def inference_net(net: nn.Module, precision: str = "fp32") -> nn.Module:
    """`net` itself for fp32, else an eval-mode copy cast to `precision` (the trained fp32
    weights stay untouched)."""
    dtype = PRECISIONS[precision]
    if dtype == torch.float32 or not any(True for _ in net.parameters()):
        return net
    return copy.deepcopy(net).to(dtype).eval()
