"""Chunks of consecutive batches: what one ``training_step`` call of the fast path optimises on
(and one ``validation_step`` call measures), so that Lightning's per-call work is paid once per chunk.

A chunk is a plain dict, so Lightning's batch transfer passes it through: the resident uint8
split, the chunk's positions in the epoch's order, and each batch's bounds within them, gathered
as they are optimised (``batches_in``, or the captured gather of ``aelab.fast.graphs``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from aelab.data.batches import DeviceBatchLoader, sliced_batches

IMAGES, LABELS, INDEX, BOUNDS = "images", "labels", "index", "bounds"
# batches of the epoch done once this chunk is (a resume's skipped ones included), and whether it ends the epoch
DONE, LAST = "epoch_batches_done", "last"


def batches_in(chunk: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches of a chunk, in order."""
    return sliced_batches(chunk[IMAGES], chunk[LABELS], chunk[INDEX], chunk[BOUNDS])


def steps_in(chunk: dict[str, Any]) -> int:
    return len(chunk[BOUNDS]) - 1


@dataclass(eq=False)
class Chunks:
    """A loader of the fast path (training and validation): the batches ``loader`` would give,
    ``steps`` of them per item (the last chunk of an epoch shorter). Its sampler is ``loader``'s,
    so Lightning's ``set_epoch`` reaches the shuffle."""

    loader: DeviceBatchLoader
    steps: int
    batch_sampler = None  # Lightning inspects ``batch_sampler`` on anything that has a ``sampler``

    @property
    def sampler(self) -> DeviceBatchLoader:
        return self.loader

    def __len__(self) -> int:
        return math.ceil(len(self.loader) / self.steps)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skipped = self.loader.skip_once
        order, bounds = self.loader.epoch_plan()
        for i in range(0, len(bounds) - 1, self.steps):
            chunk = bounds[i : i + self.steps + 1]
            yield {
                IMAGES: self.loader.images,
                LABELS: self.loader.labels,
                INDEX: order[chunk[0] : chunk[-1]],
                BOUNDS: tuple(b - chunk[0] for b in chunk),
                DONE: skipped + min(i + self.steps, len(bounds) - 1),
                LAST: chunk[-1] == bounds[-1],
            }
