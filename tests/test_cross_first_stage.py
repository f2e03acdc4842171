"""The cross first-stage table (experiments/cross_first_stage.yaml): one localizer config, each
row on its own first stage's rankings (tables: a row's own `retriever`)."""

from __future__ import annotations

import json

import pytest

from partial_relevance.prem_pipeline import first_stage_experiment
from partial_relevance.tables import load_table_spec, plan_jobs, retriever_jobs, row_config
from support import CONF_DIR


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_each_row_reads_its_own_first_stage(data, tmp_path):
    spec = load_table_spec("cross_first_stage")
    jobs = plan_jobs(spec, data, [0, 1], [], tmp_path)
    assert len(jobs) == 8 and len({j.key for j in jobs}) == 4
    stages = retriever_jobs(jobs)
    assert len(stages) == 8  # 4 first stages x 2 seeds
    by_row = {}
    for job in jobs:
        assert job.retriever is not None and job.retriever.seed == job.seed
        assert job.overrides == spec.common[data]  # the same localizer config in every row
        by_row.setdefault(job.row.name, set()).add(job.retriever.overrides)
        assert job.ranking_file is None  # known only once the row's own stage 1 has run
        stage1 = job.retriever.run_dir
        stage1.mkdir(parents=True, exist_ok=True)
        (stage1 / "rankings.h5").write_bytes(b"")
        artifacts = {"ranking_file": str(stage1 / "rankings.h5")}
        (stage1 / "metrics.json").write_text(json.dumps({"artifacts": artifacts}))
        text = row_config(job.overrides, job.key, job.row, CONF_DIR, job.ranking_file)
        assert str(stage1.parent.resolve()) in text
    assert all(len(v) == 1 for v in by_row.values())
    experiments = [next(iter(v))[0] for v in by_row.values()]
    assert len(set(experiments)) == 4
    if data == "synthetic":  # the first_stage choices of make train-prem, small size
        names = ("prem", "prem_modules", "prvr", "prvr_full")
        assert experiments == [f"experiment={first_stage_experiment(n, 'small')}" for n in names]


def test_rows_without_their_own_retriever_keep_the_tables(tmp_path):
    spec = load_table_spec("prem_vcmr")
    jobs = plan_jobs(spec, "synthetic", [0], [], tmp_path)
    assert len(retriever_jobs(jobs)) == 1
    assert all(not row.retriever for row in spec.rows)
