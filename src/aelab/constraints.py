"""Constraints a constructor declares on an argument, inside its type annotation:
``hidden_dims: Sequence[PositiveInt]``. The config check (``aelab.config``) reads them from the
signature, so a class's arguments are checked by what the class itself says, in one wording,
before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class AtLeast:
    min: int | float


@dataclass(frozen=True)
class AtMost:
    max: int | float


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
NonNegativeFloat = Annotated[float, AtLeast(0)]
Fraction = Annotated[float, AtLeast(0), AtMost(1)]
