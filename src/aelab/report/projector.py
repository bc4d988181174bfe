"""Latents into TensorBoard's PROJECTOR, each embedding named for what it holds.

torch's ``SummaryWriter.add_embedding`` rewrites ``projector_config.pbtxt`` with the embeddings of
its own writer only, so analyze's test latents would vanish when the audit adds its own; this keeps
the embeddings other tasks wrote there and replaces only one of the same name.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aelab.files import write_atomic

log = logging.getLogger(__name__)

CONFIG_FILE = "projector_config.pbtxt"


def _square(images: Tensor) -> Tensor:
    """(N, C, H, W) padded with black to (N, C, S, S), S the longer side, the image in the middle:
    the projector's sprite (torch's ``make_sprite``) tiles square thumbnails only."""
    height, width = images.shape[-2:]
    side = max(height, width)
    across, down = side - width, side - height
    return torch.nn.functional.pad(images, (across // 2, across - across // 2, down // 2, down - down // 2))


def add_embedding(
    log_dir: Path, tag: str, name: str, latents: Tensor, images: Tensor, columns: dict[str, Sequence[object]]
) -> None:
    """``latents`` (N, D) shown as ``name``, each point with its image (uint8, (N, C, H, W), any H and W) and the
    metadata ``columns`` (a single column is written without a header, as TensorBoard expects).
    ``tag`` names the embedding's folder, ``<log_dir>/00000/<tag>``."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
    from torch.utils.tensorboard import SummaryWriter

    path = log_dir / CONFIG_FILE
    config = ProjectorConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, text_format.ParseError) as err:
        log.warning("%s could not be read (%s): the projector will list only %r", path, err, name)
        config = ProjectorConfig()
    # torch warns on stdout when the embedding's folder (global step 0) exists: a re-run replaces it
    shutil.rmtree(log_dir / "00000" / tag, ignore_errors=True)
    metadata: list[Any]
    if len(columns) == 1:
        metadata, header = [str(v) for v in next(iter(columns.values()))], None
    else:
        metadata, header = [list(row) for row in zip(*columns.values(), strict=True)], list(columns)
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_embedding(
            latents, metadata=metadata, metadata_header=header, label_img=_square(images.float() / 255), tag=tag
        )
    written = text_format.Parse(path.read_text(), ProjectorConfig())
    (embedding,) = written.embeddings
    embedding.tensor_name = name
    kept = [e for e in config.embeddings if e.tensor_name != name and e.tensor_path != embedding.tensor_path]
    merged = ProjectorConfig(embeddings=[*kept, embedding])
    write_atomic(path, text_format.MessageToString(merged))
