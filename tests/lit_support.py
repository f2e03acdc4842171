"""The LightningModules built in tests from the model configs (`conf/model/*.yaml`, the one
source of every default), and the one golden-loss helper every golden test uses."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from support import CONF_DIR

# The data config each model config's interpolations need when composed alone.
DATA_OF_MODEL = {
    "prvr": "prvr_synthetic",
    "prvr_mssl": "prvr_synthetic",
    "prvr_gmmformer": "prvr_synthetic",
    "prem_retriever": "vcmr_synthetic",
    "prem_localizer": "vcmr_localizer_synthetic",
    "prvr_first_stage": "prvr_vcmr_synthetic",
}
NOT_SECTIONS = ("_target_", "_recursive_", "net", "optimizer")


@functools.cache
def _model_config(model: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data={DATA_OF_MODEL[model]}"])
    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def _sections(model: str) -> dict[str, Any]:
    return {k: v for k, v in _model_config(model).items() if k not in NOT_SECTIONS}


def net_arguments(model: str, **overrides: Any) -> dict[str, Any]:
    """The net's constructor arguments of `model=<model>` (its `net` section, composed from the
    config, `_target_` dropped) with `overrides` (tiny sizes, switches)."""
    net = {k: v for k, v in _model_config(model)["net"].items() if k != "_target_"}
    unknown = set(overrides) - set(net)
    if unknown:
        raise KeyError(f"model={model} net has no keys {sorted(unknown)}")
    return {**net, **overrides}


def model_sections(model: str, **overrides: Any) -> dict[str, Any]:
    """Every `__init__` argument but `net`/`optimizer` of `model=<model>`, as composed from
    the config; a dict override updates its section (`ice={"enabled": True}`), any other value
    replaces it."""
    sections = copy.deepcopy(_sections(model))
    for key, value in overrides.items():
        if key not in sections:
            raise KeyError(f"model={model} has no key {key!r}")
        if isinstance(value, Mapping):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return sections


def inference_config(**overrides: Any) -> Any:
    """`VcmrInferenceConfig` of `model=prem_localizer` (SPEC §6, composed from the config) with
    `overrides` (`k_videos=10`, `precision="bf16"`, ...)."""
    from partial_relevance.inference.vcmr import VcmrInferenceConfig

    return VcmrInferenceConfig.from_mapping(
        {**model_sections("prem_localizer")["inference"], **overrides}
    )


def model_net(model: str, **overrides: Any) -> nn.Module:
    """The net of `model=<model>` (its `net` section's class and arguments, composed from the
    config) with `overrides` (tiny sizes), e.g. `model_net("prvr_mssl", hidden_dim=16)`."""
    cls = hydra.utils.get_class(_model_config(model)["net"]["_target_"])
    return cls(**net_arguments(model, **overrides))


def bert_adamw(**overrides: Any) -> Callable[..., torch.optim.Optimizer]:
    """`BertAdamW` with `conf/model/optimizer/bert_adamw.yaml`'s values and `overrides`
    (`lr=1e-3`), as the factory a LightningModule takes: `bert_adamw(lr=1e-3)(params)`."""
    from partial_relevance.lit.optim import BertAdamW

    values = {k: v for k, v in _model_config("prvr")["optimizer"].items() if not k.startswith("_")}
    return functools.partial(BertAdamW, **{**values, **overrides})


def lit_module(
    cls: type, model: str, net: nn.Module | Mapping, optimizer: Callable | Mapping, **overrides
) -> Any:
    """`cls(net, optimizer, **config sections of model=<model> with overrides)`."""
    return cls(net, optimizer, **model_sections(model, **overrides))


def golden_losses(
    module: Any,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[dict],
    keys: Sequence[str] = ("loss",),
) -> list[list[float]]:
    """The golden-loss loop: for each batch, `training_losses`, backward, one optimiser step;
    returns the values of `keys` of every step (callers seed before calling)."""
    out = []
    for batch in batches:
        terms = module.training_losses(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        out.append([float(terms[k].detach()) for k in keys])
    return out
