"""The one optimiser path (`lit.optim.optimizer_with_warmup`, configured only by
`conf/model/optimizer/*`) for every LightningModule."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from support import compose_train_config

TINY_NETS = {
    "prvr": {"video_dim": 8, "query_dim": 8, "hidden_dim": 8},
    "prem_retriever": {"visual_dim": 8, "subtitle_dim": 8, "query_dim": 8, "hidden_dim": 8},
    "prem_localizer": {"visual_dim": 8, "subtitle_dim": 8, "query_dim": 8, "hidden_dim": 8},
}
DATA = {"prvr": "prvr_synthetic", "prem_retriever": "vcmr_synthetic"}
DATA["prem_localizer"] = "vcmr_localizer_synthetic"


def configured_optimizer(tmp_path, model: str, optimizer: str) -> tuple:
    overrides = [f"model={model}", f"data={DATA[model]}", f"model/optimizer={optimizer}"]
    cfg = compose_train_config(overrides, tmp_path / "run", tmp_path)
    lit = instantiate(cfg.model, net=TINY_NETS[model])
    out = lit.configure_optimizers()
    return lit, out["optimizer"] if isinstance(out, dict) else out


@pytest.mark.parametrize("model", sorted(TINY_NETS))
def test_plain_adam_has_no_weight_decay(tmp_path, model):
    """`model/optimizer=adam` is the plain Adam the PRVR paper names: no decay in any group
    (PRVR used to apply `model.weight_decay` = 0.01 to every group, issue #20)."""
    lit, optimizer = configured_optimizer(tmp_path, model, "adam")
    assert type(optimizer) is torch.optim.Adam
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(lit.parameters()))


def test_bert_adamw_has_the_spec_groups(tmp_path):
    """SPEC §3: weight decay 0.01 except on biases and LayerNorm weights."""
    lit, optimizer = configured_optimizer(tmp_path, "prvr", "bert_adamw")
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in lit.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    for name in names.values():
        is_layer_norm = isinstance(lit.get_submodule(name.rsplit(".", 1)[0]), torch.nn.LayerNorm)
        if name.endswith("bias") or is_layer_norm:
            assert name in exempt, name
    assert decayed | exempt == set(names.values())
    assert (optimizer.defaults["eps"], optimizer.defaults["max_grad_norm"]) == (1e-6, 1.0)
