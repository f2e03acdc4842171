"""A plain, non-editable `pip install .` can train (issue #22): the wheel carries the Hydra
configs and the paper tables as package data, the console scripts exist, and `pr-train` runs
from outside the repository. The wheel is built from a copy of the tracked files (no build
isolation: no download) and installed into a fresh venv that reuses this environment's
dependencies through a `.pth` line, so the test needs no network."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from support import CONF_DIR, TINY_SYNTHETIC

pytestmark = pytest.mark.slow

REPO = CONF_DIR.parent
SCRIPTS = ("pr-train", "pr-evaluate", "pr-tables", "pr-prem")


def _copy_tracked_files(target: Path) -> None:
    """The repository's tracked files (symlinks kept), as a fresh clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source, dest = REPO / name.decode(), target / name.decode()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, dest)


def _run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no src/ on the path
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.timeout(900)
def test_wheel_installs_and_trains_outside_the_repo(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    _copy_tracked_files(clone)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(clone)],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("partial_relevance-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in CONF_DIR.rglob("*.yaml"):
        assert f"partial_relevance/conf/{config.relative_to(CONF_DIR)}" in names, config
    assert "partial_relevance/conf/__init__.py" in names
    assert "hydra_plugins/partial_relevance_launcher/__init__.py" in names
    for table in (REPO / "experiments").glob("*.yaml"):
        assert f"partial_relevance/experiments/{table.name}" in names, table

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    # Reuse this environment's installed dependencies (after the venv's own site-packages,
    # so the wheel's partial_relevance wins over any editable install here).
    reused = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (purelib / "reuse_deps.pth").write_text("\n".join(dict.fromkeys(reused)) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "-q", str(wheel)],
        cwd=tmp_path,
    )
    for script in SCRIPTS:
        assert (venv / "bin" / script).exists(), script

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(
        [str(python), "-c", "import partial_relevance; print(partial_relevance.__file__)"],
        cwd=outside,
    ).stdout
    assert where.startswith(str(purelib)), where
    overrides = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()] + [
        "experiment=prvr_synthetic",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=8",
        "model.net.hidden_dim=16",
        "run_name=wheel",
    ]
    _run([str(venv / "bin" / "pr-train"), *overrides], cwd=outside, timeout=600)
    assert (outside / "outputs" / "prvr_synthetic" / "runs" / "wheel" / "metrics.json").exists()
    tables = _run(
        [str(venv / "bin" / "pr-tables"), "--table", "prvr_ablation", "--dry-run"], cwd=outside
    )
    assert "table prvr_ablation (synthetic)" in tables.stdout
