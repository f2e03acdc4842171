"""Stage-wise PREM table rows (`tables`, SPEC §5 / §8): the retriever stage runs first (or a
finished run of the same config is reused) and its ranking file reaches the localizer rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from partial_relevance import tables
from partial_relevance.tables import (
    RANKING_ARTIFACT,
    RETRIEVER_DIR,
    artifact_path,
    load_table_spec,
    plan_jobs,
    retriever_jobs,
    row_config,
    write_row_configs,
)
from partial_relevance.train import train
from support import CONF_DIR, TINY_SYNTHETIC

STAGE_WISE = ("prem_vcmr", "prem_localizer_ablation", "prem_didemo")


def finish_retriever(job, name: str = "my_rankings.h5") -> Path:
    """A finished retriever run as train(cfg) leaves it: metrics.json reporting its ranking
    file under "artifacts" (a non-default name: the tables never guess it)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    ranking = job.run_dir / name
    ranking.write_bytes(b"h5")
    metrics = {"val/VR_SumR": 1.0, "artifacts": {RANKING_ARTIFACT: str(ranking)}}
    (job.run_dir / "metrics.json").write_text(json.dumps(metrics))
    return ranking


def _tiny(cache: Path) -> list[str]:
    """Overrides for both stages: the tiny corpus, one short epoch, a tiny model."""
    return [
        *(f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()),
        f"paths.cache_dir={cache}",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "model.net.hidden_dim=16",
        "model.net.ffn_dim=32",
        "run_test=false",
    ]


@pytest.mark.parametrize("name", STAGE_WISE)
def test_stage_wise_tables_plan_a_retriever_per_seed(name, tmp_path):
    spec = load_table_spec(name)
    for data in ("synthetic", "real"):
        jobs = plan_jobs(spec, data, [0, 1], ["trainer.max_epochs=1"], tmp_path)
        assert all(j.retriever is not None for j in jobs)
        for job in jobs:
            retriever = job.retriever
            assert retriever is not None and retriever.seed == job.seed
            assert retriever.run_dir.parts[-5:-2] == (RETRIEVER_DIR, data, "runs")
            assert retriever.run_dir.name == f"seed{job.seed}"
            assert any(o.startswith("experiment=prem_retriever_") for o in retriever.overrides)
            assert job.ranking_file is None and not retriever.done  # not run yet
        for retriever in retriever_jobs(jobs):
            finish_retriever(retriever)
        for job in jobs:
            assert job.retriever.done
            assert job.ranking_file == str(
                job.retriever.run_dir.parent.resolve() / "seed${seed}" / "my_rankings.h5"
            )
        assert len(retriever_jobs(jobs)) == 2  # one per seed, shared by every row
    # A single-stage table has no retriever stage.
    assert all(j.retriever is None for j in plan_jobs(load_table_spec("prem_vr"), "synthetic", [0]))


def test_tables_with_the_same_retriever_config_share_its_runs(tmp_path):
    vcmr = plan_jobs(load_table_spec("prem_vcmr"), "synthetic", [0], [], tmp_path)
    ablation = plan_jobs(load_table_spec("prem_localizer_ablation"), "synthetic", [0], [], tmp_path)
    didemo = plan_jobs(load_table_spec("prem_didemo"), "synthetic", [0], [], tmp_path)
    assert retriever_jobs(vcmr) == retriever_jobs(ablation)
    assert retriever_jobs(didemo) != retriever_jobs(vcmr)  # data.subtitles=false
    # Another retriever config: another retriever dir and other localizer job dirs.
    other = plan_jobs(
        load_table_spec("prem_vcmr"), "synthetic", [0], [], tmp_path, ["model.tau=0.1"]
    )
    assert retriever_jobs(other)[0].run_dir != retriever_jobs(vcmr)[0].run_dir
    assert {j.run_dir for j in other}.isdisjoint({j.run_dir for j in vcmr})


def test_row_config_points_each_seed_at_its_retriever(tmp_path):
    spec = load_table_spec("prem_localizer_ablation")
    jobs = plan_jobs(spec, "synthetic", [0, 1], [], tmp_path)
    conf = write_row_configs(jobs, tmp_path / "conf")
    assert not list((conf / "table_row").glob("*.yaml"))  # no retriever run: nothing to run
    for retriever in retriever_jobs(jobs):
        finish_retriever(retriever)
    conf = write_row_configs(jobs, tmp_path / "conf")
    job = next(j for j in jobs if j.row.name == "no gates")
    text = (conf / "table_row" / f"{job.key}.yaml").read_text()
    assert yaml.safe_load(text)["data"]["ranking_file"] == job.ranking_file
    for seed in (0, 1):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    f"hydra.searchpath=[file://{conf}]",
                    f"+table_row={job.key}",
                    f"seed={seed}",
                ],
            )
        expected = job.retriever.run_dir.parent.resolve() / f"seed{seed}" / "my_rankings.h5"
        assert cfg.data.ranking_file == str(expected)
        assert cfg.model.net.gates is False and cfg.task_name == "prem_synthetic"
    # The ranking file is set after the row's own overrides: it wins over a stale one.
    stale = row_config(
        [*job.overrides, "data.ranking_file=/old.h5"],
        job.key,
        job.row,
        ranking_file="/new/seed${seed}/rankings.h5",
    )
    assert yaml.safe_load(stale)["data"]["ranking_file"] == "/new/seed${seed}/rankings.h5"


class InProcessSweep:
    """Stands in for `subprocess.call` of a `partial_relevance.train -m` sweep command: runs
    each (row, seed) job with `train(cfg)` in this process, in the directory the multirun would
    give it (`hydra.sweep.dir/<key>/seed<k>`)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str]) -> int:
        self.commands.append(command)
        args = command[command.index("-m", 3) + 1 :]
        searchpath = next(a for a in args if a.startswith("hydra.searchpath="))
        keys = next(a for a in args if a.startswith("+table_row=")).split("=", 1)[1].split(",")
        seeds = next(a for a in args if a.startswith("seed=")).split("=", 1)[1].split(",")
        sweep = Path(next(a for a in args if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
        extra = [a for a in args if not a.startswith(("hydra.", "+table_row=", "seed="))]
        for key in keys:
            for seed in seeds:
                with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                    cfg = compose(
                        "train", overrides=[searchpath, f"+table_row={key}", f"seed={seed}", *extra]
                    )
                with open_dict(cfg):
                    cfg.paths.output_dir = str(sweep / key / f"seed{seed}")
                train(cfg)
        return 0


def test_table_runs_the_retriever_then_the_localizer_on_its_rankings(
    tmp_path, synthetic_cache, monkeypatch
):
    """A tiny stage-wise table end to end: retriever multirun -> rankings.h5 -> localizer rows
    trained on it; run again, nothing runs (the finished retriever and rows are reused)."""
    table = tmp_path / "chain.yaml"
    table.write_text(
        yaml.safe_dump(
            {
                "title": "chain",
                "columns": [{"name": "VCMR", "key": "val/VCMR_R@100 IoU0.5"}],
                "common": {"synthetic": ["experiment=prem_synthetic", "data.batch_size=4"]},
                "retriever": {
                    "synthetic": [
                        "experiment=prem_retriever_synthetic",
                        "data.batch_size=16",
                        "model.ranking.file=custom_rankings.h5",  # read back by value
                    ]
                },
                "rows": [
                    {"name": "full", "overrides": ["trainer.limit_train_batches=2"]},
                    {
                        "name": "no gates",
                        "overrides": ["trainer.limit_train_batches=2", "model.net.gates=false"],
                    },
                ],
            }
        )
    )
    sweep = InProcessSweep()
    monkeypatch.setattr(tables.subprocess, "call", sweep)
    root = tmp_path / "tables"
    args = ["--table", str(table), "--seeds", "1", "--root", str(root)]
    for override in _tiny(synthetic_cache):
        args += ["--override", override]
    assert tables.main([*args, "--retriever-override", "model.positive_warmup_epochs=0"]) == 0

    retriever_cmd, localizer_cmd = sweep.commands
    assert "model.positive_warmup_epochs=0" in retriever_cmd
    assert "model.positive_warmup_epochs=0" not in localizer_cmd
    (retriever_dir,) = (root / RETRIEVER_DIR / "synthetic" / "runs").glob("*/seed0")
    assert retriever_dir.parent.name.startswith("prem_retriever_synthetic-")
    ranking_file = artifact_path(retriever_dir, RANKING_ARTIFACT)
    assert ranking_file is not None and ranking_file.exists()
    assert ranking_file.name == "custom_rankings.h5"
    rows = sorted((root / "chain" / "synthetic" / "runs").glob("*/seed0/metrics.json"))
    assert len(rows) == 2
    for path in rows:
        metrics = json.loads(path.read_text())
        assert "val/VCMR_R@100 IoU0.5" in metrics and "val/SVMR_R@1 IoU0.5" in metrics
        row_cfg = (
            root / "chain" / "synthetic" / "conf" / "table_row" / path.parts[-3]
        ).with_suffix(".yaml")
        ranking = yaml.safe_load(row_cfg.read_text())["data"]["ranking_file"]
        assert ranking.replace("${seed}", "0") == str(ranking_file.resolve())
    markdown = (root / "chain.md").read_text()
    assert "| full |" in markdown and "| no gates |" in markdown

    # Same command again: both stages are finished and reused, nothing runs.
    sweep.commands.clear()
    assert tables.main([*args, "--retriever-override", "model.positive_warmup_epochs=0"]) == 0
    assert sweep.commands == []
    # Another row on the same retriever config: only the new row runs, on the same rankings.
    spec = yaml.safe_load(table.read_text())
    spec["rows"].append(
        {
            "name": "no adv",
            "overrides": ["trainer.limit_train_batches=2", "model.adversarial=false"],
        }
    )
    table.write_text(yaml.safe_dump(spec))
    assert tables.main([*args, "--retriever-override", "model.positive_warmup_epochs=0"]) == 0
    (command,) = sweep.commands
    assert command[5].startswith("+table_row=no_adv-")
