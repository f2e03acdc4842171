"""The embedded synthetic corpus (SPEC §1.4), written in the real on-disk formats.

One generator writes both a PRVR dataset in the MS-SL layout and a VCMR dataset in the
TVR/XML layout; the real readers load them back. The latent recipe:

- `K` topics (unit vectors in a small latent space) and fixed random projections of that
  space to the visual, subtitle and query-token feature dims, plus noise;
- a video is a run of events (consecutive clips with one topic plus the video's own detail
  vector and slowly varying AR(1) noise); durations and moment lengths follow TVR val
  (median ≈ 69 s, a moment ≈ 11 % of its video on average);
- each event is visible in the visual stream (`v`), the subtitle stream (`t`) or both (`vt`),
  in TVR's proportions; subtitle words are a rotated view of the latent, so a query's visual
  and subtitle words are distinct tokens and modality pooling has something to learn;
- a query describes one event: tokens mixing its topic and the video's detail (the topic
  alone does not identify the video) with filler tokens.

Topics recur across videos, so unpaired queries often match other videos' moments (what ICE
mines), and most of every video is unrelated to any one query (what IRM pushes away).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from partial_relevance.data.stores.bigfile import write_bigfile

COLLECTION = "synthetic"
PRVR_FEATURE = "synthetic_visual"
SPLITS = ("train", "val", "test")
QUERY_TYPES = ("v", "vt", "t")
QUERY_TYPE_PROBS = (0.743, 0.168, 0.089)  # TVR val: v 8,097 / vt 1,834 / t 964
CLIP_SECONDS = 1.5
FORMAT_VERSION = 3  # bump when the recipe changes: the cache key includes it
# v3: a moment in the last clip of a short video no longer starts after the video's end


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and difficulty of the synthetic corpus; every field enters the cache key."""

    seed: int = 0
    num_train_videos: int = 1200
    num_val_videos: int = 500
    num_test_videos: int = 500
    queries_per_video: int = 5
    num_topics: int = 40
    latent_dim: int = 48
    prvr_visual_dim: int = 128
    vcmr_visual_dim: int = 128
    subtitle_dim: int = 64
    query_dim: int = 64
    detail_weight: float = 0.8
    clip_noise: float = 0.6
    feature_noise: float = 0.5
    token_noise: float = 0.5
    min_tokens: int = 10
    max_tokens: int = 20

    def key(self) -> str:
        """Short hash of the parameters (and the recipe version) naming the cache folder."""
        payload = json.dumps({"v": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticPaths:
    """Where each part of a generated corpus lies (all real formats)."""

    root: Path

    @property
    def prvr_root(self) -> Path:  # MS-SL `<root>`; the collection lies beneath
        return self.root / "prvr"

    @property
    def vcmr_root(self) -> Path:
        return self.root / "vcmr"


class _Latent:
    """The fixed latent world: topics, filler words, projections, the subtitle rotation."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        d = cfg.latent_dim
        self.topics = _unit(rng.standard_normal((cfg.num_topics, d)))
        self.backgrounds = _unit(rng.standard_normal((cfg.num_topics, d)))
        self.fillers = _unit(rng.standard_normal((64, d)))
        self.rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]  # subtitle "words"
        self.proj_prvr = rng.standard_normal((d, cfg.prvr_visual_dim)) / np.sqrt(d)
        self.proj_visual = rng.standard_normal((d, cfg.vcmr_visual_dim)) / np.sqrt(d)
        self.proj_subtitle = rng.standard_normal((d, cfg.subtitle_dim)) / np.sqrt(d)
        self.proj_query = rng.standard_normal((d, cfg.query_dim)) / np.sqrt(d)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ar1_noise(rng: np.random.Generator, n: int, d: int, rho: float = 0.8) -> np.ndarray:
    """Slowly varying noise so neighbouring clips stay coherent."""
    eps = rng.standard_normal((n, d))
    out = np.empty_like(eps)
    out[0] = eps[0]
    scale = np.sqrt(1 - rho**2)
    for t in range(1, n):
        out[t] = rho * out[t - 1] + scale * eps[t]
    return out / np.sqrt(d)


def _sample_duration(rng: np.random.Generator) -> float:
    """TVR-val-like durations: mostly 55-95 s, a tail from 15 to 150 s."""
    if rng.random() < 0.85:
        return float(np.round(rng.uniform(55.0, 96.0), 2))
    return float(np.round(rng.uniform(15.0, 150.0), 2))


def _split_events(rng: np.random.Generator, num_clips: int) -> list[tuple[int, int]]:
    """Partition `num_clips` into 6-12 events (inclusive clip spans), ≈ 11 % each on average."""
    num_events = int(min(num_clips, rng.integers(6, 13)))
    cuts = np.sort(rng.choice(np.arange(1, num_clips), size=num_events - 1, replace=False))
    bounds = np.concatenate([[0], cuts, [num_clips]])
    return [(int(bounds[k]), int(bounds[k + 1]) - 1) for k in range(num_events)]


def _generate_video(
    cfg: SyntheticConfig, world: _Latent, rng: np.random.Generator, video_id: str
) -> dict:
    """One video: per-clip latents for both streams, its events and its queries."""
    duration = _sample_duration(rng)
    num_clips = max(2, int(np.ceil(duration / CLIP_SECONDS)))
    d = cfg.latent_dim
    detail = _unit(rng.standard_normal(d))
    events = _split_events(rng, num_clips)
    visual = np.empty((num_clips, d))
    subtitle = np.empty((num_clips, d))
    sub_mask = np.zeros(num_clips, dtype=np.float32)
    event_meta = []
    for st, ed in events:
        topic = int(rng.integers(cfg.num_topics))
        query_type = str(rng.choice(QUERY_TYPES, p=QUERY_TYPE_PROBS))
        content = world.topics[topic] + cfg.detail_weight * detail
        background = world.backgrounds[int(rng.integers(cfg.num_topics))]
        visual[st : ed + 1] = content if "v" in query_type else background
        if "t" in query_type:
            subtitle[st : ed + 1] = world.rotation @ content
            sub_mask[st : ed + 1] = 1.0
        else:
            subtitle[st : ed + 1] = world.rotation @ background
            sub_mask[st : ed + 1] = float(rng.random() < 0.5)  # some chatter, some silence
        event_meta.append((st, ed, topic, query_type))
    visual += cfg.clip_noise * _ar1_noise(rng, num_clips, d)
    subtitle += cfg.clip_noise * _ar1_noise(rng, num_clips, d)

    chosen = rng.choice(len(events), size=cfg.queries_per_video, replace=len(events) < 5)
    queries = []
    for k, event_index in enumerate(chosen):
        st, ed, topic, query_type = event_meta[int(event_index)]
        content = world.topics[topic] + cfg.detail_weight * detail
        num_tokens = int(rng.integers(cfg.min_tokens, cfg.max_tokens + 1))
        num_content = max(2, num_tokens // 2)
        views = []
        if "v" in query_type:
            views.append(content)
        if "t" in query_type:
            views.append(world.rotation @ content)
        token_latents = [views[i % len(views)] for i in range(num_content)]
        token_latents += [
            world.fillers[int(rng.integers(64))] for _ in range(num_tokens - num_content)
        ]
        order = rng.permutation(num_tokens)
        tokens = np.stack(token_latents)[order]
        tokens = tokens + cfg.token_noise * rng.standard_normal(tokens.shape) / np.sqrt(d)
        jitter = rng.uniform(0.0, 0.7, size=2)
        # The last clip may run past the duration: keep 0 <= st <= ed <= duration.
        start = round(min(st * CLIP_SECONDS + jitter[0], max(duration - 0.3, 0.0)), 2)
        end = round(min((ed + 1) * CLIP_SECONDS - jitter[1], duration), 2)
        end = max(end, round(start + 0.3, 2))
        queries.append(
            {
                "k": k,
                "tokens": tokens,
                "ts": [start, min(end, duration)],
                "type": query_type,
                "desc": f"someone does topic {topic} with the {video_id} detail ({query_type})",
            }
        )
    return {
        "video_id": video_id,
        "duration": duration,
        "visual": visual,
        "subtitle": subtitle,
        "sub_mask": sub_mask,
        "queries": queries,
    }


def _project(
    latent: np.ndarray, proj: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    feats = latent @ proj
    feats += noise * rng.standard_normal(feats.shape) * np.abs(feats).mean()
    return feats.astype(np.float32)


def generate(cfg: SyntheticConfig, out_dir: str | Path, progress: bool = True) -> SyntheticPaths:
    """Write the whole corpus under `out_dir` (which must not exist yet)."""
    paths = SyntheticPaths(Path(out_dir))
    rng = np.random.default_rng(cfg.seed)
    world = _Latent(cfg, rng)
    collection = paths.prvr_root / COLLECTION
    text_dir = collection / "TextData"
    text_dir.mkdir(parents=True)
    paths.vcmr_root.mkdir(parents=True)

    sizes = {"train": cfg.num_train_videos, "val": cfg.num_val_videos, "test": cfg.num_test_videos}
    prvr_frames: dict[str, np.ndarray] = {}
    video2dur: dict[str, dict[str, list]] = {}
    desc_id = 0
    global_idx = 0
    with (
        h5py.File(text_dir / f"roberta_{COLLECTION}_query_feat.hdf5", "w") as prvr_queries,
        h5py.File(paths.vcmr_root / "video_feature.h5", "w") as vcmr_video,
        h5py.File(paths.vcmr_root / "sub_feature.h5", "w") as vcmr_sub,
        h5py.File(paths.vcmr_root / "query_feature.h5", "w") as vcmr_query,
    ):
        bar = tqdm(total=sum(sizes.values()), desc="synthetic corpus", disable=not progress)
        for split in SPLITS:
            captions: list[str] = []
            jsonl: list[str] = []
            video2dur[split] = {}
            for index in range(sizes[split]):
                video_id = f"{split}_video_{index:05d}"
                video = _generate_video(cfg, world, rng, video_id)
                prvr_frames[video_id] = _project(
                    video["visual"], world.proj_prvr, cfg.feature_noise, rng
                )
                vcmr_video.create_dataset(
                    video_id,
                    data=_project(video["visual"], world.proj_visual, cfg.feature_noise, rng),
                )
                sub = _project(video["subtitle"], world.proj_subtitle, cfg.feature_noise, rng)
                vcmr_sub.create_dataset(video_id, data=sub * video["sub_mask"][:, None])
                vcmr_sub.create_dataset(video_id + "-mask", data=video["sub_mask"])
                video2dur[split][video_id] = [video["duration"], global_idx]
                global_idx += 1
                for query in video["queries"]:
                    tokens = _project(query["tokens"], world.proj_query, 0.0, rng)
                    cap_id = f"{video_id}#enc#{query['k']}"
                    captions.append(f"{cap_id} {query['desc']}")
                    prvr_queries.create_dataset(cap_id, data=tokens)
                    vcmr_query.create_dataset(str(desc_id), data=tokens)
                    record = {
                        "vid_name": video_id,
                        "duration": video["duration"],
                        "ts": query["ts"],
                        "desc": query["desc"],
                        "type": query["type"],
                        "desc_id": desc_id,
                    }
                    jsonl.append(json.dumps(record))
                    desc_id += 1
                bar.update(1)
            (text_dir / f"{COLLECTION}{split}.caption.txt").write_text("\n".join(captions) + "\n")
            (paths.vcmr_root / f"synthetic_{split}_release.jsonl").write_text(
                "\n".join(jsonl) + "\n"
            )
        bar.close()
    write_bigfile(collection / "FeatureData" / PRVR_FEATURE, prvr_frames)
    (paths.vcmr_root / "synthetic_video2dur_idx.json").write_text(json.dumps(video2dur))
    (paths.root / "corpus.json").write_text(
        json.dumps({"format_version": FORMAT_VERSION, **asdict(cfg)}, indent=2)
    )
    return paths


def ensure_corpus(
    cache_dir: str | Path, cfg: SyntheticConfig, progress: bool = True
) -> SyntheticPaths:
    """Return the corpus for `cfg`, generating it on first use into `cache_dir/<key>`.

    Generation writes into a temporary sibling folder and renames it into place, so parallel
    jobs of a multirun never see a half-written corpus and never overwrite each other's.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"synthetic-{cfg.key()}"
    if (target / "corpus.json").exists():
        return SyntheticPaths(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        generate(cfg, staging / "corpus", progress=progress)
        try:
            os.rename(staging / "corpus", target)
        except OSError:
            if not (target / "corpus.json").exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SyntheticPaths(target)
