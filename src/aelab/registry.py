"""The classes aelab may build from stored hyperparameters, and the one builder that uses them.

A checkpoint or a run directory is data. The configs inside it name classes by ``_target_``, and
handing those to ``hydra.utils.instantiate`` would import and call whatever they say
(``os.system`` is a valid ``_target_``). Everything built from stored configs goes through
``build``, which only looks names up in ``REGISTRY`` and never imports a module.

A new backbone, datamodule or objective joins with the ``@register`` decorator on its class.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from aelab.errors import CheckpointError, ConfigError
from aelab.rules import argument_rule, message

REGISTRY: dict[str, type] = {}

# Keys Hydra gives meaning to; ``build`` honours ``_target_`` and ``_partial_``.
SPECIAL_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_"}


def register(cls: type) -> type:
    """Allow ``cls`` to be built from stored configs under its full name ``module.Class``."""
    REGISTRY[qualified_name(cls)] = cls
    return cls


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _register_torch_optimisers() -> None:
    # Configs name them by their public path (torch.optim.AdamW), not their defining module.
    for name, obj in vars(torch.optim).items():
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
            REGISTRY[f"torch.optim.{name}"] = obj
    for name, obj in vars(torch.optim.lr_scheduler).items():
        if inspect.isclass(obj) and issubclass(obj, torch.optim.lr_scheduler.LRScheduler):
            REGISTRY[f"torch.optim.lr_scheduler.{name}"] = obj


_register_torch_optimisers()


def targets(spec: Any, where: str = "") -> list[tuple[str, str]]:
    """Every ``(key path, _target_)`` inside ``spec``, nested dicts and lists included."""
    found = []
    if isinstance(spec, Mapping):
        if "_target_" in spec:
            found.append((f"{where}._target_" if where else "_target_", str(spec["_target_"])))
        for key, value in spec.items():
            found += targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(spec, (list, tuple)):
        for i, value in enumerate(spec):
            found += targets(value, f"{where}[{i}]")
    return found


def check_registered(spec: Any, source: str, where: str = "") -> None:
    """Refuse ``spec`` if any ``_target_`` in it is not a registered class. ``source`` names where
    it came from, ``where`` the key path of ``spec`` inside it."""
    for key_path, target in targets(spec, where):
        check_registered_name(target, source, key_path)


def check_registered_name(target: str, source: str, where: str) -> None:
    if target not in REGISTRY:
        raise CheckpointError(
            f"{source} is refused: its {where} names {target}, which is not one of aelab's "
            "registered classes, and aelab builds nothing else from a stored config. If it is "
            "your own class, decorate it with @aelab.registry.register in a module under "
            "src/aelab/models/ (imported with aelab), or import its module before loading"
        )


def build(spec: Mapping[str, Any], source: str = "a stored config", key: str | None = None) -> Any:
    """Build ``spec`` from registered classes only: its ``_target_`` is looked up, never imported,
    and called with the other keys (``functools.partial`` of them if ``_partial_``).

    Nested specs are passed on as plain dicts, like Hydra's ``_recursive_: false``: the class
    builds its own parts, through this function. They are checked here all the same. ``key``: the
    config key ``spec`` sits under, which messages name (by default ``source``).
    """
    check_registered(spec, source)
    if "_target_" not in spec:
        raise ConfigError(f"{source} has no _target_: it does not say what to build")
    cls = REGISTRY[str(spec["_target_"])]
    kwargs = {k: v for k, v in spec.items() if k not in SPECIAL_KEYS}
    # by the rules the class declares in its signature, as the config check does
    for name, value in kwargs.items():
        rule = argument_rule(cls, name)
        if rule is not None and not rule.accepts(value):
            raise ConfigError(message(f"{key or source}.{name}", value, rule))
    return functools.partial(cls, **kwargs) if spec.get("_partial_") else cls(**kwargs)


def import_targets(spec: Any, key: str) -> None:
    """Import the modules a *trusted* config (the user's own command line) names, so that their
    ``@register`` decorators run; then require every target to be registered."""
    for where, target in targets(spec, key):
        if target in REGISTRY:
            continue
        check_importable(where, target)
        if target not in REGISTRY:
            raise ConfigError(
                f"{where}={target} is not a registered aelab class; decorate the class with "
                "@aelab.registry.register so that checkpoints of it can be loaded safely"
            )


def check_importable(key: str, target: Any) -> None:
    module_name, _, attribute = str(target).rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"{key}={target}: cannot import {module_name or target} ({err})") from None
    if not hasattr(module, attribute):
        raise ConfigError(f"{key}={target}: {module_name} has no {attribute}")
