"""The LightningModules built in tests from the model configs (`conf/model/*.yaml`, the one
source of every default), and the one golden-loss helper every golden test uses."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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
def _sections(model: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data={DATA_OF_MODEL[model]}"])
    return {
        key: OmegaConf.to_container(cfg.model[key], resolve=True)
        if OmegaConf.is_config(cfg.model[key])
        else cfg.model[key]
        for key in cfg.model
        if key not in NOT_SECTIONS
    }


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
