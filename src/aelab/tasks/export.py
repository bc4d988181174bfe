"""``export(cfg)``: a trained network as ONNX files anyone can serve without aelab or PyTorch.

``python src/export.py ckpt_path=...`` writes ``<run>/exports/encoder.onnx`` (images -> latents),
``decoder.onnx`` (latents -> images) and ``autoencoder.onnx`` (images -> reconstructions), each with
a free batch size, through ``torch.onnx.export`` (the ``torch.export`` based exporter); then runs
them in onnxruntime on test images and records how far they are from PyTorch in ``export.json``.
Images are float32 (N, C, H, W) in [-1, 1] ((N, 1, 28, 28) for MNIST), i.e. ``pixels / 127.5 - 1``;
the files say so in their metadata.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from aelab import runs
from aelab.config import install_command, is_installed, validate
from aelab.errors import AelabError, ConfigError
from aelab.files import atomic_path, write_json
from aelab.models.inference import as_model_input
from aelab.tasks.encode import EXPORT_DIR, checkpoint_tag

EXPORT_EXTRA = "export"
# an exported file whose outputs are further than this from PyTorch's is refused (observed: ~3e-6)
TOLERANCE = 1e-4
# (file stem, the model's method, input name, output name)
GRAPHS = (
    ("encoder", "encode", "images", "latents"),
    ("decoder", "decode", "latents", "images"),
    ("autoencoder", "reconstruct", "images", "reconstructions"),
)


def input_note(image_shape: tuple[int, int, int]) -> str:
    """What the exported graphs take, as the files' metadata says it."""
    return f"float32 images (N, {', '.join(map(str, image_shape))}) in [-1, 1]: pixels / 127.5 - 1"


class ExportMismatch(AelabError):
    pass


class Method(torch.nn.Module):
    """One method of the model as a module's forward: a model whose objective overrides
    ``encode`` (or ``decode``) is exported as it computes, not as its submodules would."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def export(cfg: DictConfig) -> dict[str, Any]:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        if not is_installed(module):
            raise ConfigError(
                f"exporting to ONNX needs {module}, an optional extra of aelab: {install_command(EXPORT_EXTRA)}"
            )
    validate(cfg)
    loaded = runs.open_for(cfg)
    # exported and compared on the CPU, in float32: the files are the same whatever trained them
    model = loaded.model.to("cpu").float().eval()
    images, _ = loaded.datamodule.split("test")
    x = as_model_input(images[: cfg.check_images], model.image_shape)
    with torch.no_grad():
        z = model.encode(x)
    inputs = {"images": x, "latents": z}
    out = loaded.folder(EXPORT_DIR)
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):
        # their INFO lines narrate each optimisation pass
        logging.getLogger(chatty).setLevel(logging.WARNING)
    note = input_note(model.image_shape)
    result: dict[str, Any] = {"checkpoint": str(loaded.path), "input": note, "files": {}, "max_abs_diff": {}}
    for stem, method, input_name, output_name in GRAPHS:
        path = out / f"{stem}{checkpoint_tag(loaded)}.onnx"
        graph = Method(model, method)
        write_onnx(graph, inputs[input_name], path, (input_name, output_name), loaded)
        with torch.no_grad():
            expected = graph(inputs[input_name]).numpy()
        difference = float(np.abs(run_onnx(path, inputs[input_name].numpy()) - expected).max())
        if not difference <= TOLERANCE:  # NaN included
            path.unlink()
            raise ExportMismatch(
                f"{path.name}: onnxruntime's outputs differ from PyTorch's by {difference:.2e} (more than "
                f"{TOLERANCE:g}) on {len(x)} test images, so the file was removed; the model holds an "
                "operation the exporter translates differently"
            )
        result["files"][stem] = str(path)
        result["max_abs_diff"][stem] = difference
    write_json(out / f"export{checkpoint_tag(loaded)}.json", result)
    worst = max(result["max_abs_diff"].values())
    print(
        f"exported encoder, decoder and autoencoder to {out} (ONNX); onnxruntime matches PyTorch on "
        f"{len(x)} test images to {worst:.1e} (max abs diff)"
    )
    return result


def write_onnx(
    graph: Method, example: torch.Tensor, path: Path, names: tuple[str, str], loaded: runs.LoadedRun
) -> None:
    input_name, output_name = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=[output_name],
            # the batch is free; an image or a code keeps its shape
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    assert program is not None  # returned when no file is given
    latents = f"float32 latents (N, {', '.join(map(str, loaded.latent_shape))})"
    program.model.metadata_props.update(
        {
            "aelab.input": input_note(loaded.model.image_shape) if input_name == "images" else latents,
            "aelab.checkpoint": loaded.path.name,
            "aelab.run": loaded.run_dir.name,
        }
    )
    with atomic_path(path) as tmp:
        program.save(str(tmp))


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs})
    return output
