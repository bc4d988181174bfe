"""The one exception family for mistakes a user can fix, and the two helpers its messages share.

Entry points print an ``AelabError`` as a single line and exit non-zero; anything else is a bug
and keeps its traceback.
"""

from typing import TypeGuard


class AelabError(Exception):
    """A user-fixable problem: the message names the culprit and the fix."""


class ConfigError(AelabError):
    pass


class DataError(AelabError):
    pass


class CheckpointError(AelabError):
    pass


class ObjectiveError(AelabError):
    """An objective (``aelab.models.objectives``) that breaks its contract."""


class NonFiniteLossError(AelabError):
    pass


def is_int(value: object) -> TypeGuard[int]:
    """True for integers, False for floats, text and booleans (``True == 1`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def hydra_value(value: object) -> str:
    """``value`` as it is typed on a Hydra command line: ``null``, ``true``, ``'text'``, ``3``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)
