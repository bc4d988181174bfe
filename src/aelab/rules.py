"""Rules: what a config key or a constructor argument accepts, and the one wording of the message
for a value it does not. A class declares its arguments' rules in its signature (type annotations,
``aelab.constraints``); ``aelab.config`` adds the keys no class owns; ``aelab.registry.build``
checks a stored config's arguments by the same rules before it builds anything."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import types
import typing
from dataclasses import dataclass, replace
from typing import Any

from aelab.constraints import Bounds
from aelab.errors import hydra_value, is_int


@dataclass(frozen=True)
class Rule:
    """What one key accepts; ``allowed`` is how the error message states it."""

    null: bool = False
    # when null suits only some configs, e.g. model.latent_dim=null for model=conv
    null_note: str = ""

    def accepts(self, value: Any) -> bool:
        return (value is None and self.null) or (value is not None and self.accepts_value(value))

    def accepts_value(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @property
    def allowed(self) -> str:
        return self.describe() + (f" or null{self.null_note}" if self.null else "")


@dataclass(frozen=True)
class Int(Rule):
    # float bounds too, as a constraint may give them (an integer >= 0.5 is one >= 1)
    min: float | None = None
    max: float | None = None

    def accepts_value(self, value: Any) -> bool:
        return is_int(value) and (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.min == 1 and self.max is None:
            return "a positive integer"
        if self.min is None and self.max is None:
            return "an integer"
        if self.max is None:
            return f"an integer >= {self.min}"
        return f"an integer from {self.min} to {self.max}"


@dataclass(frozen=True)
class Number(Rule):
    """An integer or a float: ``min`` and ``max`` inclusive, ``above`` exclusive."""

    min: float | None = None
    above: float | None = None
    max: float | None = None

    def accepts_value(self, value: Any) -> bool:
        return (
            (is_int(value) or isinstance(value, float))
            and (self.min is None or value >= self.min)
            and (self.above is None or value > self.above)
            and (self.max is None or value <= self.max)
        )

    def describe(self) -> str:
        bounds = ((">=", self.min), (">", self.above), ("<=", self.max))
        return "a number" + " and".join(f" {sign} {bound:g}" for sign, bound in bounds if bound is not None)


@dataclass(frozen=True)
class OneOf(Rule):
    values: tuple = ()

    def accepts_value(self, value: Any) -> bool:
        # 1 == True in Python: a boolean option must be given as a boolean
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(hydra_value(v).strip("'") for v in self.values)


@dataclass(frozen=True)
class Flag(Rule):
    def accepts_value(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text(Rule):
    empty: bool = False  # a plain ``str`` annotation takes "" too

    def accepts_value(self, value: Any) -> bool:
        return isinstance(value, str) and (self.empty or value.strip() != "")

    def describe(self) -> str:
        return "a string" if self.empty else "a non-empty string"


@dataclass(frozen=True)
class IntList(Rule):
    length: int | None = None  # exactly this many, e.g. two latent axes

    def accepts_value(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and all(is_int(v) and v >= 0 for v in value)
            and (self.length is None or len(set(value)) == len(value) == self.length)
        )

    def describe(self) -> str:
        if self.length is not None:
            return f"a list of {self.length} different integers >= 0 (e.g. {list(range(self.length))})"
        return "a non-empty list of integers >= 0 (e.g. [3])"


@dataclass(frozen=True)
class ListOf(Rule):
    item: Rule = Number()
    length: int | None = None

    def accepts_value(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and (self.length is None or len(value) == self.length)
            and all(self.item.accepts(v) for v in value)
        )

    def describe(self) -> str:
        size = f"of {self.length} " if self.length is not None else ""
        return f"a list {size}whose items are each {self.item.allowed}"


@dataclass(frozen=True)
class TextList(Rule):
    def accepts_value(self, value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)

    def describe(self) -> str:
        return "a non-empty list of strings (e.g. ['https://mirror.example/mnist/'])"


@dataclass(frozen=True)
class Either(Rule):
    rules: tuple[Rule, ...] = ()

    def accepts_value(self, value: Any) -> bool:
        return any(rule.accepts_value(value) for rule in self.rules)

    def describe(self) -> str:
        return " or ".join(rule.describe() for rule in self.rules)


@dataclass(frozen=True)
class Group(Rule):
    """A mapping of settings: a config group (``callbacks=null`` would drop checkpoints too) or
    one entry of callbacks/logger; ``what`` says which, with an example."""

    what: str = ""

    def accepts_value(self, value: Any) -> bool:
        return isinstance(value, dict)

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Unsupported(Rule):
    reason: str = ""

    def accepts(self, value: Any) -> bool:
        return False

    def describe(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Open(Rule):
    """Checked by the class the sub-config builds (an encoder, an optimiser, a callback)."""

    def accepts(self, value: Any) -> bool:
        return True


@dataclass(frozen=True)
class Metric(Rule):
    def accepts_value(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(r"(train|val)/[A-Za-z0-9_]+", value) is not None

    def describe(self) -> str:
        return "a metric the model logs, such as val/mse"


def message(key: str, value: Any, rule: Rule) -> str:
    if isinstance(rule, Unsupported):
        return f"{key}={hydra_value(value)} is {rule.describe()}"
    return f"{key}={hydra_value(value)} is invalid: it must be {rule.allowed}"


def argument_rule(target: Any, name: str) -> Rule | None:
    """The rule the class ``target`` (or its name) declares for its argument ``name`` by its type
    annotation (``aelab.constraints``); ``None`` where it says nothing checkable (``Any``, a tensor)."""
    hints = type_hints(target)
    return annotation_rule(hints[name]) if name in hints else None


@functools.cache
def type_hints(target: Any) -> dict[str, Any]:
    """The annotations of a class's ``__init__`` or a function, ``target`` given as itself or by name."""
    from hydra.utils import get_object

    try:
        built = get_object(target) if isinstance(target, str) else target
        return typing.get_type_hints(built.__init__ if inspect.isclass(built) else built, include_extras=True)
    except Exception:  # noqa: BLE001 - not importable: reported where it is built; else nothing checkable
        return {}


def annotation_rule(annotation: Any) -> Rule | None:
    """A type annotation as a rule: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
    sequences and tuples of those, ``X | None``, and ``Annotated[..., Bounds(min=n)]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        rule = annotation_rule(args[0])
        bounds = next((m for m in args[1:] if isinstance(m, Bounds)), Bounds())
        if isinstance(rule, (Int, Number)):
            return replace(rule, min=bounds.min, max=bounds.max)
        return rule
    if origin in (typing.Union, types.UnionType):
        found = [annotation_rule(a) for a in args if a is not type(None)]
        rules = [r for r in found if r is not None]
        if not rules or len(rules) < len(found):
            return None
        one = rules[0] if len(rules) == 1 else Either(rules=tuple(rules))
        return replace(one, null=True) if type(None) in args else one
    if origin is typing.Literal:
        return OneOf(values=args)
    if origin in (list, tuple, collections.abc.Sequence):
        items = [a for a in args if a is not Ellipsis]
        item = annotation_rule(items[0]) if items else None
        if item is None:
            return None
        fixed = origin is tuple and Ellipsis not in args
        return ListOf(item=item, length=len(args) if fixed else None)
    return {bool: Flag(), int: Int(), float: Number(), str: Text(empty=True)}.get(annotation)
