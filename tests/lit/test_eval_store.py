"""The evaluation store (`metrics.store.EvalRows`, torchmetrics cat states): the same rows
as the hand-written gathering it replaced, in one process and across `ddp_cpu` ranks."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.multiprocessing as mp

from partial_relevance.metrics.store import EvalRows
from partial_relevance.train import train
from support import compose_train_config
from test_launch_slow import DDP_SCRIPT, REPO, ok, run, tiny


def former_gathered(values: list[torch.Tensor], index: list[torch.Tensor]) -> torch.Tensor:
    """`PrvrLitModule._gathered` as it was (one process): concatenate, order by global
    index, drop the DistributedSampler's duplicates."""
    values_, index_ = torch.cat(values), torch.cat(index)
    order = torch.argsort(index_, stable=True)
    index_, values_ = index_[order], values_[order]
    keep = torch.ones_like(index_, dtype=torch.bool)
    keep[1:] = index_[1:] != index_[:-1]
    return values_[keep]


def test_rows_equal_the_former_gathering():
    g = torch.Generator().manual_seed(0)
    ids = [torch.tensor([4, 0, 2]), torch.tensor([1, 3, 4])]  # 4 twice (sampler padding)
    rows = [torch.randn(3, 5, generator=g) for _ in ids]
    rows[1][2] = rows[0][0]  # a padded duplicate carries the same row
    store = EvalRows()
    for i, r in zip(ids, rows, strict=True):
        store.update(i, {"x": r, "half": r.half()})
    got_ids, got = store.compute()
    assert got_ids.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(got["x"], former_gathered(rows, ids), rtol=0, atol=0)
    assert got["half"].dtype == torch.float16
    store.reset()
    assert store.is_empty()


def test_rows_of_different_lengths_are_padded_and_masks_stay_bool():
    store = EvalRows()
    store.update(torch.tensor([1]), {"clips": torch.ones(1, 2, 3), "mask": torch.ones(1, 2) > 0})
    store.update(torch.tensor([0]), {"clips": torch.ones(1, 4, 3), "mask": torch.ones(1, 4) > 0})
    _, rows = store.compute()
    assert rows["clips"].shape == (2, 4, 3) and rows["mask"].dtype == torch.bool
    assert rows["mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert rows["clips"][1, 2:].abs().sum() == 0


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    store = EvalRows()
    # Rank 0 holds ids 0, 2, 4 (length 3 clips), rank 1 ids 1, 3 and the padded duplicate 0
    # (length 5 clips): rows differ in count and in their second dim across ranks.
    ids = torch.tensor([0, 2, 4]) if rank == 0 else torch.tensor([1, 3, 0])
    length = 3 if rank == 0 else 5
    clips = ids[:, None, None].float().expand(-1, length, 2).clone()
    mask = torch.ones(len(ids), length, dtype=torch.bool)
    store.update(ids, {"clips": clips, "mask": mask})
    got_ids, rows = store.compute()
    if rank == 0:
        torch.save({"ids": got_ids, **rows}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_rows_gather_across_two_gloo_ranks(tmp_path):
    out = tmp_path / "rows.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    got = torch.load(out)
    assert got["ids"].tolist() == [0, 1, 2, 3, 4]
    assert got["clips"].shape == (5, 5, 2)
    assert got["clips"][:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # Ranks' rows padded to the longest (5): rank 0's rows are masked beyond 3.
    assert got["mask"].sum(1).tolist() == [3, 5, 3, 5, 3]


@pytest.mark.slow
def test_retriever_ddp_validation_equals_one_process(tmp_path):
    """One retriever checkpoint validated by 2 DDP processes (gloo) and by one: the same VR
    metrics (13 val videos / 39 queries: the DistributedSampler pads, EvalRows de-duplicates,
    and ranks hold videos of different clip counts)."""
    cache = tmp_path / "cache"
    overrides = [
        "experiment=prem_retriever_synthetic",
        "logger=none",
        *tiny(cache, num_val_videos=13),
        "model.net.ffn_dim=32",
        "data.eval_batch_size=4",
    ]
    out = tmp_path / "train"
    train(compose_train_config(overrides, out, cache))
    ckpt = json.loads((out / "metrics.json").read_text())["best_checkpoint"]
    script = tmp_path / "validate.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    eval_overrides = json.dumps([o for o in overrides if o != "logger=none"])
    results = {}
    for choice in ("cpu", "ddp_cpu"):
        args = [str(script), str(REPO / "conf"), str(tmp_path), ckpt, choice, eval_overrides]
        ok(run(args, REPO))
        results[choice] = json.loads((tmp_path / f"{choice}.json").read_text())
    assert (tmp_path / "ddp_cpu.world").read_text() == "2"
    assert "val/VR_SumR" in results["cpu"]
    for key, value in results["cpu"].items():
        assert results["ddp_cpu"][key] == pytest.approx(value, abs=1e-6), key
