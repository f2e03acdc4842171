"""`launcher=local|slurm` report each submitted job's id and log files (the launcher plugin
in src/hydra_plugins/partial_relevance_launcher): composed, discovered by Hydra, and in a real
two-job local sweep (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from support import CONF_DIR, TINY_SYNTHETIC

launcher = pytest.importorskip("hydra_plugins.partial_relevance_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def test_report_names_each_job_id_and_its_logs(caplog):
    paths = SimpleNamespace(stdout=Path("/s/7_0_log.out"), stderr=Path("/s/7_0_log.err"))
    jobs = [SimpleNamespace(job_id="7_0", paths=paths)]
    with caplog.at_level("INFO"):
        lines = launcher.report_submitted(jobs, first_index=3)
    assert lines == ["#3 submitted as job 7_0: stdout /s/7_0_log.out, stderr /s/7_0_log.err"]
    assert lines[0] in caplog.text


@pytest.mark.parametrize("choice", ["local", "slurm"])
def test_launcher_configs_use_the_reporting_plugin(choice, monkeypatch):
    from hydra.core.plugins import Plugins

    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"launcher={choice}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target == f"hydra_plugins.partial_relevance_launcher.{choice.title()}Launcher"
    assert target in Plugins.instance().class_name_to_class  # Hydra can instantiate it


@pytest.mark.slow
def test_local_sweep_prints_job_ids_and_logs(tmp_path, synthetic_cache):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "partial_relevance.train", "-m", "launcher=local"]
    command += ["seed=0,1", "experiment=prvr_synthetic", "logger=none"]
    command += [f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}"]
    command += ["hydra.launcher.timeout_min=10", "trainer.max_epochs=1", "data.batch_size=8"]
    command += ["trainer.enable_progress_bar=false", "model.net.hidden_dim=16"]
    command += [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
    command += [f"paths.cache_dir={synthetic_cache}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for index in (0, 1):
        line = next(x for x in output.splitlines() if f"#{index} submitted as job " in x)
        stdout = Path(line.split("stdout ")[1].split(",")[0])
        assert stdout.parent == sweep / ".submitit" / stdout.parent.name and stdout.exists()
