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
FORMAT_VERSION = 4  # bump when the recipe changes: the cache key includes it
# v3: a moment in the last clip of a short video no longer starts after the video's end
# v4: writes the latent truth (TRUTH_FILE); events per video and the duration scale are fields
TRUTH_FILE = "latent_truth.json"  # sidecar beside corpus.json: read by probes, never by models


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
    # Structure (docs/prvr_ablations.md "The Fig. 1 regime"): events per video are drawn
    # uniformly from [min_events, max_events]; durations are TVR-val-like times duration_scale.
    min_events: int = 6
    max_events: int = 12
    duration_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError(
                f"synthetic: need 1 <= min_events <= max_events, got "
                f"{self.min_events}, {self.max_events}"
            )
        if self.duration_scale <= 0:
            raise ValueError(f"synthetic: duration_scale must be > 0, got {self.duration_scale}")
        if self.queries_per_video < 1:
            raise ValueError(
                f"synthetic: queries_per_video must be >= 1, got {self.queries_per_video}"
            )

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


def _sample_duration(rng: np.random.Generator, scale: float = 1.0) -> float:
    """TVR-val-like durations (mostly 55-95 s, a tail from 15 to 150 s), times `scale`."""
    if rng.random() < 0.85:
        duration = float(np.round(rng.uniform(55.0, 96.0), 2))
    else:
        duration = float(np.round(rng.uniform(15.0, 150.0), 2))
    return duration if scale == 1.0 else round(duration * scale, 2)


def _split_events(
    rng: np.random.Generator, num_clips: int, min_events: int = 6, max_events: int = 12
) -> list[tuple[int, int]]:
    """Partition `num_clips` into `min_events`-`max_events` events (inclusive clip spans);
    the default 6-12 makes an event ≈ 11 % of its video on average."""
    num_events = int(min(num_clips, rng.integers(min_events, max_events + 1)))
    cuts = np.sort(rng.choice(np.arange(1, num_clips), size=num_events - 1, replace=False))
    bounds = np.concatenate([[0], cuts, [num_clips]])
    return [(int(bounds[k]), int(bounds[k + 1]) - 1) for k in range(num_events)]


def _generate_video(
    cfg: SyntheticConfig, world: _Latent, rng: np.random.Generator, video_id: str
) -> dict:
    """One video: per-clip latents for both streams, its events and its queries."""
    duration = _sample_duration(rng, cfg.duration_scale)
    num_clips = max(2, int(np.ceil(duration / CLIP_SECONDS)))
    d = cfg.latent_dim
    detail = _unit(rng.standard_normal(d))
    events = _split_events(rng, num_clips, cfg.min_events, cfg.max_events)
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

    chosen = rng.choice(
        len(events), size=cfg.queries_per_video, replace=len(events) < cfg.queries_per_video
    )
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
                "event": int(event_index),
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
        "num_clips": num_clips,
        "events": event_meta,
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
    truth: dict[str, dict[str, dict]] = {}
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
            truth[split] = {"videos": {}, "queries": {}}
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
                truth[split]["videos"][video_id] = {
                    "duration": video["duration"],
                    "num_clips": video["num_clips"],
                    "events": [
                        {"span": [st, ed], "topic": topic, "type": qtype}
                        for st, ed, topic, qtype in video["events"]
                    ],
                }
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
                    truth[split]["queries"][cap_id] = {
                        "video": video_id,
                        "event": query["event"],
                        "topic": video["events"][query["event"]][2],
                        "desc_id": desc_id,
                    }
                    desc_id += 1
                bar.update(1)
            (text_dir / f"{COLLECTION}{split}.caption.txt").write_text("\n".join(captions) + "\n")
            (paths.vcmr_root / f"synthetic_{split}_release.jsonl").write_text(
                "\n".join(jsonl) + "\n"
            )
        bar.close()
    write_bigfile(collection / "FeatureData" / PRVR_FEATURE, prvr_frames)
    (paths.vcmr_root / "synthetic_video2dur_idx.json").write_text(json.dumps(video2dur))
    (paths.root / TRUTH_FILE).write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "clip_seconds": CLIP_SECONDS,
                "num_topics": cfg.num_topics,
                "splits": truth,
            }
        )
    )
    (paths.root / "corpus.json").write_text(
        json.dumps({"format_version": FORMAT_VERSION, **asdict(cfg)}, indent=2)
    )
    return paths


def load_truth(root: str | Path) -> dict:
    """The latent truth sidecar of a generated corpus (`<root>/latent_truth.json`).

    Layout: `splits.<split>.videos.<video_id>` = {duration, num_clips, events: [{span
    [st, ed] (inclusive clip indices), topic, type}]}, `splits.<split>.queries.<cap_id>` =
    {video, event (index into its video's events), topic, desc_id}.
    """
    path = Path(root) / TRUTH_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no latent truth (corpora generated before format v4 lack it; "
            "delete the cache folder to regenerate)"
        )
    return json.loads(path.read_text())


def measure_phenomena(truth: dict, split: str = "train") -> dict[str, float]:
    """How strongly the two phenomena of PRVR Fig. 1 hold in one split of a corpus.

    - `events_per_video`, `annotated_event_fraction` (events with >= 1 query / all events);
    - inter-sample correlation: `query_topic_unannotated_elsewhere` = fraction of queries whose
      topic is the topic of an unannotated event of another video of the split (a true
      pseudo-positive exists), and `pseudo_positive_videos` = mean number of such videos;
    - intra-sample redundancy: `moment_video_ratio` = mean annotated-event length / video
      length (clips), and `other_topic_fraction` = mean fraction of the query's video whose
      clips lie in events of another topic.
    """
    videos = truth["splits"][split]["videos"]
    queries = truth["splits"][split]["queries"]
    annotated: dict[str, set[int]] = {}
    for q in queries.values():
        annotated.setdefault(q["video"], set()).add(int(q["event"]))
    # topic -> videos holding an unannotated event of that topic
    unannotated_by_topic: dict[int, set[str]] = {}
    num_events = 0
    num_annotated = 0
    for vid, video in videos.items():
        marked = annotated.get(vid, set())
        num_events += len(video["events"])
        num_annotated += len(marked)
        for e, event in enumerate(video["events"]):
            if e not in marked:
                unannotated_by_topic.setdefault(int(event["topic"]), set()).add(vid)
    elsewhere, counts, ratios, other = [], [], [], []
    for q in queries.values():
        video = videos[q["video"]]
        holders = unannotated_by_topic.get(int(q["topic"]), set()) - {q["video"]}
        elsewhere.append(bool(holders))
        counts.append(len(holders))
        st, ed = video["events"][q["event"]]["span"]
        ratios.append((ed - st + 1) / video["num_clips"])
        same = sum(
            ev["span"][1] - ev["span"][0] + 1
            for ev in video["events"]
            if int(ev["topic"]) == int(q["topic"])
        )
        other.append(1.0 - same / video["num_clips"])
    return {
        "videos": float(len(videos)),
        "queries": float(len(queries)),
        "events_per_video": num_events / max(len(videos), 1),
        "annotated_event_fraction": num_annotated / max(num_events, 1),
        "query_topic_unannotated_elsewhere": float(np.mean(elsewhere)),
        "pseudo_positive_videos": float(np.mean(counts)),
        "moment_video_ratio": float(np.mean(ratios)),
        "other_topic_fraction": float(np.mean(other)),
    }


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
