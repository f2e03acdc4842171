"""Helpers for the results notebooks (`notebooks/`): load runs, encode splits, draw figures.

Nothing here is needed to train or evaluate. matplotlib (the `notebooks` extra) is imported
inside the plotting functions only, so `import partial_relevance.viz` works without it.

- Runs: `compose_config` (a train config composed in-process, as the tests do),
  `load_run_config` (the `.hydra/config.yaml` of a finished run), `best_checkpoint`,
  `load_module` (the LightningModule of a config with a checkpoint's weights),
  `read_metrics_csv` (the CSV logger's `metrics.csv`) and `epoch_series`, `markdown_table`.
- PRVR: `encode_prvr_split` (queries, clips and video vectors of a split), `prvr_scores`
  (the Eq. 14 score matrix), `pca_2d`
  (a 2-D map by PCA: scikit-learn's t-SNE is not a dependency), `plot_embedding_map`
  (PRVR Fig. 7), `plot_ranked_lists` (PRVR Fig. 6), `plot_curves`.
- PREM: `synthetic_token_kinds` (which words of a synthetic query are visual, subtitle or
  filler words), `plot_word_weights` (ModalityPooling weights as coloured text, PREM Fig. 5).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CONF_DIR = Path(__file__).resolve().parent / "conf"  # the packaged configs (= the repo's conf/)
# The checkout this module runs from (src/ layout); None for an installed wheel.
_CHECKOUT = Path(__file__).resolve().parents[2]
REPO_DIR = _CHECKOUT if (_CHECKOUT / "pyproject.toml").exists() else None

# ------------------------------------------------------------------------------------ runs


def compose_config(
    overrides: Sequence[str],
    output_dir: str | Path,
    cache_dir: str | Path | None = None,
    config_name: str = "train",
) -> DictConfig:
    """Compose `conf/<config_name>.yaml` in-process with the run writing into `output_dir`.

    `cache_dir` (the generated synthetic corpora) defaults to the config's own.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides))
    output_dir = Path(output_dir).resolve()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(Path(cache_dir).resolve())
    return cfg


def load_run_config(run_dir: str | Path, root_dir: str | Path | None = None) -> DictConfig:
    """The config of a finished run (`<run_dir>/.hydra/config.yaml`), resolved outside Hydra.

    `paths.output_dir` becomes `run_dir`; `paths.root_dir` becomes `root_dir`, else
    `$PARTIAL_RELEVANCE_ROOT`, else the repository (the working directory for an installed
    package), so relative data paths still resolve.
    """
    run_dir = Path(run_dir).resolve()
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory of train.py?")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    root = root_dir or os.environ.get("PARTIAL_RELEVANCE_ROOT") or REPO_DIR or Path.cwd()
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.root_dir = str(Path(root).resolve())
    return cfg


def best_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint `train(cfg)` evaluated (`best_checkpoint` of metrics.json), else last."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        best = json.loads(metrics_path.read_text()).get("best_checkpoint")
        if best and Path(best).exists():
            return Path(best)
        if best and (run_dir / "checkpoints" / Path(best).name).exists():  # a moved run
            return run_dir / "checkpoints" / Path(best).name
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}")
    return last


def load_module(cfg: DictConfig, checkpoint: str | Path | None = None) -> pl.LightningModule:
    """Instantiate `cfg.model` and load a checkpoint's weights; returned in eval mode on CPU."""
    import hydra

    module = hydra.utils.instantiate(cfg.model)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    return module.eval()


def read_metrics_csv(run_dir: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Series of the CSV logger (`<run_dir>/csv/version_*/metrics.csv`, the newest version).

    Returns `{column: [(step, value), ...]}` for every column with a value; epoch-level
    columns (`*_epoch`, `val/*`) keep the logged `step` too (use `epoch_series` for epochs).
    An empty dict when the run had no CSV logger.
    """
    files = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    series: dict[str, list[tuple[float, float]]] = {}
    with open(files[-1], newline="") as handle:
        for row in csv.DictReader(handle):
            step = float(row.get("step") or "nan")
            for key, value in row.items():
                if key in ("step",) or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def epoch_series(
    series: Mapping[str, list[tuple[float, float]]], key: str
) -> list[tuple[float, float]]:
    """`[(epoch, value)]` of an epoch-level column, matched to `epoch` by step."""
    epochs = dict(series.get("epoch", []))
    return [(epochs.get(step, math.nan), value) for step, value in series.get(key, [])]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub Markdown table; floats rounded to `digits`, None as '-'."""

    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, header)) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ PRVR


@torch.no_grad()
def encode_prvr_split(
    module: pl.LightningModule, datamodule: Any, split: str = "val"
) -> dict[str, Tensor]:
    """Encode one split with a `PrvrLitModule` (eval mode, CPU).

    Returns query [Q, D], query_video [Q] (GT video index), clips [V, Tm, D], video [V, D]
    (the query-independent video vector; absent for MS-SL-style bases) and the evaluation
    index (`index/<key>`) that `net.score_queries` takes; rows in split order.
    """
    net = module.net
    videos, queries = datamodule.eval_dataloaders(split)
    out: dict[str, list[Tensor]] = {}
    video_index: list[Tensor] = []
    query_index: list[Tensor] = []
    for batch in videos:
        enc = net.encode_videos(batch["moments"], batch["frames"], batch["frame_mask"])
        video_index.append(batch["video_index"])
        out.setdefault("clips", []).append(enc.clips)
        if enc.video is not None:
            out.setdefault("video", []).append(enc.video)
        for key, value in net.index_videos(enc).items():
            out.setdefault(f"index/{key}", []).append(value)
    for batch in queries:
        query_index.append(batch["query_index"])
        out.setdefault("query", []).append(
            net.encode_queries(batch["query_tokens"], batch["query_mask"])
        )
        out.setdefault("query_video", []).append(batch["video_index"])
    # Loaders may yield items in any order (longest first): put rows back in split order.
    video_order = torch.argsort(torch.cat(video_index))
    query_order = torch.argsort(torch.cat(query_index))
    return {
        key: torch.cat(values)[query_order if key.startswith("query") else video_order]
        for key, values in out.items()
    }


def prvr_scores(module: pl.LightningModule, encoded: Mapping[str, Tensor]) -> Tensor:
    """Inference scores (PRVR Eq. 14) of every query against every video: [Q, V]."""
    index = {k.split("/", 1)[1]: v for k, v in encoded.items() if k.startswith("index/")}
    alpha = module.eval_cfg.alpha
    with torch.no_grad():
        return module.net.score_queries(encoded["query"], index, alpha)


def pca_2d(x: Tensor, seed: int = 0) -> Tensor:
    """Project rows of `x` [n, D] on their first two principal components -> [n, 2].

    `torch.pca_lowrank` with a fixed generator; each axis's sign is fixed so that its
    largest-magnitude coordinate is positive (deterministic pictures across runs).
    """
    x = x.double()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        _, _, v = torch.pca_lowrank(x, q=min(2, *x.shape), center=True, niter=6)
    finally:
        torch.random.set_rng_state(generator_state)
    points = (x - x.mean(0)) @ v[:, :2]
    signs = torch.sign(points.gather(0, points.abs().argmax(0, keepdim=True)))
    return (points * signs).float()


def plot_embedding_map(
    ax: Axes,
    queries: Tensor,
    videos: Tensor,
    query_video: Tensor,
    highlight: Sequence[int],
    moments: Tensor | None = None,
    title: str = "",
) -> None:
    """PRVR Fig. 7 as a PCA map: every query (×) and video (●) in grey, the `highlight`ed
    videos and their queries in colour; `moments` [Q, D] (each query's target moment, ▲)
    drawn for the highlighted queries. Vectors are L2-normalised before the joint PCA."""
    from matplotlib import colormaps

    parts = [queries, videos] + ([moments] if moments is not None else [])
    unit = torch.cat([torch.nn.functional.normalize(p.float(), dim=-1) for p in parts])
    points = pca_2d(unit)
    nq, nv = len(queries), len(videos)
    q2, v2 = points[:nq], points[nq : nq + nv]
    m2 = points[nq + nv :] if moments is not None else None
    ax.scatter(q2[:, 0], q2[:, 1], s=6, c="0.8", marker="x", linewidths=0.6)
    ax.scatter(v2[:, 0], v2[:, 1], s=10, c="0.7", marker="o")
    colours = colormaps["tab10"]
    for i, video in enumerate(highlight):
        colour = colours(i % 10)
        mine = (query_video == video).nonzero().flatten()
        ax.scatter(q2[mine, 0], q2[mine, 1], s=40, color=colour, marker="x", linewidths=1.5)
        ax.scatter(v2[video, 0], v2[video, 1], s=90, color=colour, marker="o", edgecolors="k")
        if m2 is not None:
            ax.scatter(m2[mine, 0], m2[mine, 1], s=40, color=colour, marker="^", edgecolors="k")
            for j in mine.tolist():
                ax.plot([q2[j, 0], m2[j, 0]], [q2[j, 1], m2[j, 1]], color=colour, lw=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_ranked_lists(
    queries: Sequence[str],
    lists: Mapping[str, Sequence[Sequence[tuple[str, float, bool]]]],
    gt_ranks: Mapping[str, Sequence[int]] | None = None,
) -> Figure:
    """PRVR Fig. 6: per query (rows) and model (columns) its top-k videos, the GT in green.

    `lists[model][i]` is query i's `[(video name, score, is_gt), ...]` best first;
    `gt_ranks[model][i]` (1-based) is printed under each list.
    """
    import matplotlib.pyplot as plt

    models = list(lists)
    k = max(len(rows) for model in models for rows in lists[model])
    fig, axes = plt.subplots(
        len(queries),
        len(models),
        figsize=(3.8 * len(models), 0.22 * (k + 3) * len(queries)),
        squeeze=False,
    )
    for i, text in enumerate(queries):
        for j, model in enumerate(models):
            ax = axes[i, j]
            ax.axis("off")
            if j == 0:
                ax.set_title(_shorten(text, 70), loc="left", fontsize=9, fontweight="bold")
            ax.text(0.0, 1.0, model, fontsize=9, style="italic", va="top", transform=ax.transAxes)
            for r, (name, score, is_gt) in enumerate(lists[model][i]):
                ax.text(
                    0.02,
                    1.0 - (r + 1) / (k + 2),
                    f"{r + 1}. {_shorten(name, 32)}  {score:.3f}" + ("  ✓ GT" if is_gt else ""),
                    fontsize=8.5,
                    va="top",
                    family="monospace",
                    color="tab:green" if is_gt else "0.15",
                    fontweight="bold" if is_gt else "normal",
                    transform=ax.transAxes,
                )
            if gt_ranks is not None:
                ax.text(
                    0.02,
                    1.0 - (k + 1) / (k + 2),
                    f"GT rank: {gt_ranks[model][i]}",
                    fontsize=8,
                    va="top",
                    color="0.4",
                    transform=ax.transAxes,
                )
    fig.tight_layout()
    return fig


def plot_curves(
    ax: Axes,
    curves: Mapping[str, Sequence[tuple[float, float]]],
    xlabel: str = "step",
    ylabel: str = "",
    hline: float | None = None,
    hline_label: str = "",
) -> None:
    """Line plot of `{label: [(x, y), ...]}` with an optional horizontal reference line."""
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="0.5", ls="--", lw=1, label=hline_label or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------------------ PREM

TOKEN_KINDS = ("v", "t", "·")  # visual word, subtitle word, filler (synthetic corpus)
_TOPIC = re.compile(r"topic (\d+)")


def synthetic_token_kinds(synthetic: Mapping[str, Any], text: str, tokens: np.ndarray) -> list[str]:
    """Which tokens of a synthetic query are visual words, subtitle words or fillers.

    The corpus generator (`data.synthetic`) draws its latent world first from its seed, so
    that world is rebuilt here: a query about topic k (named in its text) has content tokens
    that are the topic's visual view or its subtitle view (the rotated latent), mixed with
    filler tokens, all projected by the same query projection. Each token is labelled by the
    most similar of those prototypes: "v", "t" or "·" (filler). A heuristic for the figure's
    labels only (the video's own detail vector is unknown here and adds noise).
    """
    from partial_relevance.data.synthetic import SyntheticConfig, _Latent

    match = _TOPIC.search(text)
    if match is None:
        return ["?"] * len(tokens)
    cfg = SyntheticConfig(**dict(synthetic))
    world = _Latent(cfg, np.random.default_rng(cfg.seed))
    topic = world.topics[int(match.group(1))]
    protos = np.stack([topic, world.rotation @ topic, *world.fillers]) @ world.proj_query
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True).clip(1e-9)
    best = (unit @ protos.T).argmax(1)
    return [TOKEN_KINDS[min(int(b), 2)] for b in best]


def plot_word_weights(
    ax: Axes,
    words: Sequence[str],
    weights: np.ndarray,
    heads: Sequence[str] = ("visual", "subtitle"),
    cmaps: Sequence[str] = ("Reds", "Blues"),
    title: str = "",
) -> None:
    """ModalityPooling weights as coloured text (PREM Fig. 5): one row of words per head,
    each word's box shaded by its weight (`weights` [heads, N], rows sum to 1; shading is
    relative to the row's largest weight, the number under a word is its weight)."""
    from matplotlib import colormaps

    n = len(words)
    ax.set_xlim(0, max(n, 1))
    ax.set_ylim(0, len(heads))
    ax.axis("off")
    for h, head in enumerate(heads):
        y = len(heads) - 1 - h
        row = np.asarray(weights[h][:n], dtype=float)
        top = float(row.max()) if n and row.max() > 0 else 1.0
        cmap = colormaps[cmaps[h % len(cmaps)]]
        ax.text(-0.2, y + 0.5, head, ha="right", va="center", fontsize=9)
        for i, (word, w) in enumerate(zip(words, row)):
            shade = 0.85 * w / top
            ax.add_patch(_rectangle((i + 0.04, y + 0.1), 0.92, 0.8, cmap(shade), edgecolor="0.75"))
            ax.text(
                i + 0.5,
                y + 0.6,
                word,
                ha="center",
                va="center",
                fontsize=9,
                color="white" if shade > 0.55 else "black",
            )
            ax.text(
                i + 0.5,
                y + 0.25,
                f"{w:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if shade > 0.55 else "0.3",
            )
    if title:
        ax.set_title(title, loc="left", fontsize=9)


def _rectangle(xy: tuple[float, float], width: float, height: float, colour: Any, **kwargs: Any):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, facecolor=colour, **kwargs)
