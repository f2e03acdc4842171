"""Run directories (issue #18, 3.): a finished run is read-only, a live run is locked; user
errors are one line; a half-written checkpoint never poisons a resume. Fast, in-process."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from partial_relevance import run_dir
from partial_relevance.cli import ConfigError, check_config_types, one_line_errors
from partial_relevance.data.errors import DataError
from partial_relevance.train import resume_checkpoint, train
from support import (
    CONF_DIR,
    TINY_RUN_OVERRIDES,
    TINY_SYNTHETIC_OVERRIDES,
    compose_train_config,
)


def tiny(*extra: str) -> list[str]:
    return [
        "experiment=prvr_synthetic",
        "logger=none",
        *TINY_RUN_OVERRIDES,
        *TINY_SYNTHETIC_OVERRIDES,
        *extra,
    ]


def test_finished_dir_gets_no_hydra_subdir_and_no_lock(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    assert run_dir.hydra_output_subdir(str(tmp_path)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with pytest.raises(run_dir.RunRefusedError, match="finished run"):
        run_dir.acquire(tmp_path)


def test_fresh_dir_gets_hydra_subdir_and_holds_the_lock(tmp_path):
    try:
        assert run_dir.hydra_output_subdir(str(tmp_path)) == ".hydra"
        assert run_dir.hydra_output_subdir(str(tmp_path)) == ".hydra"  # resolved again: same
        assert (tmp_path / "run.lock").read_text().strip() == str(os.getpid())
    finally:
        run_dir.release(tmp_path)


def test_hydra_config_asks_the_guard(tmp_path):
    hydra_cfg = OmegaConf.load(CONF_DIR / "hydra" / "default.yaml")
    raw = OmegaConf.to_container(hydra_cfg, resolve=False)
    assert raw["output_subdir"] == "${pr_run_subdir:${hydra.runtime.output_dir}}"


def test_live_run_is_refused_in_one_line(tmp_path, synthetic_cache, capsys):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another "process" holds the directory
    os.write(fd, b"4242\n")
    try:
        assert run_dir.hydra_output_subdir(str(out)) is None
        with pytest.raises(SystemExit) as stop, one_line_errors():
            train(compose_train_config(tiny(), out, synthetic_cache))
    finally:
        os.close(fd)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by another live run (pid 4242" in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


def test_wrong_config_type_is_a_config_error(tmp_path, synthetic_cache):
    cfg = compose_train_config(tiny("trainer.max_epochs=abc"), tmp_path / "run", synthetic_cache)
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs='abc': expected int \| None"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_every_experiment_passes_the_type_check(tmp_path):
    for experiment in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        cfg = compose_train_config([f"experiment={experiment}"], tmp_path / "r", tmp_path)
        for group in ("trainer", "data", "model"):
            check_config_types(cfg[group], group)


def test_one_line_errors_and_full_error(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop, one_line_errors():
        raise DataError("/data/x.h5", "key 'v1': row 3 holds a non-finite value (nan)")
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        "error: /data/x.h5: key 'v1': row 3 holds a non-finite value (nan)\n"
    )
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataError), one_line_errors():
        raise DataError("/data/x.h5", "bad")
    with pytest.raises(KeyError), one_line_errors():  # a bug keeps its traceback
        raise KeyError("bug")


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    torch.save({"epoch": 0}, ckpt / "epoch_000.ckpt")
    torch.save({"epoch": 3, "pad": torch.zeros(1000)}, ckpt / "last.ckpt")
    os.truncate(ckpt / "last.ckpt", (ckpt / "last.ckpt").stat().st_size // 2)  # killed mid-write
    (ckpt / ".last.ckpt.tmp-999").write_bytes(b"partial")  # what an atomic write leaves
    assert resume_checkpoint(ckpt) == ckpt / "epoch_000.ckpt"
    assert not (ckpt / ".last.ckpt.tmp-999").exists()
    torch.save({"epoch": 4}, ckpt / "last.ckpt")
    assert resume_checkpoint(ckpt) == ckpt / "last.ckpt"
    assert resume_checkpoint(tmp_path / "none") is None


def test_run_result_and_artifacts(tmp_path, synthetic_cache):
    out = tmp_path / "run"
    result = train(compose_train_config(tiny(), out, synthetic_cache))
    assert result.output_dir == out and result.metrics_file == out / "metrics.json"
    assert result.monitored == result.metrics["val/SumR"]
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert result.artifacts == {}
    saved = json.loads(result.metrics_file.read_text())
    assert saved["artifacts"] == {} and saved["val/SumR"] == result.monitored
    assert (out / "checkpoints" / "fit_complete.json").exists()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(run_dir.RunRefusedError, match="read-only"):
        train(compose_train_config(tiny("model.net.hidden_dim=8"), out, synthetic_cache))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("module", ["tables", "prem_pipeline"])
def test_tables_and_pipeline_print_data_errors_in_one_line(module, monkeypatch, capsys):
    import importlib

    mod = importlib.import_module(f"partial_relevance.{module}")

    def bad(*args, **kwargs):
        raise DataError("/data/rankings.h5", "split 'val', query row 3 ('17'): non-finite score")

    target = "load_table_spec" if module == "tables" else "run_pipeline"
    monkeypatch.setattr(mod, target, bad)
    argv = ["--table", "prvr_ablation"] if module == "tables" else ["--threads", "1"]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as stop:
            mod.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: /data/rankings.h5: split 'val'")
