"""The probe callback (callbacks=prvr_probes) in a tiny synthetic PRVR run of the Fig. 1 regime."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from partial_relevance.train import train
from support import compose_train_config

TINY_FIG1 = [
    "experiment=prvr_full_synthetic",
    "data=prvr_synthetic_fig1",
    "data.synthetic.num_train_videos=32",
    "data.synthetic.num_val_videos=16",
    "data.synthetic.num_test_videos=8",
    "data.synthetic.prvr_visual_dim=32",
    "data.synthetic.query_dim=32",
    "model.net.hidden_dim=32",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "logger=csv",
    "run_test=false",
    "trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "seed=3",
]


def _epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    (path,) = run_dir.glob("csv/version_*/metrics.csv")
    return list(csv.DictReader(path.open()))


@pytest.mark.timeout(300)
def test_probes_are_logged_and_leave_training_unchanged(tmp_path, synthetic_cache):
    runs = {}
    for name, extra in (("plain", []), ("probes", ["callbacks=prvr_probes"])):
        cfg = compose_train_config([*TINY_FIG1, *extra], tmp_path / name, synthetic_cache)
        train(cfg)
        runs[name] = tmp_path / name
    rows = _epoch_rows(runs["probes"])
    logged = {k for r in rows for k, v in r.items() if v and k.startswith("probe/")}
    for key in (
        "probe/ice_pairs",
        "probe/ice_precision",
        "probe/ice_chance",
        "probe/ice_precision@none",
        "probe/ice_pairs@0.8",
        "probe/irm_rv_query",
        "probe/irm_random_query",
        "probe/irm_rq_target",
        "probe/irm_random_target",
        "probe/tcp_acc_clip",
        "probe/tcp_acc_frame",
        "probe/tcp_acc_clip_val",
        "probe/tcp_acc_frame_val",
        "probe/tcp_acc_clip_moved_val",
    ):
        assert key in logged, key
    precision = [float(r["probe/ice_precision"]) for r in rows if r.get("probe/ice_precision")]
    assert all(0.0 <= p <= 1.0 for p in precision)
    # probing draws nothing from the global RNGs: the same losses and the same val metrics
    plain = json.loads((runs["plain"] / "metrics.json").read_text())
    probed = json.loads((runs["probes"] / "metrics.json").read_text())
    assert plain["val/SumR"] == probed["val/SumR"]
    losses = {
        name: [r["train/loss_epoch"] for r in _epoch_rows(d) if r.get("train/loss_epoch")]
        for name, d in runs.items()
    }
    assert losses["plain"] == losses["probes"] and len(losses["plain"]) == 2


def test_probes_refuse_real_data_configs(tmp_path, synthetic_cache):
    from partial_relevance.lit.probes import PrvrProbes

    class NotSynthetic:
        synthetic = None

    class Trainer:
        datamodule = NotSynthetic()

    with pytest.raises(ValueError, match="synthetic"):
        PrvrProbes().setup(Trainer(), object(), "fit")
