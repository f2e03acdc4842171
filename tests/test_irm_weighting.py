"""The weighting of IRM's InfoNCE terms (PRVR §3.4, SPEC §3): hand values, defaults, wiring.

L_neg and L_red are each triplet (Eq. 5) + `nce_weight` · InfoNCE (Eq. 6). The paper prints
no weight; SPEC §3 [decision, revised] weights them like Eq. 7's moment-level term (λ₂ = 0.04),
and 1 (the earlier unweighted reading) stays one override away
(`model.irm.neg_nce_weight`, `model.irm.red_nce_weight`).
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lit_support import bert_adamw, lit_module, model_net
from partial_relevance.lit.prvr import PrvrLitModule
from partial_relevance.losses.prvr import irm_neg_loss, irm_red_loss
from partial_relevance.tables import load_table_spec, plan_jobs, write_row_configs
from support import CONF_DIR, compose_train_config, lse

# The L_neg fixture of tests/losses/test_prvr_losses.py: two queries, two videos.
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Y = torch.tensor([0, 1])
MCOS = torch.tensor([[0.5, 0.1], [0.2, 0.4]])
MNCE = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
R_V = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
R_Q = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
# Triplet: q0 (.2 + .6 - .5) + 0 = .3, q1 0 + (.2 + .6 - .4) = .4 -> .35.
NEG_TRIP = 0.35
# InfoNCE (dot, τ = 1): rows [S_m pos; S_m other; r_v·q; r_q·q], CE on the first entry.
NEG_NCE = ((lse(1.0, 0.0, 0.6, 0.0) - 1.0) + (lse(2.0, 0.5, 0.0, 0.6) - 2.0)) / 2


@pytest.mark.parametrize("weight", [0.0, 0.04, 0.5, 1.0, 3.0])
def test_neg_nce_weight_scales_only_the_infonce(weight: float) -> None:
    loss = irm_neg_loss(R_V, R_Q, Q, MCOS, MNCE, Y, 0.2, "dot", 1.0, nce_weight=weight)
    assert loss.item() == pytest.approx(NEG_TRIP + weight * NEG_NCE, abs=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.04, 1.0])
def test_red_nce_weight_scales_only_the_infonce(weight: float) -> None:
    r_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r_v = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # cos [r_q, r_v] = [[.8, 0], [.6, 1]]; with two pairs the random negatives are forced:
    #   pair 0: T⁻ .3 + .6 - .8 = .1, V⁻ .3 + 0 - .8 -> 0; pair 1: both hinge at 0 -> .05
    trip = 0.05
    t2v = (lse(0.8, 0.0) - 0.8 + lse(0.6, 1.0) - 1.0) / 2
    v2t = (lse(0.8, 0.6) - 0.8 + lse(0.0, 1.0) - 1.0) / 2
    loss = irm_red_loss(r_v, r_q, 0.3, "dot", 1.0, "video", nce_weight=weight)
    assert loss.item() == pytest.approx(trip + weight * (t2v + v2t), abs=1e-6)


def test_config_default_and_override(tmp_path) -> None:
    cfg = compose_train_config([], tmp_path / "run", tmp_path)
    assert (cfg.model.irm.neg_nce_weight, cfg.model.irm.red_nce_weight) == (0.04, 0.04)
    assert cfg.model.ice.nce_weight == 0.04
    cfg = compose_train_config(
        ["model.irm.neg_nce_weight=1.0", "model.irm.red_nce_weight=1.0", "model.ice.nce_weight=1"],
        tmp_path / "r",
        tmp_path,
    )
    assert (cfg.model.irm.neg_nce_weight, cfg.model.irm.red_nce_weight) == (1.0, 1.0)
    assert cfg.model.ice.nce_weight == 1


def _irm_terms(neg_w: float, red_w: float) -> dict[str, torch.Tensor]:
    """Every loss term of one fixed random batch with IRM on, at the given InfoNCE weights."""
    torch.manual_seed(0)
    net = model_net("prvr", video_dim=8, query_dim=6, hidden_dim=8, dropout=0.0)
    irm = {"enabled": True, "neg_nce_weight": neg_w, "red_nce_weight": red_w}
    model = lit_module(PrvrLitModule, "prvr", net, bert_adamw(lr=1e-3), irm=irm)
    gen = torch.Generator().manual_seed(1)
    b, n = 3, 6
    batch = {
        "query_tokens": torch.randn(n, 5, 6, generator=gen),
        "query_mask": torch.ones(n, 5, dtype=torch.bool),
        "moments": torch.randn(b, 32, 8, generator=gen),
        "frames": torch.randn(b, 10, 8, generator=gen),
        "frame_mask": torch.ones(b, 10, dtype=torch.bool),
        "query_video": torch.tensor([0, 0, 1, 1, 2, 2]),
    }
    torch.manual_seed(2)  # the triplets' random negatives
    return {k: v.detach() for k, v in model.training_losses(batch).items()}


def test_lit_module_passes_each_weight_to_its_term() -> None:
    one, zero = _irm_terms(1.0, 1.0), _irm_terms(0.0, 0.0)
    neg_nce = one["L_neg"] - zero["L_neg"]
    red_nce = one["L_red"] - zero["L_red"]
    assert neg_nce > 0 and red_nce > 0  # InfoNCE terms are positive here
    mixed = _irm_terms(0.04, 0.5)
    torch.testing.assert_close(mixed["L_neg"], zero["L_neg"] + 0.04 * neg_nce)
    torch.testing.assert_close(mixed["L_red"], zero["L_red"] + 0.5 * red_nce)
    # Eq. 13 with λ₄ = 1: the base terms do not move, the total moves by the IRM terms only.
    torch.testing.assert_close(mixed["L_base"], one["L_base"])
    torch.testing.assert_close(mixed["loss"], mixed["L_base"] + mixed["L_neg"] + mixed["L_red"])


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_weighting_table_rows_compose(data: str, tmp_path) -> None:
    """experiments/prvr_irm_weighting.yaml: every row composes and sets what it says."""
    spec = load_table_spec("prvr_irm_weighting")
    jobs = plan_jobs(spec, data, [0], root=tmp_path)
    conf = write_row_configs(jobs, tmp_path / "conf")
    weights = set()
    for job in {j.key: j for j in jobs}.values():
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train", overrides=[f"hydra.searchpath=[file://{conf}]", f"+table_row={job.key}"]
            )
        for text in job.overrides:
            key, value = text.split("=", 1)
            if key != "experiment":
                assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), text
        weights.add((cfg.model.irm.neg_nce_weight, cfg.model.irm.red_nce_weight))
    assert weights == {(1.0, 1.0), (0.04, 0.04)}
