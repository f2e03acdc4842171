"""What the three LightningModules share: building the net and the optimiser from their
configs (so `load_from_checkpoint` rebuilds them), the one optimiser path, the `compile`
switch, logging of loss terms and gathering of Python objects across ranks.

The model configs (`conf/model/*.yaml`) set `_recursive_: false`: Hydra hands `net` and
`optimizer` over as configs, `save_hyperparameters` stores them in every checkpoint and
`__init__` instantiates them. A built `nn.Module` / optimiser factory is accepted too (tests,
benchmarks); such a module's checkpoint then needs them passed to `load_from_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from partial_relevance.lit.optim import optimizer_with_warmup
from partial_relevance.models.compile import compile_net

OptimizerFactory = Callable[..., torch.optim.Optimizer]
Config = TypeVar("Config")


def _plain(config: Mapping) -> dict:
    """A resolved plain-dict copy of a (Dict)Config mapping."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config)


def build_net(net: nn.Module | Mapping) -> nn.Module:
    """`net` itself, or the module its Hydra config (`_target_` + arguments) describes."""
    if isinstance(net, nn.Module):
        return net
    return hydra.utils.instantiate(_plain(net))


def build_optimizer_factory(optimizer: OptimizerFactory | Mapping) -> OptimizerFactory:
    """`optimizer` itself, or the partial its Hydra config (`_partial_: true`) describes."""
    if isinstance(optimizer, Mapping):
        return hydra.utils.instantiate(_plain(optimizer))
    return optimizer


def as_config(cls: type[Config], value: Config | Mapping, key: str) -> Config:
    """`value` as the dataclass `cls`; a mapping must hold exactly its fields (the config
    `model.<key>` is the one source of every value)."""
    if isinstance(value, cls):
        return value
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    given = dict(value)  # type: ignore[arg-type]
    unknown, missing = sorted(set(given) - names), sorted(names - set(given))
    if unknown or missing:
        raise ValueError(
            f"model.{key}: unknown keys {unknown}, missing keys {missing}; valid keys: "
            f"{sorted(names)}"
        )
    return cls(**given)


class PartialRelevanceModule(pl.LightningModule):
    """Base of the PRVR, PREM retriever and PREM localizer LightningModules."""

    def __init__(
        self,
        net: nn.Module | Mapping,
        optimizer: OptimizerFactory | Mapping,
        warmup_fraction: float | None,
        compile: bool,
    ) -> None:
        """Saves every `__init__` argument of the subclass as hyperparameters (`net` and
        `optimizer` only when given as configs) and builds `net` and the optimiser factory."""
        super().__init__()
        ignore = [
            name
            for name, value in (("net", net), ("optimizer", optimizer))
            if not isinstance(value, Mapping)
        ]
        self.save_hyperparameters(ignore=ignore, logger=False)
        # Plain containers, not DictConfig: checkpoints stay loadable with weights_only=True.
        for hparams in (self._hparams, getattr(self, "_hparams_initial", {})):
            for key, value in hparams.items():
                if OmegaConf.is_config(value):
                    hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.net = build_net(net)
        self.optimizer_factory = build_optimizer_factory(optimizer)
        self.warmup_fraction = warmup_fraction
        self.compile_encoders = compile

    # ------------------------------------------------------------------ hooks
    def configure_model(self) -> None:
        """`model.compile: true` compiles the net's encoders (`models.compile.compile_net`)."""
        if self.compile_encoders and not getattr(self, "_compiled", False):
            compile_net(self.net)
            self._compiled = True

    def configure_optimizers(self) -> Any:
        """The one optimiser path (`lit.optim.optimizer_with_warmup`): `model/optimizer`
        alone sets the optimiser and its weight decay (no decay on biases, norms,
        embeddings), with a linear warm-up / decay schedule when `warmup_fraction` is set."""
        total_steps = int(self.trainer.estimated_stepping_batches) if self._trainer else 1
        return optimizer_with_warmup(
            self, self.optimizer_factory, self.warmup_fraction, total_steps
        )

    # ------------------------------------------------------------------ logging
    def log_terms(self, terms: Mapping[str, Tensor], batch_size: int) -> None:
        """Log every loss term as `train/<name>`, per step and per epoch (`loss` on the bar)."""
        for name, value in terms.items():
            self.log(
                f"train/{name}",
                value.detach(),
                prog_bar=name == "loss",
                batch_size=batch_size,
                on_step=True,
                on_epoch=True,
            )

    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order; `[obj]` in one process."""
        if self.world_size() == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size()
        torch.distributed.all_gather_object(gathered, obj)
        return gathered
