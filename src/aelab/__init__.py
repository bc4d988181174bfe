"""aelab: autoencoders on the MNIST family with PyTorch Lightning and Hydra."""

from aelab.paths import register_resolvers

__version__ = "0.1.0"

# Before any config is composed: entry points, tests and notebooks all import aelab first.
register_resolvers()
