"""The synthetic Fig. 1 regime (data=prvr_synthetic_fig1) and the latent-truth sidecar."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from partial_relevance.data.prvr import PrvrDataModule
from partial_relevance.data.synthetic import (
    TRUTH_FILE,
    SyntheticConfig,
    ensure_corpus,
    load_truth,
    measure_phenomena,
)
from support import CONF_DIR, TINY_SYNTHETIC

FIG1 = {**TINY_SYNTHETIC, "queries_per_video": 2, "min_events": 16, "max_events": 24}


def _fig1_from_config() -> dict:
    """The regime's fields as `conf/data/prvr_synthetic_fig1.yaml` sets them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["data=prvr_synthetic_fig1"])
    return OmegaConf.to_container(cfg.data.synthetic, resolve=True)


@pytest.fixture(scope="module")
def fig1_corpus(synthetic_cache):
    return ensure_corpus(synthetic_cache, SyntheticConfig(**FIG1), progress=False)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        if path.suffix not in (".h5", ".hdf5"):  # HDF5 files carry timestamps
            h.update(path.read_bytes())
    return h.hexdigest()


def test_config_selects_the_regime():
    synthetic = _fig1_from_config()
    assert synthetic["queries_per_video"] == 2
    assert (synthetic["min_events"], synthetic["max_events"]) == (16, 24)
    assert synthetic["duration_scale"] == 1.0
    assert SyntheticConfig(**synthetic).key() != SyntheticConfig().key()


def test_generation_is_deterministic(tmp_path):
    small = SyntheticConfig(**{**FIG1, "num_train_videos": 4, "num_val_videos": 2})
    a = ensure_corpus(tmp_path / "a", small, progress=False)
    b = ensure_corpus(tmp_path / "b", small, progress=False)
    assert _digest(a.root) == _digest(b.root)
    assert load_truth(a.root) == load_truth(b.root)


def test_sidecar_holds_the_latent_truth(fig1_corpus):
    truth = load_truth(fig1_corpus.root)
    assert (fig1_corpus.root / TRUTH_FILE).exists()
    assert set(truth["splits"]) == {"train", "val", "test"}
    train = truth["splits"]["train"]
    assert len(train["videos"]) == FIG1["num_train_videos"]
    assert len(train["queries"]) == 2 * FIG1["num_train_videos"]
    captions = fig1_corpus.prvr_root / "synthetic" / "TextData" / "synthetictrain.caption.txt"
    cap_ids = [line.split(" ", 1)[0] for line in captions.read_text().splitlines() if line]
    assert sorted(cap_ids) == sorted(train["queries"])
    jsonl = fig1_corpus.vcmr_root / "synthetic_train_release.jsonl"
    records = {json.loads(x)["desc_id"]: json.loads(x) for x in jsonl.read_text().splitlines()}
    for cap_id, query in train["queries"].items():
        video = train["videos"][query["video"]]
        assert cap_id.startswith(query["video"] + "#enc#")
        event = video["events"][query["event"]]
        assert event["topic"] == query["topic"]
        st, ed = event["span"]
        assert 0 <= st <= ed < video["num_clips"]
        # the annotated moment (seconds) is the event's clips (1.5 s each) up to the jitter
        ts = records[query["desc_id"]]["ts"]
        assert st * 1.5 <= ts[0] <= (ed + 1) * 1.5 and ts[1] <= (ed + 1) * 1.5 + 1e-6
    for video in train["videos"].values():
        assert 16 <= len(video["events"]) <= 24
        spans = [e["span"] for e in video["events"]]  # a partition of the clips
        assert spans[0][0] == 0 and spans[-1][1] == video["num_clips"] - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))


def test_phenomena_are_present_and_stronger_than_default(fig1_corpus, tiny_corpus):
    fig1 = measure_phenomena(load_truth(fig1_corpus.root), "train")
    default = measure_phenomena(load_truth(tiny_corpus.root), "train")
    assert fig1["query_topic_unannotated_elsewhere"] > 0.9
    assert fig1["pseudo_positive_videos"] > default["pseudo_positive_videos"] > 0
    assert fig1["annotated_event_fraction"] < 0.15 < default["annotated_event_fraction"]
    assert 0 < fig1["moment_video_ratio"] < default["moment_video_ratio"]
    assert fig1["other_topic_fraction"] > 0.8


def test_the_real_loaders_read_the_regime(fig1_corpus):
    dm = PrvrDataModule(root=str(fig1_corpus.prvr_root), video_dim=32, query_dim=16, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["moments"].shape == (4, 32, 32)
    assert batch["query_video"].bincount(minlength=4).tolist() == [2] * 4
    assert dm.num_videos("val") == FIG1["num_val_videos"]


def test_bad_structure_is_refused():
    with pytest.raises(ValueError, match="min_events"):
        SyntheticConfig(min_events=5, max_events=4)
