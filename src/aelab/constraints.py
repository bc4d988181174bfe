"""Constraints a constructor declares on an argument, inside its type annotation:
``hidden_dims: Sequence[PositiveInt]``. The config check (``aelab.config``) reads them from the
signature, so a class's arguments are checked by what the class itself says, in one wording,
before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Bounds:
    min: int | float | None = None
    max: int | float | None = None


PositiveInt = Annotated[int, Bounds(min=1)]
NonNegativeInt = Annotated[int, Bounds(min=0)]
NonNegativeFloat = Annotated[float, Bounds(min=0)]
Fraction = Annotated[float, Bounds(min=0, max=1)]
