"""Kills and command lines, each a real `python -m partial_relevance.train|evaluate` process
(issue #18, 2.-4., 6., 7.): every kill resumes with the same command, a SIGTERM in the final
evaluation exits 143 and the rerun only evaluates, a resume from an epoch boundary reproduces
the uninterrupted run, a refused rerun changes no byte, user errors are one line.

Tiny configs, one thread; `KillAt` (killer.py) sends the signal at a chosen hook.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import TINY_SYNTHETIC_OVERRIDES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent


def command(module: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", f"partial_relevance.{module}", *overrides]


def run(args: list[str], full_error: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(FAULTS), str(REPO / "tests")])
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def train_args(log_dir: Path, cache: Path, name: str, *extra: str) -> list[str]:
    return command(
        "train",
        "experiment=prvr_synthetic",
        "logger=none",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "data.batch_size=8",
        "model.net.hidden_dim=16",
        *TINY_SYNTHETIC_OVERRIDES,
        f"paths.log_dir={log_dir}",
        f"paths.cache_dir={cache}",
        f"run_name={name}",
        *extra,
    )


def kill_at(hook: str, epoch: int = 0, batch: int = 0, sig: str = "SIGTERM") -> list[str]:
    return [
        "+callbacks.kill._target_=killer.KillAt",
        f"+callbacks.kill.hook={hook}",
        f"+callbacks.kill.epoch={epoch}",
        f"+callbacks.kill.batch={batch}",
        f"+callbacks.kill.sig={sig}",
    ]


def run_dir(log_dir: Path, name: str) -> Path:
    return log_dir / "prvr_synthetic" / "runs" / name


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def comparable(metrics_file: Path) -> dict:
    metrics = json.loads(metrics_file.read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_sigterm_in_validation_resumes_and_reproduces_the_run(
    tmp_path, tiny_corpus, synthetic_cache
):
    """The in-fit validation killed at epoch 2 (the `val/SumR not available` failure): the
    rerun resumes from the epoch-1 boundary and ends with the uninterrupted run's weights and
    metrics exactly."""
    logs = tmp_path / "outputs"
    full = run(train_args(logs, synthetic_cache, "full", "trainer.max_epochs=4"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(
        train_args(logs, synthetic_cache, "k", "trainer.max_epochs=4", *kill_at("val_batch", 2))
    )
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
    assert not (run_dir(logs, "k") / "metrics.json").exists()
    resumed = run(train_args(logs, synthetic_cache, "k", "trainer.max_epochs=4"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = run_dir(logs, "full"), run_dir(logs, "k")
    assert comparable(a / "metrics.json") == comparable(b / "metrics.json")
    wa, wb = weights(a / "checkpoints" / "last.ckpt"), weights(b / "checkpoints" / "last.ckpt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_and_sigkill_in_training_resume(tmp_path, tiny_corpus, synthetic_cache):
    logs = tmp_path / "outputs"
    term = run(train_args(logs, synthetic_cache, "t", *kill_at("train_batch", 1, 1)))
    assert term.returncode == 128 + signal.SIGTERM, term.stderr[-3000:]
    assert (run_dir(logs, "t") / "checkpoints" / "last.ckpt").exists()
    assert run(train_args(logs, synthetic_cache, "t")).returncode == 0
    assert (run_dir(logs, "t") / "metrics.json").exists()

    kill = run(train_args(logs, synthetic_cache, "s", *kill_at("train_batch", 2, 1, "SIGKILL")))
    assert kill.returncode == -signal.SIGKILL
    resumed = run(train_args(logs, synthetic_cache, "s"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable(run_dir(logs, "s") / "metrics.json")["epochs_trained"] == 3.0


def test_sigterm_in_final_test_exits_143_and_rerun_only_evaluates(
    tmp_path, tiny_corpus, synthetic_cache
):
    logs = tmp_path / "outputs"
    killed = run(train_args(logs, synthetic_cache, "f", *kill_at("test_batch")))
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
    out = run_dir(logs, "f")
    assert not (out / "metrics.json").exists()
    checkpoints = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("*.ckpt")}
    rerun = run(train_args(logs, synthetic_cache, "f", *kill_at("train_batch")))  # not reached
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "fit already complete" in (out / "train.log").read_text()
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").glob("*.ckpt")} == checkpoints
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test/SumR" in metrics and metrics["artifacts"] == {}
    assert "val chance" in (out / "train.log").read_text()  # the table is in Hydra's log

    # A finished run is read-only: the refused rerun changes no byte, in one line.
    before = snapshot(out)
    refused = run(train_args(logs, synthetic_cache, "f", "model.net.hidden_dim=32"))
    assert refused.returncode == 1
    assert len(error_lines(refused.stderr)) == 1 and "finished run" in refused.stderr
    assert snapshot(out) == before

    # evaluate scores it with its own config and prints where it wrote, with chance rows.
    evaluated = run(
        command(
            "evaluate",
            f"run_dir={out}",
            f"paths.log_dir={logs}",
            f"paths.cache_dir={synthetic_cache}",
            "trainer.enable_progress_bar=false",
        )
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    logged = evaluated.stdout + evaluated.stderr
    assert "val chance" in logged and "output directory" in logged
    assert snapshot(out) == before


def test_a_second_live_run_is_refused(tmp_path, tiny_corpus, synthetic_cache):
    logs = tmp_path / "outputs"
    out = run_dir(logs, "busy")
    (out / ".hydra").mkdir(parents=True)  # what the live run has written so far
    (out / ".hydra" / "config.yaml").write_text("model: {net: {hidden_dim: 16}}\n")
    (out / "train.log").write_text("[INFO] - epoch 0\n")
    fd = os.open(out / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    before = snapshot(out)
    try:
        refused = run(train_args(logs, synthetic_cache, "busy", "model.net.hidden_dim=32"))
    finally:
        os.close(fd)
    assert refused.returncode == 1
    assert len(error_lines(refused.stderr)) == 1 and "in use by another live run" in refused.stderr
    assert snapshot(out) == before  # the live run's config and log untouched


def test_user_errors_are_one_line_and_full_error_shows_the_traceback(tmp_path, synthetic_cache):
    logs = tmp_path / "outputs"
    bad_type = run(train_args(logs, synthetic_cache, "abc", "trainer.max_epochs=abc"))
    assert bad_type.returncode == 1
    assert error_lines(bad_type.stderr) == [
        "error: config trainer.max_epochs='abc': expected int | None, got str"
    ]
    no_data = [
        "data.synthetic=null",
        f"data.root={tmp_path / 'absent'}",
        "data.video_dim=32",
        "data.query_dim=16",
    ]
    missing = run(train_args(logs, synthetic_cache, "nodata", *no_data))
    assert missing.returncode == 1 and "absent" in error_lines(missing.stderr)[0]
    full = run(train_args(logs, synthetic_cache, "nodata2", *no_data), full_error=True)
    dangling = run(train_args(logs, synthetic_cache, "dangling", "data.synthetic=null"))
    assert dangling.returncode == 1
    assert "config data.video_dim" in error_lines(dangling.stderr)[0]
    assert full.returncode == 1 and "Traceback" in full.stderr and "DataError" in full.stderr

    ckpt = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(256, 256)}}, ckpt)
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    evaluated = run(command("evaluate", f"ckpt_path={ckpt}", f"paths.log_dir={logs}"))
    assert evaluated.returncode == 1
    (line,) = error_lines(evaluated.stderr)
    assert str(ckpt) in line and "not a readable checkpoint" in line
