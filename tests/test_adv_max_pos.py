"""`adv_max_pos` of the localizer data (SPEC §5 adversarial positives): a cap, or None = all."""

from __future__ import annotations

import pytest
import torch

from partial_relevance.data.vcmr_localizer import adversarial_span_positives
from prem_support import tiny_localizer_datamodule, write_random_rankings


@pytest.fixture(scope="module")
def ranking_file(tmp_path_factory, synthetic_cache, tiny_corpus):
    return write_random_rankings(synthetic_cache, tmp_path_factory.mktemp("rank") / "r.h5")


def _positives(dataset, index: int) -> int:
    item = dataset[index]
    return len(item["pos_spans"])


def test_none_keeps_every_positive_and_a_cap_bounds_them(synthetic_cache, ranking_file):
    every = tiny_localizer_datamodule(synthetic_cache, ranking_file, adv_max_pos=None)
    capped = tiny_localizer_datamodule(synthetic_cache, ranking_file, adv_max_pos=2)
    all_ds, cap_ds = every.train_dataset(), capped.train_dataset()
    torch.manual_seed(0)
    seen_more = False
    for index in range(len(all_ds)):
        item = all_ds[index]
        video = all_ds.corpus.video_inputs(all_ds.split.video_ids[item["videos"][0]])
        expected = adversarial_span_positives(item["span"], video.num_clips, 0.7)
        assert len(item["pos_spans"]) == len(expected)  # None: every span with IoU > 0.7
        n_cap = _positives(cap_ds, index)
        assert n_cap == min(2, len(expected))
        seen_more |= len(expected) > 2
    assert seen_more  # the tiny corpus has moments with more positives than the cap
