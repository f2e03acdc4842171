"""How researchers launch runs: tables, DDP evaluation, preemption, wandb sweeps, Optuna,
submitit. Every test runs real subprocesses on a tiny corpus (`pytest -m slow`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from partial_relevance.train import train
from support import CONF_DIR, TINY_SYNTHETIC, compose_train_config

pytestmark = pytest.mark.slow

REPO = CONF_DIR.parent
TESTS = Path(__file__).resolve().parent


def tiny(cache: Path, **sizes: int) -> list[str]:
    """Overrides that shrink the PRVR synthetic experiment to seconds on a CPU."""
    synthetic = {**TINY_SYNTHETIC, **sizes}
    return [
        *(f"data.synthetic.{k}={v}" for k, v in synthetic.items()),
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=8",
        "model.net.hidden_dim=16",
        f"paths.cache_dir={cache}",
    ]


def run(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), environ.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


class SigtermOnce(pl.Callback):
    """Test helper: sends this process SIGTERM after the first batch of `epoch`, once (a
    marker file remembers it), like a preemption arriving in the middle of training."""

    def __init__(self, epoch: int, marker: str) -> None:
        self.epoch = epoch
        self.marker = Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.write_text(f"epoch {trainer.current_epoch} batch {batch_idx}")
            os.kill(os.getpid(), signal.SIGTERM)


def test_table_cli_runs_all_rows_then_skips_them(tmp_path, synthetic_cache):
    """(a) `make table T=prvr_ablation DATA=synthetic SEEDS=1` on a tiny corpus."""
    root = tmp_path / "tables"
    args = ["-m", "partial_relevance.tables", "--table", "prvr_ablation", "--data", "synthetic"]
    args += ["--seeds", "1", "--root", str(root), "--override", "logger=csv"]
    for override in tiny(synthetic_cache):
        args += ["--override", override]
    output = ok(run(args, tmp_path, timeout=600))
    assert "8 rows x 1 seeds, 0 done, 8 to run" in output
    assert output.count("partial_relevance.train -m") == 1  # one multirun for all rows
    markdown = (root / "prvr_ablation.md").read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert len(lines) == 8
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-1] == "1" and cells[1] != "-", line  # ours, one seed
    assert "| ICE+IRM+TCP |" in markdown and "81.30" in markdown
    assert "checkpoint selection: best `val/SumR`" in markdown
    runs = sorted((root / "prvr_ablation" / "synthetic" / "runs").glob("*/seed0/metrics.json"))
    assert len(runs) == 8
    config = yaml.safe_load((runs[0].parent / ".hydra" / "config.yaml").read_text())
    assert config["model"]["net"]["hidden_dim"] == 16 and config["table_row"]["key"]
    csv_lines = (root / "prvr_ablation.csv").read_text().splitlines()
    assert len(csv_lines) == 9
    # Same command again: everything is computed, nothing runs.
    output = ok(run(args, tmp_path, timeout=120))
    assert "8 done, 0 to run" in output and "partial_relevance.train -m" not in output


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

conf, out, ckpt, trainer_choice, overrides = sys.argv[1:6]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose("train", overrides=[f"trainer={trainer_choice}", *json.loads(overrides)])
with open_dict(cfg):
    cfg.paths.output_dir = out
    cfg.paths.log_dir = out
pl.seed_everything(0)
datamodule = instantiate(cfg.data)
model = instantiate(cfg.model)
trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
result = trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
if trainer.is_global_zero:
    Path(out, trainer_choice + ".json").write_text(json.dumps(result[0]))
    Path(out, trainer_choice + ".world").write_text(str(trainer.world_size))
"""


def test_ddp_validation_equals_one_process(tmp_path):
    """(b) One checkpoint validated by 2 DDP processes (gloo) and by one: same metrics, with
    13 val videos / 39 queries, so the DistributedSampler pads and `_gathered` de-duplicates."""
    cache = tmp_path / "cache"
    overrides = ["experiment=prvr_synthetic", "logger=none", *tiny(cache, num_val_videos=13)]
    out = tmp_path / "train"
    metrics_value = train(compose_train_config(overrides, out, cache)).monitored
    metrics = json.loads((out / "metrics.json").read_text())
    ckpt = metrics["best_checkpoint"]
    script = tmp_path / "validate.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    eval_overrides = json.dumps([o for o in overrides if o != "logger=none"])
    results = {}
    for choice in ("cpu", "ddp_cpu"):
        ok(run([str(script), str(CONF_DIR), str(tmp_path), ckpt, choice, eval_overrides], REPO))
        results[choice] = json.loads((tmp_path / f"{choice}.json").read_text())
    assert (tmp_path / "ddp_cpu.world").read_text() == "2"
    assert set(results["cpu"]) >= {"val/R@1", "val/R@5", "val/R@10", "val/R@100", "val/SumR"}
    for key, value in results["cpu"].items():
        assert results["ddp_cpu"][key] == pytest.approx(value, abs=1e-6), key
    assert results["cpu"]["val/SumR"] == pytest.approx(metrics_value, abs=1e-6)
    # 39 queries: every R@k is a multiple of 100/39 (a padded duplicate would break that).
    assert round(results["ddp_cpu"]["val/R@1"] * 39 / 100, 6).is_integer()


def test_sigterm_saves_last_ckpt_and_same_command_resumes(tmp_path, synthetic_cache):
    """(c) SIGTERM in epoch 2 -> last.ckpt, exit 143; the same command (`run_name=`) resumes
    from it and finishes; once finished, the same command refuses."""
    marker = tmp_path / "sigterm-sent"
    logs = tmp_path / "logs"
    command = [
        "-m",
        "partial_relevance.train",
        "experiment=prvr_synthetic",
        "logger=csv",
        "run_name=preempted",
        f"paths.log_dir={logs}",
        *tiny(synthetic_cache),
        "trainer.max_epochs=3",
        "data.batch_size=4",
        "+callbacks.sigterm_once._target_=test_launch_slow.SigtermOnce",
        "+callbacks.sigterm_once.epoch=1",
        f"+callbacks.sigterm_once.marker={marker}",
    ]
    run_dir = logs / "prvr_synthetic" / "runs" / "preempted"
    first = run(command, tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, (first.stdout + first.stderr)[-4000:]
    assert marker.read_text() == "epoch 1 batch 0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists() and not (run_dir / "metrics.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1  # saved in the middle of the second epoch

    second = run(command, tmp_path)
    output = ok(second)
    assert f"Restoring states from the checkpoint path at {last}" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3.0
    third = run(command, tmp_path)
    assert third.returncode != 0
    assert "metrics.json already exists" in third.stdout + third.stderr


def test_wandb_multirun_gives_each_job_its_own_run(tmp_path, synthetic_cache):
    """(d) A 2-job multirun with logger=wandb (offline): two runs, one group for the sweep."""
    logs = tmp_path / "logs"
    sweep = logs / "prvr_synthetic" / "multiruns" / "s1"
    command = ["-m", "partial_relevance.train", "-m", "experiment=prvr_synthetic", "seed=0,1"]
    command += ["logger=wandb", f"paths.log_dir={logs}", f"hydra.sweep.dir={sweep}"]
    ok(run([*command, *tiny(synthetic_cache)], tmp_path))
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 2 and runs[0].parent.parent != runs[1].parent.parent
    for run_dir in runs:
        (record,) = run_dir.glob("run-*.wandb")
        data = record.read_bytes()
        assert b"prvr_synthetic-multiruns-s1" in data  # the group: the sweep
    assert len({r.name.rsplit("-", 1)[-1] for r in runs}) == 2  # two run ids


def test_optuna_sweep_three_trials(tmp_path, synthetic_cache):
    """(e) hparams_search=prvr_optuna: 3 trials, each train(cfg), best value written."""
    sweep = tmp_path / "optuna"
    command = ["-m", "partial_relevance.train", "hparams_search=prvr_optuna"]
    command += ["experiment=prvr_synthetic", "logger=none", "hydra.sweeper.n_trials=3"]
    command += [f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}"]
    ok(run([*command, *tiny(synthetic_cache)], tmp_path))
    finished = sorted(sweep.glob("*/metrics.json"))
    assert len(finished) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    sums = [json.loads(p.read_text())["val/SumR"] for p in finished]
    assert results["best_value"] == pytest.approx(max(sums))
    assert set(results["best_params"]) >= {"model.optimizer.lr", "model.ice.threshold"}


def test_submitit_local_launcher_two_jobs(tmp_path, synthetic_cache):
    """(f) launcher=local: a 2-job sweep through submitit, each job its own process."""
    sweep = tmp_path / "local"
    command = ["-m", "partial_relevance.train", "-m", "launcher=local", "seed=0,1"]
    command += ["experiment=prvr_synthetic", "logger=none", f"hydra.sweep.dir={sweep}"]
    command += [f"paths.log_dir={tmp_path}", "hydra.launcher.timeout_min=10"]
    ok(run([*command, *tiny(synthetic_cache)], tmp_path, timeout=400))
    assert len(sorted(sweep.glob("*/metrics.json"))) == 2
    assert (sweep / ".submitit").is_dir()
