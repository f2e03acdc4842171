"""Paper tables from saved metrics (partial_relevance.tables): specs, plan, skip, rendering."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from partial_relevance import tables
from partial_relevance.tables import (
    TableSpecError,
    build_table,
    collect_results,
    load_table_spec,
    plan_jobs,
    render_csv,
    render_markdown,
    row_config,
    summarize,
    sweep_commands,
    write_row_configs,
)
from support import CONF_DIR, compose_train_config

EXPECTED_TABLES = {
    "prvr_main",
    "prvr_ablation",
    "prvr_irm",
    "prvr_tcp",
    "prvr_plugin",
    "prvr_fig5",
    "prem_vr",
    "prem_retriever_ablation",
    "prem_pooling",
    "prem_vcmr",
    "prem_didemo",
    "prem_localizer_ablation",
}

SPEC = """
title: "Toy table"
dataset: {synthetic: toy corpus}
columns:
  - {name: R@1, key: test/R@1}
  - {name: SumR, key: [test/SumR, val/SumR]}
common:
  synthetic: [experiment=prvr_synthetic]
  real: [experiment=prvr_charades]
rows:
  - name: base
    overrides: [model.ice.enabled=false]
    paper: {R@1: 1.5, SumR: 69.1}
  - name: ICE
    overrides: [model.ice.enabled=true]
    data: {synthetic: [model.ice.threshold=null], real: []}
    paper: {SumR: 74.3}
  - name: ICE again
    overrides: [model.ice.enabled=true]
    data: {synthetic: [model.ice.threshold=null], real: []}
    keys: {R@1: val/R@1}
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(SPEC)
    return load_table_spec(path)


def fabricate(job, r1: float, sumr: float, select_on: str = "val") -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"test/R@1": r1, "test/SumR": sumr, "val/R@1": r1 + 100, "best_checkpoint": "x"}
    (job.run_dir / "metrics.json").write_text(json.dumps(metrics))
    (job.run_dir / ".hydra").mkdir(exist_ok=True)
    cfg = f"monitor: val/SumR\ndata:\n  select_on: {select_on}\n  holdout_fraction: 0.05\n"
    (job.run_dir / ".hydra" / "config.yaml").write_text(cfg)


def test_every_paper_table_has_a_valid_file():
    names = {p.stem for p in tables.EXPERIMENTS_DIR.glob("*.yaml")}
    assert names >= EXPECTED_TABLES
    for name in EXPECTED_TABLES:
        spec = load_table_spec(name)
        assert spec.rows and spec.columns
        for data in ("synthetic", "real"):
            for job in plan_jobs(spec, data, [0], root=Path("/nonexistent")):
                assert job.overrides, f"{name}/{data}: row {job.row.name} runs nothing"
    ablation = load_table_spec("prvr_ablation")
    assert len(ablation.rows) == 8
    sumr = [row.paper["SumR"] for row in ablation.rows]
    assert sumr == [69.1, 74.3, 74.7, 71.2, 76.6, 76.8, 78.2, 81.3]
    assert ablation.rows[0].paper["R@1"] == 1.5
    plugin = load_table_spec("prvr_plugin")
    assert any("model=prvr_mssl" in r.overrides for r in plugin.rows)
    assert any("model=prvr_gmmformer" in r.overrides for r in plugin.rows)
    localizer = load_table_spec("prem_localizer_ablation")
    assert localizer.rows[-1].paper["VCMR IoU0.7"] == 7.76


@pytest.mark.parametrize("name", ["prvr_ablation", "prvr_fig5", "prvr_irm", "prvr_tcp"])
def test_prvr_table_rows_compose(name, tmp_path):
    """Every row's generated config composes through the table_row group, as in the sweep."""
    spec = load_table_spec(name)
    jobs = plan_jobs(spec, "synthetic", [0], root=tmp_path)
    conf = write_row_configs(jobs, tmp_path / "conf")
    for job in {j.key: j for j in jobs}.values():
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[f"hydra.searchpath=[file://{conf}]", f"+table_row={job.key}"],
                return_hydra_config=True,
            )
        assert cfg.table_row.name == job.row.name
        assert cfg.hydra.sweep.subdir == f"{job.key}/seed{cfg.seed}"
        for text in job.overrides:
            key, value = text.split("=", 1)
            if key != "experiment":
                got = OmegaConf.select(cfg, key)
                assert str(got).lower() == value.replace("null", "none").lower(), text


def test_spec_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("columns: [{name: R@1, key: test/R@1}]\nrows: [{name: a, paper: {R@5: 1}}]\n")
    with pytest.raises(TableSpecError, match="unknown columns"):
        load_table_spec(path)
    path.write_text("columns: [{name: R@1, key: test/R@1}]\nrows: [{name: a, data: {gpu: []}}]\n")
    with pytest.raises(TableSpecError, match=r"rows\[0\].data"):
        load_table_spec(path)
    with pytest.raises(FileNotFoundError, match="prvr_ablation"):
        load_table_spec("no_such_table")


def test_job_dirs_hash_the_resolved_overrides(spec, tmp_path):
    jobs = plan_jobs(spec, "synthetic", [0, 1], ["trainer.max_epochs=1"], tmp_path)
    assert len(jobs) == 6
    base0, base1, ice0, _, again0, _ = jobs
    assert base0.run_dir.parent == base1.run_dir.parent
    assert base0.run_dir.name == "seed0" and base1.run_dir.name == "seed1"
    assert base0.run_dir.parent.name.startswith("base-")
    assert base0.run_dir.parent.parent == tmp_path / "toy" / "synthetic" / "runs"
    # Same config, same directory (rows with one run), whatever the row is called.
    assert again0.run_dir == ice0.run_dir
    # The directory changes with any override, the extra ones and the data mode included.
    other = plan_jobs(spec, "synthetic", [0], ["trainer.max_epochs=2"], tmp_path)
    assert other[0].run_dir != base0.run_dir
    real = plan_jobs(spec, "real", [0], ["trainer.max_epochs=1"], tmp_path)
    assert real[0].run_dir.parent.name != base0.run_dir.parent.name
    assert real[0].overrides == ("experiment=prvr_charades", "model.ice.enabled=false")
    # And it is stable.
    again = plan_jobs(spec, "synthetic", [0, 1], ["trainer.max_epochs=1"], tmp_path)
    assert [j.run_dir for j in again] == [j.run_dir for j in jobs]


def test_computed_jobs_are_not_run_again(spec, tmp_path):
    jobs = plan_jobs(spec, "synthetic", [0, 1, 2], [], tmp_path)
    runs = tmp_path / "toy" / "synthetic" / "runs"
    conf = write_row_configs(jobs, tmp_path / "conf")
    (command,) = sweep_commands(jobs, conf, runs, ["logger=csv"], python="py")
    keys = sorted({j.key for j in jobs})
    assert command[:4] == ["py", "-m", "partial_relevance.train", "-m"]
    assert f"hydra.searchpath=[file://{conf.resolve()}]" in command
    assert sorted(command[5].removeprefix("+table_row=").split(",")) == keys
    assert "seed=0,1,2" in command and command[-1] == "logger=csv"
    assert f"hydra.sweep.dir={runs.resolve()}" in command
    # A finished row (metrics.json in every seed's dir) leaves the sweep.
    for job in jobs:
        if job.row.name == "base":
            fabricate(job, 1.0, 50.0)
    (command,) = sweep_commands(jobs, conf, runs)
    assert command[5] == "+table_row=" + next(j.key for j in jobs if j.row.name == "ICE")
    # A row with one seed left gets its own multirun over that seed.
    fabricate(next(j for j in jobs if j.row.name == "ICE" and j.seed == 0), 2.0, 60.0)
    (command,) = sweep_commands(jobs, conf, runs)
    assert "seed=1,2" in command
    for job in jobs:
        fabricate(job, 1.0, 50.0)
    assert sweep_commands(jobs, conf, runs) == []
    # A killed job (last.ckpt, no metrics.json) is pending: train(cfg) resumes it in place.
    (jobs[0].run_dir / "metrics.json").unlink()
    (command,) = sweep_commands(jobs, conf, runs)
    assert "seed=0" in command


def test_row_config_turns_overrides_into_a_global_config(spec):
    job = plan_jobs(spec, "synthetic", [0], [], Path("/x"))[1]
    text = row_config(
        [*job.overrides, "model/optimizer=adam", "data.batch_size=8", "tags=[a,b]"],
        job.key,
        job.row,
    )
    assert text.startswith("# @package _global_\n")
    assert "  - override /experiment: prvr_synthetic" in text
    assert "  - override /model/optimizer: adam" in text
    body = yaml.safe_load(text)
    assert body["model"]["ice"] == {"enabled": True, "threshold": None}
    assert body["data"]["batch_size"] == 8 and body["tags"] == ["a", "b"]
    assert body["table_row"] == {"name": "ICE", "key": job.key}
    with pytest.raises(TableSpecError, match="one config"):
        row_config(["seed=1,2"], job.key, job.row)


def test_table_from_fabricated_metrics(spec, tmp_path):
    jobs = plan_jobs(spec, "synthetic", [0, 1, 2], [], tmp_path)
    values = {"base": ([1.0, 2.0, 4.0], [60.0, 61.0, 65.0]), "ICE": ([3.0, 5.0], [70.0, 72.0])}
    for job in jobs:
        r1, sumr = values.get(job.row.name, ([], []))
        if job.seed < len(r1):  # ICE: seed 2 missing
            fabricate(job, r1[job.seed], sumr[job.seed])
    results = collect_results(j.run_dir for j in jobs)
    assert len(results) == 5
    summary = summarize(spec, jobs, results)
    base, ice, again = summary
    assert base.n == 3 and base.seeds == [0, 1, 2]
    assert base.mean["R@1"] == pytest.approx(7 / 3)
    assert base.std["R@1"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert base.mean["SumR"] == pytest.approx(62.0)
    assert ice.n == 2 and ice.mean["SumR"] == pytest.approx(71.0)
    assert ice.std["SumR"] == pytest.approx(math.sqrt(2))
    # Row-level keys: "ICE again" shares ICE's runs but reads val/R@1.
    assert again.mean["R@1"] == pytest.approx(104.0) and again.mean["SumR"] == pytest.approx(71)

    markdown, table_csv, written = build_table(spec, jobs, "synthetic", [0, 1, 2], tmp_path)
    assert "# Toy table" in markdown
    assert "data: **synthetic** (toy corpus)" in markdown
    assert "best `val/SumR` on the val split (`data.select_on=val`" in markdown
    assert "| base | 2.33 ± 1.53 | 1.50 | 62.00 ± 2.65 | 69.10 | 3 |" in markdown
    assert "| ICE | 4.00 ± 1.41 | - | 71.00 ± 1.41 | 74.30 | 2 |" in markdown
    assert markdown == (tmp_path / "toy.md").read_text()
    assert (tmp_path / "toy" / "synthetic" / "toy.csv").read_text() == table_csv
    assert len(written) == 4

    rows = list(csv.DictReader(io.StringIO(table_csv)))
    assert [r["row"] for r in rows] == ["base", "ICE", "ICE again"]
    assert rows[0]["table"] == "toy" and rows[0]["data"] == "synthetic" and rows[0]["n"] == "3"
    assert float(rows[0]["R@1_mean"]) == pytest.approx(7 / 3, abs=1e-4)
    assert float(rows[0]["R@1_std"]) == pytest.approx(1.5275, abs=1e-4)
    assert float(rows[0]["SumR_paper"]) == 69.1
    assert rows[1]["R@1_paper"] == ""


def test_single_seed_and_missing_rows_render(spec, tmp_path):
    jobs = plan_jobs(spec, "synthetic", [0], [], tmp_path)
    fabricate(jobs[0], 1.25, 50.0, select_on="train_holdout")
    results = collect_results(j.run_dir for j in jobs)
    summary = summarize(spec, jobs, results)
    protocol = tables.selection_protocol(results)
    assert "5 % of the training videos held out" in protocol
    markdown = render_markdown(spec, summary, "synthetic", protocol, [0])
    assert "| base | 1.25 | 1.50 | 50.00 | 69.10 | 1 |" in markdown
    assert "| ICE | - | - | - | 74.30 | 0 |" in markdown
    rows = list(csv.DictReader(io.StringIO(render_csv(spec, summary, "synthetic"))))
    assert rows[0]["R@1_std"] == "" and rows[1]["SumR_mean"] == ""


def test_cli_collect_only_and_dry_run(spec, tmp_path, capsys):
    root = tmp_path / "out"
    jobs = plan_jobs(spec, "synthetic", [0, 1], [], root)
    for job in jobs:
        fabricate(job, 2.0 + job.seed, 70.0)
    assert tables.main(["--table", str(spec.path), "--seeds", "2", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 done, 0 to run" in out and "partial_relevance.train" not in out
    assert (root / "toy.md").exists() and (root / "toy.csv").exists()
    # A new seed: the dry run prints the multirun for seed 2 only and runs nothing.
    args = ["--table", str(spec.path), "--seeds", "3", "--root", str(root), "--dry-run"]
    assert tables.main(args) == 0
    out = capsys.readouterr().out
    assert "seed=2 " in out and "partial_relevance.train -m" in out
    assert not (jobs[0].run_dir.parent / "seed2").exists()


def test_wandb_group_outside_a_hydra_app(tmp_path):
    """Composed in-process (no Hydra app, no sweep): the group falls back to task_name."""
    from partial_relevance.train import _set_wandb_group

    cfg = compose_train_config(["logger=wandb"], tmp_path / "run", tmp_path)
    assert cfg.logger.wandb.group is None
    _set_wandb_group(cfg)
    assert cfg.logger.wandb.group == cfg.task_name == "train"
    cfg = compose_train_config(["logger=csv"], tmp_path / "run", tmp_path)
    _set_wandb_group(cfg)  # no wandb logger: nothing to do
    assert "wandb" not in cfg.logger


@pytest.mark.parametrize(
    "overrides",
    [
        ["launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
        ["launcher=local"],
        ["hparams_search=prvr_optuna"],
        ["hparams_search=prem_retriever_optuna", "experiment=prem_retriever_synthetic"],
        ["run_name=preempted"],
    ],
)
def test_launch_configs_compose(overrides, tmp_path, monkeypatch):
    """launcher=, hparams_search= and run_name= compose (the slow tests run them)."""
    monkeypatch.setenv("SLURM_PARTITION", "gpu")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    hydra_cfg = cfg.hydra
    if "launcher=slurm" in overrides:
        launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
        assert launcher["_target_"].endswith("SlurmLauncher")
        assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (
            2,
            4,
            4,
        )
        assert launcher["partition"] == "gpu" and launcher["max_num_timeout"] > 0
    elif "launcher=local" in overrides:
        assert hydra_cfg.launcher._target_.endswith("LocalLauncher")
    elif overrides[0].startswith("hparams_search"):
        sweeper = hydra_cfg.sweeper
        assert sweeper._target_.endswith("OptunaSweeper")
        assert sweeper.direction == "maximize" and sweeper.storage is None
        assert "model.optimizer.lr" in sweeper.params
    else:
        assert hydra_cfg.run.dir.endswith("/train/runs/preempted")


def _age(job, seconds: float) -> None:
    """Make a fabricated job look `seconds` long: config written then, metrics.json now."""
    start = (job.run_dir / "metrics.json").stat().st_mtime - seconds
    os.utime(job.run_dir / ".hydra" / "config.yaml", (start, start))


def test_rows_pick_the_rows_to_run(spec, tmp_path, capsys, monkeypatch):
    """`--rows` runs only the named rows (name or slug); the table still lists every row."""
    root = tmp_path / "out"
    calls = []
    monkeypatch.setattr(tables.subprocess, "call", lambda command: calls.append(command) or 0)
    args = ["--table", str(spec.path), "--seeds", "1", "--root", str(root)]
    assert tables.main([*args, "--rows", "base"]) == 1  # the fake sweep wrote nothing
    (command,) = calls
    (row_arg,) = [a for a in command if a.startswith("+table_row=")]
    assert row_arg.startswith("+table_row=base-") and "," not in row_arg
    out = capsys.readouterr().out
    assert "1 of 3 rows" in out and "[todo] base" in out and "[skip] ICE " in out
    calls.clear()
    tables.main([*args, "--rows", "ice_again", "--dry-run"])  # slug of "ICE again"
    assert calls == [] and "+table_row=ice-" in capsys.readouterr().out  # shares ICE's run
    with pytest.raises(TableSpecError, match=r"unknown row\(s\) \['nope'\].*'ICE again'"):
        tables.select_rows(spec, "base,nope")


def test_dry_run_estimates_from_finished_runs(spec, tmp_path, capsys):
    root = tmp_path / "out"
    args = ["--table", str(spec.path), "--seeds", "2", "--root", str(root), "--dry-run"]
    assert tables.main(args) == 0
    assert "no finished run under" in capsys.readouterr().out
    jobs = plan_jobs(spec, "synthetic", [0, 1], [], root)
    base0 = next(j for j in jobs if j.row.name == "base" and j.seed == 0)
    ice0 = next(j for j in jobs if j.row.name == "ICE" and j.seed == 0)
    for job, seconds in ((base0, 600.0), (ice0, 120.0)):
        fabricate(job, 1.0, 50.0)
        _age(job, seconds)
    assert tables.main(args) == 0
    out = capsys.readouterr().out
    # base seed 1 takes base's 10 min, ICE seed 1 ICE's 2 min (ICE again shares ICE's run).
    assert "estimate: 2 job(s) ~ 12 min 00 s one after another" in out
    assert "from 2 finished run(s) here, 6 min 00 s each on average" in out
    assert tables.format_duration(3725) == "1 h 02 min" and tables.format_duration(42) == "42 s"


def test_progress_line_per_finished_job(spec, tmp_path, capsys):
    jobs = plan_jobs(spec, "synthetic", [0], [], tmp_path)
    progress = tables.JobProgress(jobs, spec, interval=0.01)
    with progress:
        fabricate(jobs[0], 2.0, 70.0)
        _age(jobs[0], 65.0)
    progress.poll()  # reported once only
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines == ["[1/2] base seed 0 done in 1 min 05 s: R@1 2.00, SumR 70.00"]
