"""What every command line does with a user's mistake: one line on stderr, exit status 1.

`train`, `evaluate`, `tables`, `prem_pipeline` and the converter wrap their work in
`one_line_errors()`. Bad data (`DataError`), a refused run directory (`RunRefusedError`) and a
config value of the wrong type (`ConfigError`) print as `error: <message>` and exit 1;
`HYDRA_FULL_ERROR=1` re-raises them with the full traceback. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

from partial_relevance.data.errors import DataError
from partial_relevance.run_dir import RunRefusedError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value that cannot be what its target expects (`trainer.max_epochs=abc`)."""


USER_ERRORS: tuple[type[BaseException], ...] = (DataError, RunRefusedError, ConfigError)


def full_error_requested() -> bool:
    """True when `HYDRA_FULL_ERROR=1`: errors keep their traceback."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The message of `error` on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def _in_multirun() -> bool:
    """True inside a Hydra multirun job: a failed job must not end the other jobs."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # no Hydra app around
        return False


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user error into `error: <message>` on stderr and `SystemExit(1)`.

    Inside a Hydra multirun job the error is only logged in one line and re-raised, so
    Hydra marks that job failed and the sweep goes on.
    """
    try:
        yield
    except USER_ERRORS as error:
        if full_error_requested():
            raise
        if _in_multirun():
            log.error("error: %s", one_line(error))
            raise
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def exits_on_user_error(function: F) -> F:
    """Decorator form of `one_line_errors` for a `main` (or a Hydra task) function."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Config values against their target's signature
# --------------------------------------------------------------------------------------------

_SCALARS = (bool, int, float, str)


def _accepts(annotation: Any, value: Any) -> bool | None:
    """Whether `value` fits `annotation`; None when the annotation is not a simple one."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(arg, value) for arg in typing.get_args(annotation)]
        if any(a is None for a in answers):
            return None
        return any(answers)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation in _SCALARS:
        if value is None:
            return False
        if annotation is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, annotation)
    return None


def _type_name(annotation: Any) -> str:
    """`int | None` for `Optional[int]`, `int` for `int`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _target_hints(target: str) -> dict[str, Any]:
    """Type hints of the parameters of `target` (a class's `__init__`), {} when unknown."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        function = obj.__init__ if inspect.isclass(obj) else obj
        return typing.get_type_hints(function)
    except Exception:  # an unresolvable annotation or target: nothing to check against
        return {}


def check_config_types(node: Any, where: str = "") -> None:
    """Raise ConfigError for a scalar config value whose `_target_` parameter is annotated
    with a simple type it does not fit (e.g. `trainer.max_epochs=abc`: `int | None`)."""
    if isinstance(node, ListConfig):
        for index, item in enumerate(node):
            check_config_types(item, f"{where}[{index}]")
        return
    if not isinstance(node, DictConfig):
        return
    hints = _target_hints(str(node["_target_"])) if "_target_" in node else {}
    for key in node:
        key = str(key)
        if key.startswith("_"):
            continue
        path = f"{where}.{key}" if where else key
        if node._get_node(key)._is_missing():  # type: ignore[union-attr]
            continue
        try:
            value = node[key]
        except OmegaConfBaseException as error:  # e.g. an interpolation into a removed node
            raise ConfigError(f"config {path}: {one_line(error).split(' full_key:')[0]}") from None
        if isinstance(value, (DictConfig, ListConfig)):
            check_config_types(value, path)
            continue
        if key in hints and _accepts(hints[key], value) is False:
            raise ConfigError(
                f"config {path}={value!r}: expected {_type_name(hints[key])}, "
                f"got {type(value).__name__}"
            )
