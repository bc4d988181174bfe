"""Models: plain ``nn.Module`` backbones and the LightningModule that trains them.

Every module in this package is imported with it, so a new backbone or objective is one file here
(its classes decorated with ``@aelab.registry.register``) plus one ``configs/model/*.yaml``:
checkpoints of it then load anywhere aelab does, with nothing else to edit.
"""

import importlib
import pkgutil

from aelab.models.autoencoder import AutoEncoder
from aelab.models.backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["AutoEncoder", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder"]
