"""The bf16 host check: `cpu_has_bf16_units` reads the CPU flags, and training warns when
bf16 would run emulated on a CPU without bf16 units."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from partial_relevance import train as train_module
from partial_relevance.models.precision import cpu_has_bf16_units


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx avx2 fma", False),  # the AVX2 EPYC: bf16 emulated (~1 GFLOP/s)
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 avx512f amx_bf16 amx_tile", True),
    ],
)
def test_cpu_has_bf16_units_reads_the_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\n")
    assert cpu_has_bf16_units(str(cpuinfo)) is expected
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_has_bf16_units(str(arm)) is True
    assert cpu_has_bf16_units(str(tmp_path / "missing")) is None


class CPUAccelerator:  # named as Lightning's, what the check looks at
    pass


@pytest.mark.parametrize(
    ("precision", "eval_precision", "units", "warned"),
    [
        ("bf16-mixed", "bf16", False, True),
        ("32-true", "bf16", False, True),
        ("bf16-mixed", "bf16", True, False),
        ("32-true", "fp32", False, False),
        ("bf16-mixed", "bf16", None, False),  # cannot tell: no warning
    ],
)
def test_training_warns_of_emulated_bf16(
    monkeypatch, caplog, precision, eval_precision, units, warned
):
    monkeypatch.setattr(train_module, "cpu_has_bf16_units", lambda: units)
    cfg = OmegaConf.create({"eval_precision": eval_precision})
    trainer = SimpleNamespace(precision=precision, accelerator=CPUAccelerator())
    with caplog.at_level(logging.WARNING, logger=train_module.log.name):
        train_module.warn_emulated_bf16(cfg, trainer)  # type: ignore[arg-type]
    assert ("without bf16 units" in caplog.text) is warned
