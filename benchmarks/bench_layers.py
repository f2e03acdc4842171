"""Two layer-level levers, old path against new, interleaved in one process:

- one Transformer layer's self-attention: `nn.MultiheadAttention` against
  `TransformerLayer.self_attention` (`F.scaled_dot_product_attention` on the same weights);
- dropout on the FFN's hidden activations: `nn.Dropout` (CPU `F.dropout`: `bernoulli_` mask,
  float mask saved) against `models.layers.Dropout` (31-bit integer mask, bool mask saved).

Interleaved in one process (old, new, old, new, …) and reported as the fastest of `--reps`
calls of each, so that a shared host's load hits both alike: forward + backward in training
(attention dropout on: SDPA's math path) and forward in eval (its fused flash kernel), fp32 and
bf16 autocast, at the frame branch's shape (batch × 128 frames × 384, 4 heads, a quarter of the
rows padded). Prints; never asserts a timing.

    .venv/bin/python benchmarks/bench_layers.py --batch 128 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as bench
import torch

from partial_relevance.models.layers import Dropout, TransformerLayer


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
    paths = {
        "nn.MultiheadAttention": lambda: layer.attention(
            x, x, x, key_padding_mask=padding, need_weights=False
        )[0],
        "scaled_dot_product_attention": lambda: layer.self_attention(x, padding),
    }
    rows = []
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        for precision in ("fp32", "bf16"):
            best = dict.fromkeys(paths, float("inf"))
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if precision == "bf16"
                else contextlib.nullcontext()
            )
            for _ in range(args.reps + 1):  # the first round warms up
                for name, path in paths.items():
                    start = time.perf_counter()
                    with torch.set_grad_enabled(mode == "train"), autocast:
                        out = path()
                    if mode == "train":
                        out.float().sum().backward()
                    best[name] = min(best[name], time.perf_counter() - start)
            old, new = best.values()
            rows.append(
                {
                    "mode": f"attention {mode} {precision}",
                    "old ms": round(old * 1e3, 2),
                    "new ms": round(new * 1e3, 2),
                    "speed-up": round(old / new, 2),
                    "load avg": bench.load_average()[:1],
                }
            )
            print(rows[-1], flush=True)
    hidden = torch.randn(args.batch * args.length, 1536, requires_grad=True)  # FFN hidden
    dropouts = {"nn.Dropout": torch.nn.Dropout(0.15), "layers.Dropout": Dropout(0.15)}
    for precision in ("fp32", "bf16"):
        h = hidden if precision == "fp32" else hidden.detach().bfloat16().requires_grad_()
        best = dict.fromkeys(dropouts, float("inf"))
        saved = {}
        for _ in range(args.reps + 1):
            for name, module in dropouts.items():
                nbytes: list[int] = []

                def pack(t: torch.Tensor, nbytes: list[int] = nbytes) -> torch.Tensor:
                    nbytes.append(t.untyped_storage().nbytes())
                    return t

                start = time.perf_counter()
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = module(h)
                out.backward(torch.ones_like(out))
                best[name] = min(best[name], time.perf_counter() - start)
                saved[name] = sum(nbytes)
        old, new = best.values()
        rows.append(
            {
                "mode": f"dropout train {precision}",
                "old ms": round(old * 1e3, 2),
                "new ms": round(new * 1e3, 2),
                "speed-up": round(old / new, 2),
                "old saved MiB": round(saved["nn.Dropout"] / 2**20, 1),
                "new saved MiB": round(saved["layers.Dropout"] / 2**20, 1),
                "load avg": bench.load_average()[:1],
            }
        )
        print(rows[-1], flush=True)
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
