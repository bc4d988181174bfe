"""The one exception family for mistakes a user can fix.

Entry points print an ``AelabError`` as a single line and exit non-zero; anything else is a bug
and keeps its traceback.
"""


class AelabError(Exception):
    """A user-fixable problem: the message names the culprit and the fix."""


class ConfigError(AelabError):
    pass


class DataError(AelabError):
    pass


class CheckpointError(AelabError):
    pass


def is_positive_int(value: object) -> bool:
    """True for 1, 2, ...; False for 0, negatives, floats, text and booleans (``True == 1``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
