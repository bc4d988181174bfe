"""``audit(cfg)``: use a trained run's latent space on its own data: suspect labels, outliers, and
the training images most like a few test images.

Both official splits are encoded once and form the pool every score is computed over (an image is
never its own neighbour or in its own training fold); the rows written are the audited split's
(``split=test|train|all``), ranked most suspect first, with ``index`` the image's position in its
official file. Writes ``audit/`` in the run (the CSVs, figures and ``audit.json``), and the figures
and a projector embedding, with the suspect score and suggested class as metadata, into the run's
TensorBoard folder. The methods and why each default is the default: ``aelab.report.audit`` and the
docs/audit.md.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from aelab import runs
from aelab.config import AUDIT_SPLIT, device_of, validate
from aelab.data import normalize
from aelab.errors import ConfigError, hydra_value
from aelab.files import atomic_path, write_json
from aelab.models.inference import encode_images
from aelab.quiet import quiet_known_warnings
from aelab.report import audit as methods
from aelab.report import plots
from aelab.report.tables import key_values
from aelab.tasks.analyze import stage, write_tensorboard

AUDIT_DIR = "audit"
SUSPECT_COLUMNS = ("split", "index", "label", "suggested", "score")
OUTLIER_COLUMNS = ("split", "index", "label", "score")
SPLITS = ("train", "test")
# rows of the neighbours figure
MAX_QUERIES = 32
# the projector's sprite holds one thumbnail per point: a larger audited split is sampled to this
PROJECTOR_POINTS = 10000


def audit(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg, {"split": AUDIT_SPLIT})
    quiet_known_warnings()
    device = device_of(cfg)
    loaded = runs.open_for(cfg)
    # the official files whatever data.keep_classes and data.val_size took from them for training
    data = loaded.datamodule
    classes = data.classes
    seed, k = int(cfg.seed), int(cfg.knn_k)
    files = {name: data.official_split(name) for name in SPLITS}
    images = torch.cat([files[name][0] for name in SPLITS])
    labels = torch.cat([files[name][1] for name in SPLITS]).numpy()
    split_of = np.repeat(np.array(SPLITS), [len(files[name][0]) for name in SPLITS])
    index = np.concatenate([np.arange(len(files[name][0])) for name in SPLITS])
    n_train = len(files["train"][0])
    queries = _queries(cfg.queries, files["test"][1].numpy(), data.name)
    if len(np.unique(labels)) < 2:
        raise ConfigError(
            f"{loaded.path}: every image of {data.name} is in class {classes[int(labels[0])]!r}, so no label can "
            "be suspect; audit a run of labelled data (e.g. one trained with data=mnist)"
        )
    if k >= len(images):
        raise ConfigError(
            f"knn_k={k} is invalid for {data.name}: its {len(images)} images have at most {len(images) - 1} "
            f"neighbours each; e.g. knn_k={min(10, len(images) - 1)}"
        )
    if cfg.neighbours > n_train:
        raise ConfigError(
            f"neighbours={cfg.neighbours} is invalid for {data.name}: its training split holds {n_train} images; "
            f"e.g. neighbours={min(8, n_train)}"
        )

    with stage(f"encoding {len(images)} images ({' + '.join(SPLITS)}) on {device}"):
        codes, errors = encode_images(loaded.model, images, device, data.settings.batch_size)
    runs.require_finite(loaded.path, "its codes", codes, errors)
    pool = methods.CodeIndex(codes)
    with stage(f"suspect labels: {cfg.suspect_method}, k={k}"):
        suspects = methods.suspect_labels(str(cfg.suspect_method), pool, labels, len(classes), k, seed)
    # the other score is ranked too, for the figure: where the two agree, an image is odd both ways
    other_method = next(m for m in methods.OUTLIER_METHODS if m != cfg.outlier_method)
    with stage(f"outliers: {cfg.outlier_method}, and {other_method} beside it"):
        outlier_score = methods.outlier_scores(str(cfg.outlier_method), pool, errors, k)
        other_score = methods.outlier_scores(other_method, pool, errors, k)
    with stage(f"neighbours of {len(queries)} test images"):
        train = split_of == "train"
        by_code, _ = methods.CodeIndex(codes[train]).query(codes[~train][queries], cfg.neighbours)
        pixels = images.flatten(1).float().numpy()
        by_pixels, _ = methods.CodeIndex(pixels[train]).query(pixels[~train][queries], cfg.neighbours)

    audited = np.flatnonzero(split_of == cfg.split) if cfg.split != "all" else np.arange(len(images))
    suspect_order = audited[methods.ranking(suspects.score[audited])]
    outlier_order = audited[methods.ranking(outlier_score[audited])]
    other_order = audited[methods.ranking(other_score[audited])]
    out = loaded.folder(AUDIT_DIR)
    _write_csv(
        out / "suspect_labels.csv",
        SUSPECT_COLUMNS,
        ((split_of[i], index[i], labels[i], suspects.suggested[i], f"{suspects.score[i]:.6f}") for i in suspect_order),
    )
    _write_csv(
        out / "outliers.csv",
        OUTLIER_COLUMNS,
        ((split_of[i], index[i], labels[i], f"{outlier_score[i]:.6f}") for i in outlier_order),
    )

    top, title = int(cfg.top), f"{loaded.model.backbone} d={loaded.model.latent_size} ({data.name})"
    train_positions, test_positions = np.flatnonzero(train), np.flatnonzero(~train)

    def pixels_of(positions: np.ndarray) -> np.ndarray:
        """The images at these pool positions in [-1, 1], shaped as the positions, (..., C, H, W):
        only the few a figure shows (all 70,000 as floats would be 220 MB)."""
        shown = normalize(images[torch.as_tensor(positions.reshape(-1))]).numpy()
        return shown.reshape(*positions.shape, *shown.shape[1:])

    def section(heading: str, order: np.ndarray, suggested: bool = False) -> tuple[str, np.ndarray, list[str]]:
        """The first ``top`` images of ``order``, captioned with where each is and its class (-> the suggested)."""
        shown = order[:top]
        captions = [f"{split_of[i]} {index[i]}\n{classes[labels[i]]}" for i in shown]
        if suggested:
            captions = [f"{text} -> {classes[suspects.suggested[i]]}" for text, i in zip(captions, shown, strict=True)]
        return heading, pixels_of(shown), captions

    figures = {
        "suspect_labels": plots.captioned_images(
            [section("", suspect_order, suggested=True)],
            f"most suspect labels ({cfg.split}): given -> suggested, {title}",
        ),
        "outliers": plots.captioned_images(
            [section(f"by {cfg.outlier_method}", outlier_order), section(f"by {other_method}", other_order)],
            f"least like the rest ({cfg.split}), {title}",
        ),
        "neighbours": plots.neighbour_rows(
            pixels_of(test_positions[queries]),
            [
                ("by code", pixels_of(train_positions[by_code]), labels[train_positions[by_code]]),
                ("by pixels", pixels_of(train_positions[by_pixels]), labels[train_positions[by_pixels]]),
            ],
            classes,
            f"nearest training images to test images, {title}",
        ),
    }
    both = len(set(outlier_order[:top].tolist()) & set(other_order[:top].tolist()))
    result: dict[str, Any] = {
        "checkpoint": str(loaded.path),
        "data": data.name,
        "split": str(cfg.split),
        "images_audited": len(audited),
        "pool": len(images),
        "suspect_method": str(cfg.suspect_method),
        "outlier_method": str(cfg.outlier_method),
        "knn_k": k,
        # confident learning's estimate of how many of the audited labels are wrong
        "labels_flagged": int(suspects.flagged[audited].sum()),
        # of the top outliers (as many as the figure shows), how many the other score also ranks there
        "outliers_top": top,
        "outliers_top_in_both": both,
        "queries": queries.tolist(),
        "neighbours": {
            int(q): {"by_code": train_positions[row].tolist(), "by_pixels": train_positions[pixel].tolist()}
            for q, row, pixel in zip(queries, by_code, by_pixels, strict=True)
        },
    }
    write_json(out / "audit.json", result)
    for name, fig in figures.items():
        plots.FigureFiles.of(cfg).save(fig, out / name)
    with stage("TensorBoard: figures and projector"):
        sampled = audited
        if len(sampled) > PROJECTOR_POINTS:
            sampled = np.sort(np.random.default_rng(seed).choice(audited, PROJECTOR_POINTS, replace=False))
        metadata = {
            "label": [classes[labels[i]] for i in sampled],
            "suggested": [classes[suspects.suggested[i]] for i in sampled],
            "suspect_score": [f"{suspects.score[i]:.4f}" for i in sampled],
        }
        embedding = ("audit_latents", f"audited latents, {title}", codes[sampled], images[sampled], metadata)
        write_tensorboard(loaded.events, {f"audit_{name}": fig for name, fig in figures.items()}, embedding)
    shown = {
        f"{split_of[i]} {index[i]}": f"given {classes[labels[i]]}, suggested {classes[suspects.suggested[i]]}, "
        f"score {suspects.score[i]:.3f}"
        for i in suspect_order[:5]
    }
    print(key_values(f"audit of {loaded.path} ({title}), the most suspect {cfg.split} labels:", shown))
    print(
        f"confident learning flags {result['labels_flagged']} of the {len(audited)} labels; "
        f"outliers by {cfg.outlier_method}: {', '.join(f'{split_of[i]} {index[i]}' for i in outlier_order[:5])}"
    )
    print(f"written to {out}")
    return result


def _queries(queries: Any, test_labels: np.ndarray, data: str) -> np.ndarray:
    """The test images the neighbours figure shows: ``queries`` (a list of ints: the schema checked it),
    or the first test image of each class."""
    if queries is None:
        return np.array([int(np.flatnonzero(test_labels == c)[0]) for c in np.unique(test_labels)])
    chosen = list(dict.fromkeys(int(q) for q in queries))  # each once, in the order given
    n_test = len(test_labels)
    if len(chosen) > MAX_QUERIES:
        raise ConfigError(
            f"queries={hydra_value(list(queries))} is invalid: the neighbours figure shows at most {MAX_QUERIES} query "
            f"images (one per row); give fewer, e.g. queries=[0,1,2]"
        )
    beyond = [q for q in chosen if q >= n_test]
    if beyond:
        raise ConfigError(
            f"queries={hydra_value(chosen)} is invalid: {beyond[0]} is beyond the {n_test} images of the {data} test "
            f"split; give test-split indices 0-{n_test - 1}, e.g. queries=[0,1,2]"
        )
    return np.array(chosen, dtype=np.int64)


def _write_csv(path: Path, columns: Sequence[str], rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
