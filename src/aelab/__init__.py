"""aelab: autoencoders on the MNIST family with PyTorch Lightning and Hydra.

In a notebook::

    import aelab
    run = aelab.load("last")                  # or a run directory, or a .ckpt file
    images, labels = run.datamodule.split("test")
    z = run.encode(images)                    # uint8 pixels in, latents out
    x = run.decode(z)                         # images in [-1, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aelab.paths import register_resolvers

if TYPE_CHECKING:
    from pathlib import Path

    from aelab.runs import LoadedRun

__version__ = "0.1.0"

# Before any config is composed: entry points, tests and notebooks all import aelab first.
register_resolvers()


def load(source: str | Path = "last", device: str = "cpu") -> LoadedRun:
    """A trained run, model and datamodule, rebuilt from its checkpoint (``aelab.runs.open_run``,
    which every task uses too)."""
    # imported here: `import aelab` stays light for --help and tab completion
    from aelab.runs import open_run

    return open_run(source, device)
