"""The one exception family for mistakes a user can fix, and the checks that raise it.

Entry points print an ``AelabError`` as a single line and exit non-zero; anything else is a bug
and keeps its traceback.
"""

from collections.abc import Sequence
from typing import TypeGuard


class AelabError(Exception):
    """A user-fixable problem: the message names the culprit and the fix."""


class ConfigError(AelabError):
    pass


class DataError(AelabError):
    pass


class CheckpointError(AelabError):
    pass


def is_int(value: object) -> TypeGuard[int]:
    """True for integers, False for floats, text and booleans (``True == 1`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: object) -> bool:
    return is_int(value) and value >= 1


def hydra_value(value: object) -> str:
    """``value`` as it is typed on a Hydra command line: ``null``, ``true``, ``'text'``, ``3``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def check_choice(
    key: str, value: object, choices: Sequence[str], *, optional: bool = False, example: str | None = None
) -> None:
    """The one wording for "``key`` must be one of these names" where a class checks its own argument."""
    if (value is None and optional) or (isinstance(value, str) and value in choices):
        return
    allowed = ("null or " if optional else "") + "one of " + ", ".join(choices)
    fix = f", e.g. {key}={example}" if example is not None else ""
    raise ConfigError(f"{key}={hydra_value(value)} is invalid: it must be {allowed}{fix}")


def check_positive_int(key: str, value: object, *, optional: bool = False, context: str = "") -> None:
    """The one wording for "``key`` must be a positive integer" wherever it is checked."""
    if value is None and optional:
        return
    if not is_positive_int(value):
        allowed = "a positive integer" + (" or null" if optional else "")
        raise ConfigError(f"{key}={hydra_value(value)} is invalid{context}: it must be {allowed}")
