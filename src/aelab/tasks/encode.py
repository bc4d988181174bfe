"""``encode(cfg)`` and ``decode(cfg)``: latents out of a trained model, images back out of latents.

``python src/encode.py ckpt_path=...`` writes a split's latents, labels and per-image errors to
``<run>/exports/latents-<split>.npz`` (and ``.csv`` when the code is small);
``python src/decode.py ckpt_path=... latents=<that file>`` decodes them back to images, and without
``latents=`` decodes a sweep over two latent axes. Files are plain arrays: ``np.load`` reads them
without pickle, and so does this module (a latents file from someone else is data). Encode, decode
and export compute in float32, whatever ``trainer.precision`` says.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from aelab import runs
from aelab.config import validate
from aelab.errors import ConfigError
from aelab.faults import fault_of
from aelab.files import write_atomic
from aelab.models.inference import encode_images
from aelab.report import plots

log = logging.getLogger(__name__)

EXPORT_DIR = "exports"
# a .csv beside the .npz when the code has at most this many numbers (csv=auto)
CSV_MAX_LATENT_SIZE = 64
CSV_FIRST_LATENT = "z0"


def checkpoint_tag(loaded: runs.LoadedRun) -> str:
    """``""`` for a run's ``last.ckpt``, else ``-<stem>``: what each export file name carries, so
    exports of ``best-epoch004.ckpt`` and of ``last.ckpt`` do not overwrite each other."""
    return "" if loaded.path.name == runs.LAST else f"-{loaded.path.stem}"


def write_npz(path: Path, **arrays: Any) -> None:
    """Plain arrays only: ``np.load(path)`` reads them back without pickle."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    write_atomic(path, buffer.getvalue())


def encode(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    loaded = runs.open_for(cfg)
    images, labels = loaded.datamodule.split(cfg.split)
    latents, errors = encode_images(loaded.model, images, loaded.device, loaded.batch_size)
    classes = np.array(loaded.datamodule.classes)
    out = loaded.folder(EXPORT_DIR) / f"latents-{cfg.split}{checkpoint_tag(loaded)}.npz"
    write_npz(
        out,
        latents=latents,
        labels=labels.numpy(),
        errors=errors,
        classes=classes,
        latent_shape=np.array(loaded.latent_shape),
        checkpoint=np.array(str(loaded.path)),
    )
    written = [out]
    if cfg.csv is True or (cfg.csv == "auto" and latents.shape[1] <= CSV_MAX_LATENT_SIZE):
        written.append(out.with_name(out.stem + ".csv"))
        write_atomic(written[-1], latents_csv(latents, labels.numpy(), classes, errors))
    mse = float(errors.astype(np.float64).mean()) if len(errors) else float("nan")
    print(
        f"encoded {len(latents)} {cfg.split} images of {loaded.datamodule.name} to {latents.shape[1]} numbers each "
        f"({cfg.split}/mse {mse:.5f}); written to {', '.join(map(str, written))}"
    )
    return {
        "files": [str(p) for p in written],
        "n": len(latents),
        "latent_size": latents.shape[1],
        f"{cfg.split}/mse": mse,
    }


def latents_csv(latents: np.ndarray, labels: np.ndarray, classes: np.ndarray, errors: np.ndarray) -> str:
    """One row per image: index, label, class, mse, z0, z1, ...; floats written so they read back exactly."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "label", "class", "mse", *(f"z{i}" for i in range(latents.shape[1]))])
    for i, (z, label, error) in enumerate(zip(latents, labels, errors, strict=True)):
        writer.writerow([i, int(label), classes[label], repr(float(error)), *(repr(float(v)) for v in z)])
    return text.getvalue()


def read_latents(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(N, numbers) float32 from a file ``encode`` wrote (.npz or .csv) or one like it (a .npy
    array, a .npz with an array named ``latents``); and what the file says about itself
    (``latent_shape``, ``checkpoint``) when it says it."""
    fault = fault_of(path)
    if fault is not None:
        raise ConfigError(fault.line(f"latents={path}", "pass a .npz or .csv written by src/encode.py", typed=True))
    about: dict[str, Any] = {}
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as file:
                rows = [row for row in csv.reader(file) if row]
            header = rows[0] if rows else []
            if CSV_FIRST_LATENT not in header:
                raise ValueError(f"its header has no {CSV_FIRST_LATENT} column")
            if len(rows) == 1:
                raise ValueError("it has a header but no rows")
            first = header.index(CSV_FIRST_LATENT)
            latents = np.array([[float(v) for v in row[first:]] for row in rows[1:]], dtype=np.float32)
        else:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.ndarray):  # a .npy file: the array itself
                latents = loaded.astype(np.float32)
            else:
                with loaded as arrays:
                    if "latents" not in arrays:
                        raise ValueError(f"it holds {', '.join(arrays.files) or 'nothing'}, not an array named latents")
                    latents = arrays["latents"].astype(np.float32)
                    about = {key: arrays[key].tolist() for key in ("latent_shape", "checkpoint") if key in arrays}
    except (ValueError, OSError, zipfile.BadZipFile, IndexError) as err:
        raise ConfigError(
            f"latents={path} cannot be read as latents: {err}; pass a file written by src/encode.py"
        ) from None
    if latents.ndim < 2 or not len(latents):
        raise ConfigError(f"latents={path} holds an array of shape {latents.shape}; it must be (images, numbers)")
    if not np.isfinite(latents).all():
        raise ConfigError(f"latents={path} holds NaN or infinite values; pass finite latents")
    return latents.reshape(len(latents), -1), about


def decode(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    loaded = runs.open_for(cfg)
    shape = loaded.latent_shape
    size = math.prod(shape)
    if cfg.latents is not None:
        source = Path(str(cfg.latents))
        latents, about = read_latents(source)
        stored_shape = tuple(about.get("latent_shape", ()))
        if latents.shape[1] != size or (stored_shape and stored_shape != shape):
            written = f"codes of shape {stored_shape}" if stored_shape else f"codes of {latents.shape[1]} numbers"
            raise ConfigError(
                f"latents={source} holds {written}, and this model's code has {size} numbers, shape {shape}; "
                "pass latents written by src/encode.py for this checkpoint"
            )
        if about.get("checkpoint") and Path(about["checkpoint"]).resolve() != loaded.path.resolve():
            log.warning("latents=%s were encoded by %s, not by %s", source, about["checkpoint"], loaded.path)
        name = f"decoded-{source.stem}"
        shown, columns = latents[: cfg.max_images], math.ceil(math.sqrt(min(len(latents), cfg.max_images)))
    else:
        latents = axes_sweep(loaded, list(cfg.axes), cfg.steps)
        name = f"decoded-sweep-z{cfg.axes[0]}-z{cfg.axes[1]}{checkpoint_tag(loaded)}"
        shown, columns = latents, cfg.steps  # the whole grid: max_images is for decoded files
    images = loaded.decode(latents).numpy()
    out = loaded.folder(EXPORT_DIR)
    npz, png = out / f"{name}.npz", out / f"{name}.png"
    write_npz(npz, images=images, latents=latents)
    plots.save_image_grid(images[: len(shown)], png, nrow=columns)
    files = [npz, png]
    if cfg.latents is None:
        # the same grid with the code values it was decoded from on its axes (the .png is pixel for pixel)
        axes, steps = list(cfg.axes), cfg.steps
        title = f"decoded sweep, {loaded.model.backbone} d={size}"
        figure = plots.decoded_sweep(images, latents[:steps, axes[0]], latents[::steps, axes[1]], axes, title)
        files.append(plots.FigureFiles.of(cfg).save(figure, out / f"{name}-axes"))
    print(f"decoded {len(images)} images; written to {', '.join(map(str, files))}")
    return {"files": [str(path) for path in files], "n": len(images)}


def axes_sweep(loaded: runs.LoadedRun, axes: list[int], steps: int) -> np.ndarray:
    """``steps`` x ``steps`` codes: the test latents' mean, with ``axes[0]`` varied along each row and
    ``axes[1]`` down the rows, each from its 2nd to its 98th percentile over the test split (its
    kept classes, for a one-class run: the codes the model was trained to make)."""
    size = math.prod(loaded.latent_shape)
    if max(axes) >= size:
        raise ConfigError(
            f"axes={list(axes)} is invalid: this model's code has {size} numbers (z0 to z{size - 1}); e.g. axes=[0,1]"
        )
    images, labels = loaded.datamodule.split("test")
    keep = loaded.datamodule.settings.keep_classes
    if keep is not None:
        images = images[np.isin(labels.numpy(), keep)]
    test = loaded.encode(images).flatten(1).numpy().astype(np.float64)
    low, high = np.percentile(test[:, axes], [2, 98], axis=0)
    across, down = (np.linspace(low[i], high[i], steps) for i in range(2))
    grid = np.tile(test.mean(0), (steps * steps, 1))
    grid[:, axes[0]] = np.tile(across, steps)
    grid[:, axes[1]] = np.repeat(down[::-1], steps)  # high values at the top, as on a plot
    return grid.astype(np.float32)
