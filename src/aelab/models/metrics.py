"""What a run logs per epoch besides the objective's terms, and how an epoch's mean is kept.

A metric to watch (logged as ``val/<name>`` and ``test/<name>``, never optimised) is one line in
``watched_metrics``: any torchmetrics ``Metric`` whose ``update`` takes (reconstructions, images),
both (N, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio


def watched_metrics() -> dict[str, Metric]:
    return {
        # over the epoch's pixels together; the data spans [-1, 1], a range of 2
        "psnr": PeakSignalNoiseRatio(data_range=2.0),
    }


class EpochMean(Metric):
    """The mean over an epoch's images of a quantity given as batch sums.

    Sums are float64: a float32 value times a batch size is exact in float64, and so is the sum of
    an epoch's worth of them while the values stay within a few thousand times of each other (the
    bound is in ``aelab.fast.graphs.chunk_sum``), so the mean is the same whatever the batch size,
    whether the batches were added one by one or a chunk at a time (aelab.fast), and across DDP
    processes (torchmetrics adds the sums and counts of every process before ``compute``).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.total: Tensor
        self.count: Tensor
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, total: Tensor, count: int) -> None:
        """``total``: the quantity summed over ``count`` images (a batch mean times its size)."""
        self.total += total.detach().double()
        self.count += count

    def compute(self) -> Tensor:
        return (self.total / self.count).float()
