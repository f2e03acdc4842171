"""Two layer-level levers, old path against new, interleaved in one process:

- one Transformer layer's self-attention: `nn.MultiheadAttention` against
  `TransformerLayer.self_attention` (`F.scaled_dot_product_attention` on the same weights);
- dropout on the FFN's hidden activations: `nn.Dropout` (CPU `F.dropout`: `bernoulli_` mask,
  float mask saved) against `models.layers.Dropout` (16-bit integer mask, bool mask saved).

Interleaved in one process (old, new, old, new, …) and reported as the fastest of `--reps`
calls of each, so that a shared host's load hits both alike: forward + backward in training
(attention dropout on: SDPA's math path) and forward in eval (its fused flash kernel), fp32 and
bf16 autocast, at the frame branch's shape (batch × 128 frames × 384, 4 heads, a quarter of the
rows padded). Prints; never asserts a timing.

    .venv/bin/python benchmarks/bench_layers.py --batch 128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as bench
import torch

from partial_relevance.models.layers import Dropout, TransformerLayer


def fastest(paths: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Each path's fastest of `reps` calls, interleaved (old, new, old, new, …) after one
    warm-up round, in seconds."""
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(reps + 1):
        for name, path in paths.items():
            start = time.perf_counter()
            path()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def speedup_row(mode: str, best: dict[str, float], **extra: object) -> dict[str, object]:
    """One printed row: the old and the new path's fastest call and their ratio."""
    old, new = best.values()
    row = {"mode": mode, "old ms": round(old * 1e3, 2), "new ms": round(new * 1e3, 2)}
    row |= {"speed-up": round(old / new, 2), **extra, "load avg": bench.load_average()[:1]}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="sequences")
    parser.add_argument("--length", type=int, default=128, help="positions a sequence")
    parser.add_argument("--reps", type=int, default=7, help="calls of each path, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-save", action="store_true", help="do not append to results.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = TransformerLayer(384, num_heads=4, dropout=0.15)
    x = torch.randn(args.batch, args.length, 384, requires_grad=True)
    padding = torch.zeros(args.batch, args.length, dtype=torch.bool)
    padding[: args.batch // 4, args.length * 3 // 4 :] = True
    attention = {
        "nn.MultiheadAttention": lambda: layer.attention(
            x, x, x, key_padding_mask=padding, need_weights=False
        )[0],
        "scaled_dot_product_attention": lambda: layer.self_attention(x, padding),
    }
    rows = []
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        for precision in ("fp32", "bf16"):

            def timed(path: Callable[[], torch.Tensor], precision: str = precision) -> Callable:
                def run() -> None:
                    with torch.set_grad_enabled(layer.training), bench.autocast(precision):
                        out = path()
                    if layer.training:
                        out.float().sum().backward()

                return run

            best = fastest({name: timed(path) for name, path in attention.items()}, args.reps)
            rows.append(speedup_row(f"attention {mode} {precision}", best))
    hidden = torch.randn(args.batch * args.length, 1536, requires_grad=True)  # FFN hidden
    dropouts = {"nn.Dropout": torch.nn.Dropout(0.15), "layers.Dropout": Dropout(0.15)}
    for precision in ("fp32", "bf16"):
        h = hidden if precision == "fp32" else hidden.detach().bfloat16().requires_grad_()
        saved: dict[str, int] = {}

        def forward_backward(
            name: str, h: torch.Tensor = h, saved: dict[str, int] = saved
        ) -> Callable[[], None]:
            def run() -> None:
                nbytes: list[int] = []

                def pack(t: torch.Tensor) -> torch.Tensor:
                    nbytes.append(t.untyped_storage().nbytes())
                    return t

                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = dropouts[name](h)
                out.backward(torch.ones_like(out))
                saved[name] = sum(nbytes)

            return run

        best = fastest({name: forward_backward(name) for name in dropouts}, args.reps)
        megabytes = {
            f"{age} saved MiB": round(saved[n] / 2**20, 1)
            for age, n in (("old", "nn.Dropout"), ("new", "layers.Dropout"))
        }
        rows.append(speedup_row(f"dropout train {precision}", best, **megabytes))
    notes = [
        f"fastest of {args.reps} interleaved calls each; train = forward + backward with "
        "attention dropout 0.15 (SDPA runs its math path), eval = forward (SDPA's flash kernel)",
        f"x: [{args.batch}, {args.length}, 384], 4 heads, a quarter of the sequences 25 % padded",
        "attention rows: old = nn.MultiheadAttention, new = F.scaled_dot_product_attention; "
        f"dropout rows: [{args.batch * args.length}, 1536] (the FFN's hidden activations), "
        "forward + backward, old = nn.Dropout, new = models.layers.Dropout (saved = bytes "
        "kept for backward)",
    ]
    params = {k: v for k, v in vars(args).items()}
    bench.record_result(
        "bench_layers", rows, bench.machine_facts(), params, notes, not args.no_save
    )


if __name__ == "__main__":
    main()
