"""Every use of a private API of Lightning, Hydra or torch, in one place: what each is for, why no
public API does it, and the upstream issue that would make it unnecessary. ``tests/test_upstream.py``
fails with a message naming the function here when an upgrade removes what it uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

# what Hydra calls with the function to run, and which reports what it raises
Reporter = Callable[[Callable[[], Any]], Any]


def count_optimizer_steps(optimizer: Any, steps: int) -> None:
    """Count ``steps`` optimiser steps that ran on the raw torch optimiser as Lightning's
    ``global_step`` (``optimizer``: the ``LightningOptimizer`` of ``self.optimizers()``): what
    ``LightningOptimizer.step`` does around the optimiser's own step. Lightning counts only steps
    taken through its wrapper (Lightning-AI/pytorch-lightning#16143); a CUDA graph replays many
    steps, and the wrapper costs 0.15 ms per eager step (docs/benchmarks.md)."""
    for _ in range(steps):
        optimizer._on_before_step()
        optimizer._on_after_step()


def count_logged_batches(trainer: Any, batches: int) -> None:
    """Add ``batches`` to the step Lightning gives loggers (batches that stepped). Lightning counts
    one per ``training_step`` call; a chunk of the fast path is several batches, and without this a
    CSV/MLflow/W&B step would count chunks (Lightning-AI/pytorch-lightning#17958 discusses the
    count under manual optimisation; there is no public setter)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += batches


@contextlib.contextmanager
def hydra_errors_reported_by(report: Reporter) -> Iterator[Reporter]:
    """Within the block, Hydra reports the errors of composing a config and of the task through
    ``report`` instead of printing its own block of text; yields Hydra's own reporter, for what
    ``report`` leaves to it. Hydra has no public hook for the wording of composition errors
    (hydra-ecosystem/hydra#3454 asks for concise ones)."""
    import hydra._internal.utils as hydra_utils

    hydra_report = hydra_utils.run_and_report
    hydra_utils.run_and_report = report  # type: ignore[assignment]
    try:
        yield hydra_report
    finally:
        hydra_utils.run_and_report = hydra_report
