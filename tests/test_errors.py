"""Bad input and faults: each gives one clear message, a non-zero exit, and loses nothing."""

import copy
import functools
import json
import os
import pickle
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from aelab.data.datasets import SPLIT_FILES
from aelab.data.idx import parse_idx, write_idx
from aelab.errors import CheckpointError, ConfigError, DataError
from aelab.runs import load_checkpoint, open_run

from conftest import QUIET, REPO, compose_train, make_tiny_dataset, run_cli, start_cli

TESTS = Path(__file__).parent


def corrupt(root: Path, kind: str) -> Path:
    """tiny MNIST under ``root`` broken in one way."""
    make_tiny_dataset(root)
    raw = root / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    labels = raw / "train-labels-idx1-ubyte"
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif kind == "magic":
        data = bytearray(images.read_bytes())
        data[2] = 0x0D
        images.write_bytes(bytes(data))
    elif kind == "dims":
        write_idx(images, np.zeros((96, 28, 27), np.uint8))
    elif kind == "count":
        write_idx(labels, np.zeros(95, np.uint8))
    elif kind == "labels":
        write_idx(labels, np.full(96, 10, np.uint8))
    elif kind == "gzip":
        images.unlink()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    elif kind == "missing":
        labels.unlink()
    elif kind == "directory":
        images.unlink()
        images.mkdir()
    elif kind == "loop":
        labels.unlink()
        labels.symlink_to(labels.name)
    elif kind == "empty":
        images.write_bytes(b"")
    elif kind in ("no training images", "no test images"):
        images_file, labels_file = SPLIT_FILES["train" if "training" in kind else "test"]
        write_idx(raw / images_file, np.zeros((0, 28, 28), np.uint8))
        write_idx(raw / labels_file, np.zeros(0, np.uint8))
    elif kind == "unlabelled":  # readable, but every image of both splits in class 0
        write_idx(labels, np.zeros(96, np.uint8))
        write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(40, np.uint8))
    return root


def own_data(root: Path, kind: str) -> str:
    """A folder of images (data.root=) or an array file (data.path=) under ``root``, broken in one way."""
    from PIL import Image

    root.mkdir()
    if kind == "no images":
        (root / "a").mkdir()
        (root / "a" / "notes.txt").write_text("not an image\n")
        return f"data.root={root}"
    if kind == "raw member":  # a zip whose images.npy is not a .npy file
        with zipfile.ZipFile(root / "images.npz", "w") as archive:
            archive.writestr("images.npy", b"not an array")
        return f"data.path={root / 'images.npz'}"
    if kind in ("mixed sizes", "corrupt image", "empty image", "loose image", "empty class", "dangling link"):
        # four images of two classes, one of them 30x40 where the others are 32x32
        for name, size in (("a/0", 32), ("a/1", 32), ("b/0", 32), ("b/1", 30 if kind == "mixed sizes" else 32)):
            (root / name).parent.mkdir(exist_ok=True)
            Image.fromarray(np.full((size, 40 if size == 30 else 32, 3), 90, np.uint8)).save(root / f"{name}.png")
        if kind == "corrupt image":
            (root / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        elif kind == "empty image":
            (root / "b" / "1.png").write_bytes(b"")
        elif kind == "loose image":
            shutil.copy(root / "a" / "0.png", root / "loose.png")
        elif kind == "empty class":
            (root / "c").mkdir()
        elif kind == "dangling link":
            (root / "b" / "1.png").unlink()
            (root / "b" / "1.png").symlink_to(root / "gone.png")
        return f"data.root={root}"
    images, labels = np.zeros((6, 8, 8), np.uint8), np.arange(6) % 2
    arrays = {
        "floats": {"images": images.astype(np.float32)},
        "no images array": {"x": images},
        "negative labels": {"images": images, "labels": labels - 1},
        "five dimensions": {"images": images.reshape(6, 1, 1, 8, 8)},
        "labels 0-2": {"images": images, "labels": np.arange(6) % 3},
        "grey 8x8": {"images": images, "labels": labels},
        "huge labels": {"images": images, "labels": np.array([0, 1, 0, 1, 0, 10**9])},
        "text labels": {"images": images, "labels": np.array(["cat", "dog"] * 3)},
        "zero side": {"images": np.zeros((6, 0, 5), np.uint8)},
    }[kind]
    np.savez(root / "images.npz", **arrays)
    return f"data.path={root / 'images.npz'}"


class Evil:
    """Pickles into a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny MLP run (latent_dim=3) whose checkpoints the table reuses."""
    root = tmp_path_factory.mktemp("trained")
    data = make_tiny_dataset(root / "data")
    result = run_cli(
        "train.py", "trainer.max_epochs=1", f"paths.log_dir={root / 'logs'}", QUIET, env={"AELAB_DATA_DIR": str(data)}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (root / "logs" / "train" / "runs").iterdir()
    return run / "checkpoints" / "last.ckpt"


def run_printed(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A command aelab printed, split into words as a shell splits it (POSIX quoting, the only
    shell syntax aelab prints) and run from the repository root: ``python`` is the project's."""
    program, *args = shlex.split(command)
    assert program == "python" or program.startswith("aelab-"), command
    return run_cli(*args, env=env) if program == "python" else run_cli(program, *args, env=env)


def newest_summary(log_dir: Path) -> dict:
    """The summary of the newest training run under ``log_dir``."""
    newest = sorted((log_dir / "train" / "runs").iterdir())[-1]
    return json.loads((newest / "run_summary.json").read_text())


def bad_checkpoint(tmp: Path, kind: str, trained: Path) -> Path:
    path = tmp / f"{kind}.ckpt"
    if kind == "malicious":
        torch.save({"state_dict": {}, "hyper_parameters": Evil(tmp / "pwned")}, path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 2)
    elif kind == "text":
        path.write_text("this is not a checkpoint\n" * 20)
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif kind == "trained":
        return trained
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind in ("a weight missing", "a weight of another shape", "a weight of another dtype"):
        # a real checkpoint whose weights no longer fit the model it describes
        checkpoint = torch.load(trained, weights_only=True)
        name = sorted(checkpoint["state_dict"])[0]
        if kind == "a weight missing":
            del checkpoint["state_dict"][name]
        elif kind == "a weight of another dtype":
            checkpoint["state_dict"][name] = checkpoint["state_dict"][name].double()
        else:
            checkpoint["state_dict"][name] = torch.zeros(3, 3)
        torch.save(checkpoint, path)
    elif kind.startswith("overrides:"):
        # a real checkpoint whose stored command-line overrides were rewritten
        checkpoint = torch.load(trained, weights_only=True)
        checkpoint["aelab_overrides"] = [kind.split(":", 1)[1].replace("{tmp}", str(tmp))]
        torch.save(checkpoint, tmp / "overrides.ckpt")
        return tmp / "overrides.ckpt"
    return path


# The single list of bad inputs: name -> (entry point, arguments, what the one line must say).
# In the arguments "$NAME=value" sets an environment variable, "@kind" breaks the data (see
# ``corrupt``), "#kind" passes a bad checkpoint as ckpt_path (see ``bad_checkpoint``), "{tmp}" is
# the test's own directory and {tmp}/a_file a file. Every row must end with exit code 2, one
# "aelab: error:" line on stderr, no traceback, and nothing written outside the log root.
POSITIVE = "it must be a positive integer"
PRECISIONS = "it must be one of 32-true, 32, bf16-mixed, 16-mixed"
CASES = {
    # model
    "latent_dim zero": ("train", ["model.latent_dim=0"], "model.latent_dim=0 is invalid: " + POSITIVE),
    "latent_dim negative": ("train", ["model.latent_dim=-4"], "model.latent_dim=-4 is invalid: " + POSITIVE),
    "latent_dim float": ("train", ["model.latent_dim=2.5"], "model.latent_dim=2.5 is invalid: " + POSITIVE),
    "latent_dim text": ("train", ["model.latent_dim=abc"], "model.latent_dim='abc' is invalid: " + POSITIVE),
    "latent_dim boolean": ("train", ["model.latent_dim=true"], "model.latent_dim=true is invalid: " + POSITIVE),
    "latent_dim null for mlp": (
        "train",
        ["model.latent_dim=null"],
        "model.latent_dim=null is invalid for model.encoder.latent_dim: it must be a positive integer",
    ),
    "unknown compile mode": (
        "train",
        ["model.compile=sometimes"],
        "model.compile='sometimes' is invalid: it must be one of false, true, default, reduce-overhead, max-autotune",
    ),
    "compile as a number": ("train", ["model.compile=1"], "model.compile=1 is invalid: it must be one of false"),
    "negative learning rate": (
        "train",
        ["model.optimizer.lr=-1"],
        "model.optimizer.lr=-1 is invalid: it must be a number > 0",
    ),
    "zero learning rate": (
        "train",
        ["model.optimizer.lr=0"],
        "model.optimizer.lr=0 is invalid: it must be a number > 0",
    ),
    "learning rate as text": ("train", ["model.optimizer.lr=fast"], "model.optimizer.lr='fast' is invalid"),
    "negative weight decay": (
        "train",
        ["model.optimizer.weight_decay=-0.1"],
        "model.optimizer.weight_decay=-0.1 is invalid: it must be a number >= 0",
    ),
    "fused as text": (
        "train",
        ["model.optimizer.fused=yes"],
        "model.optimizer.fused='yes' is invalid: it must be true or false",
    ),
    "unknown objective": ("train", ["objective=gan"], "objective=gan"),
    "vae on the conv map": (
        "train",
        ["model=conv", "objective=vae"],
        "model.latent_dim=null is invalid for objective=vae: its Gaussian code is a vector of model.latent_dim "
        "numbers (model=conv's default is its 64x2x2 map); set one, e.g. model.latent_dim=16",
    ),
    "negative beta": (
        "train",
        ["objective=vae", "model.objective.beta=-1"],
        "model.objective.beta=-1 is invalid: it must be a number >= 0",
    ),
    "unknown corruption": (
        "train",
        ["objective=denoising", "model.objective.corruption=blur"],
        "model.objective.corruption='blur' is invalid: it must be one of gaussian, masking",
    ),
    "masking more than every pixel": (
        "train",
        ["objective=denoising", "model.objective.level=1.5"],
        "model.objective.level=1.5 is invalid: it must be a number >= 0 and <= 1",
    ),
    "beta on the plain objective": (
        "train",
        ["+model.objective.beta=4"],
        "model.objective.beta=4 is invalid: beta is not an argument of aelab.models.objectives.Objective",
    ),
    "misspelt model key": (
        "train",
        ["model.dropout=0.1"],
        "model.dropout=0.1 is invalid: model.dropout is not a setting of src/train.py",
    ),
    "added model key": (
        "train",
        ["+model.dropout=0.1"],
        "model.dropout=0.1 is invalid: dropout is not an argument of aelab.models.autoencoder.AutoEncoder",
    ),
    "encoder class not importable": (
        "train",
        ["model.encoder._target_=nowhere.Encoder"],
        "model.encoder._target_=nowhere.Encoder: cannot import nowhere",
    ),
    "encoder naming a non-project class": ("train", ["model.encoder._target_=os.system"], "model.encoder"),
    "unknown model option": (
        "train",
        ["model=transformer"],
        "model=transformer is invalid: it must be one of conv, mlp",
    ),
    # trainer
    "max_epochs null (Lightning's 1000)": (
        "train",
        ["trainer.max_epochs=null"],
        "trainer.max_epochs=null is invalid: " + POSITIVE,
    ),
    "max_epochs zero": ("train", ["trainer.max_epochs=0"], "trainer.max_epochs=0 is invalid: " + POSITIVE),
    "max_epochs negative": ("train", ["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is invalid: " + POSITIVE),
    "max_epochs text": ("train", ["trainer.max_epochs=ten"], "trainer.max_epochs='ten' is invalid: " + POSITIVE),
    "max_epochs float": ("train", ["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5 is invalid: " + POSITIVE),
    "accelerator tpu": (
        "train",
        ["trainer.accelerator=tpu"],
        "trainer.accelerator='tpu' is invalid: it must be one of cpu, gpu, cuda, auto",
    ),
    "accelerator gpu without a GPU": (
        "train",
        ["trainer.accelerator=gpu"],
        "trainer.accelerator=gpu needs a CUDA GPU, and torch finds none on this machine; use trainer=cpu",
    ),
    "trainer=gpu without a GPU": ("train", ["trainer=gpu"], "needs a CUDA GPU"),
    "unknown trainer option": (
        "train",
        ["trainer=tpu"],
        "trainer=tpu is invalid: it must be one of cpu, ddp, ddp_sim, default, gpu",
    ),
    "DDP by running the command again": (
        "train",
        ["trainer=cpu", "trainer.devices=2"],
        "trainer.strategy=auto with 2 processes would start them by running this command again, one output "
        "directory each; use trainer=ddp (GPUs) or trainer=ddp_sim (CPU), which start them inside the fit",
    ),
    "legacy precision 16": ("train", ["trainer.precision=16"], "trainer.precision=16 is invalid: " + PRECISIONS),
    "made-up precision": ("train", ["trainer.precision=bf17"], "trainer.precision='bf17' is invalid: " + PRECISIONS),
    "fp16 on cpu": ("train", ["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs a GPU"),
    "64-true (does not run)": (
        "train",
        ["trainer.precision=64-true"],
        "trainer.precision='64-true' is invalid: " + PRECISIONS,
    ),
    "bf16-true (does not run)": ("train", ["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is invalid"),
    "zero devices": (
        "train",
        ["trainer.devices=0"],
        "trainer.devices=0 is invalid: it must be a positive integer or one of auto",
    ),
    "devices as a word": ("train", ["trainer.devices=two"], "trainer.devices='two' is invalid"),
    "min_epochs above max_epochs": (
        "train",
        ["trainer.min_epochs=9"],
        "trainer.min_epochs=9 is more than trainer.max_epochs=5; lower it, e.g. trainer.min_epochs=5",
    ),
    "min_epochs negative": (
        "train",
        ["trainer.min_epochs=-1"],
        "trainer.min_epochs=-1 is invalid: it must be an integer >= 0",
    ),
    "validate every 0 epochs": (
        "train",
        ["trainer.check_val_every_n_epoch=0"],
        "trainer.check_val_every_n_epoch=0 is invalid",
    ),
    "sanity steps below -1": (
        "train",
        ["trainer.num_sanity_val_steps=-2"],
        "trainer.num_sanity_val_steps=-2 is invalid",
    ),
    "deterministic maybe": (
        "train",
        ["trainer.deterministic=maybe"],
        "trainer.deterministic='maybe' is invalid: it must be true or false or one of warn",
    ),
    "limit_train_batches above 1.0": (
        "train",
        ["+trainer.limit_train_batches=1.5"],
        "trainer.limit_train_batches=1.5 is invalid: it must be a number >= 0 and <= 1 or an integer >= 0",
    ),
    "limit_val_batches negative": (
        "train",
        ["+trainer.limit_val_batches=-1"],
        "trainer.limit_val_batches=-1 is invalid",
    ),
    "overfit_batches negative": ("train", ["+trainer.overfit_batches=-1"], "trainer.overfit_batches=-1 is invalid"),
    "fast_dev_run negative": ("train", ["+trainer.fast_dev_run=-1"], "trainer.fast_dev_run=-1 is invalid"),
    "gradient clipping negative": (
        "train",
        ["+trainer.gradient_clip_val=-1"],
        "trainer.gradient_clip_val=-1 is invalid: it must be a number >= 0 or null",
    ),
    "gradient clipping algorithm": (
        "train",
        ["+trainer.gradient_clip_algorithm=nrom"],
        "trainer.gradient_clip_algorithm='nrom' is invalid: it must be one of norm, value or null",
    ),
    "fast path asked where it cannot serve": (
        "train",
        ["fast.enabled=true", "+trainer.accumulate_grad_batches=2"],
        "fast.enabled=true cannot train this run: trainer.accumulate_grad_batches=2 accumulates in Lightning's "
        "loop; use fast.enabled=auto to train it on Lightning's plain loop",
    ),
    "trainer plugins": ("train", ["+trainer.plugins=[]"], "trainer.plugins=[] is not supported"),
    # a class's arguments are checked by the types its signature declares (aelab.constraints)
    **{
        f"hidden layers {typed}": (
            "train",
            [f"model.encoder.hidden_dims={typed}"],
            f"model.encoder.hidden_dims={shown} is invalid: it must be a list whose items are each a positive integer",
        )
        for typed, shown in (("[-5]", "[-5]"), ("[a]", "['a']"), ("[0]", "[0]"), ("null", "null"))
    },
    "scheduler without its required argument": (
        "train",
        ["model.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true}"],
        "model.scheduler.T_max is missing: torch.optim.lr_scheduler.CosineAnnealingLR needs it; add it, e.g. "
        "+model.scheduler.T_max=10",
    ),
    "an optimiser setting torch refuses": (
        "train",
        ["+model.optimizer.eps=-1"],
        "model.optimizer / model.scheduler: torch refuses the settings (ValueError: Invalid epsilon value: -1); "
        "fix the value it names",
    ),
    "a Trainer argument of the wrong type": (
        "train",
        ["+trainer.log_every_n_steps=abc"],
        "trainer.log_every_n_steps='abc' is invalid: it must be an integer or null",
    ),
    "trainer callbacks": ("train", ["+trainer.callbacks=[]"], "trainer.callbacks=[] is set in the callbacks group"),
    "not a Trainer argument": (
        "train",
        ["+trainer.foo=1"],
        "trainer.foo=1 is invalid: foo is not an argument of lightning.pytorch.Trainer",
    ),
    "misspelt Trainer argument": (
        "train",
        ["+trainer.max_epoch=1"],
        "max_epoch is not an argument of lightning.pytorch.Trainer; did you mean trainer.max_epochs?",
    ),
    "misspelt trainer key": ("train", ["trainer.max_epoch=1"], "trainer.max_epoch=1 is invalid"),
    # data
    "batch size zero": ("train", ["data.batch_size=0"], "data.batch_size=0 is invalid: " + POSITIVE),
    "batch size negative": ("train", ["data.batch_size=-5"], "data.batch_size=-5 is invalid: " + POSITIVE),
    "batch size text": ("train", ["data.batch_size=big"], "data.batch_size='big' is invalid: " + POSITIVE),
    "batch size float": ("train", ["data.batch_size=2.5"], "data.batch_size=2.5 is invalid: " + POSITIVE),
    "batch size null": ("train", ["data.batch_size=null"], "data.batch_size=null is invalid: " + POSITIVE),
    "unknown loader": (
        "train",
        ["data.loader=fast"],
        "data.loader='fast' is invalid: it must be one of device, dataloader",
    ),
    "keep_classes out of range": (
        "train",
        ["data.keep_classes=[12]"],
        "data.keep_classes=[12] is invalid: list class indices 0-9 of MNIST",
    ),
    "keep_classes empty": (
        "train",
        ["data.keep_classes=[]"],
        "data.keep_classes=[] is invalid: it must be a non-empty list",
    ),
    "keep_classes negative": ("train", ["data.keep_classes=[-1]"], "data.keep_classes=[-1] is invalid"),
    "keep_classes as text": ("train", ["data.keep_classes=three"], "data.keep_classes='three' is invalid"),
    "unknown dataset name": (
        "train",
        ["data.dataset=cifar"],
        "data.dataset='cifar' is invalid: it must be one of mnist, fashion_mnist, kmnist",
    ),
    "unknown data option": (
        "train",
        ["data=cifar"],
        "data=cifar is invalid: it must be one of arrays, fashion_mnist, folder",
    ),
    "val_size as large as training": ("train", ["data.val_size=96"], "data.val_size=96 leaves no training images"),
    "val_size negative": (
        "train",
        ["data.val_size=-1"],
        "data.val_size=-1 is invalid: it must be a positive integer or null",
    ),
    "val_size zero": ("train", ["data.val_size=0"], "data.val_size=0 is invalid"),
    "num_workers negative": (
        "train",
        ["data.num_workers=-1"],
        "data.num_workers=-1 is invalid: it must be an integer >= 0",
    ),
    "download as text": ("train", ["data.download=yes"], "data.download='yes' is invalid: it must be true or false"),
    "mirrors as one string": (
        "train",
        ["data.mirrors=https://example.org/mnist/"],
        "data.mirrors='https://example.org/mnist/' is invalid",
    ),
    "mirrors empty": (
        "train",
        ["data.mirrors=[]"],
        "data.mirrors=[] is invalid: it must be a non-empty list of strings",
    ),
    "data seed negative": ("train", ["data.seed=-1"], "data.seed=-1 is invalid"),
    "data_dir empty": ("train", ["data.data_dir=''"], "data.data_dir='' is invalid: it must be a non-empty string"),
    # a value from the environment is blamed on the variable, not on a key the user did not type
    "data variable empty": (
        "train",
        ["$AELAB_DATA_DIR="],
        "AELAB_DATA_DIR='' (an environment variable, read as data.data_dir) is invalid: it must be a non-empty string",
    ),
    "data variable empty for eval": (
        "eval",
        ["$AELAB_DATA_DIR=", "#trained"],
        "AELAB_DATA_DIR='' (an environment variable, read as paths.data_dir) is invalid",
    ),
    "misspelt data key": (
        "train",
        ["data.batchsize=64"],
        "data.batchsize=64 is invalid: data.batchsize is not a setting of src/train.py; did you mean data.batch_size?",
    ),
    "data dir missing, download off": (
        "train",
        ["data.data_dir=/nonexistent/mnist", "data.download=false"],
        "MNIST not found in /nonexistent/mnist/MNIST/raw",
    ),
    "data dir is a file": (
        "train",
        ["data.data_dir={tmp}/a_file"],
        "a_file is not a folder; move that file away, or put MNIST's own train-images-idx3-ubyte",
    ),
    # what is there but cannot be read is named for what it is, and never sends aelab to the network
    "image file is a directory": (
        "train",
        ["@directory"],
        "train-images-idx3-ubyte is a directory, not a file; move it away, then put MNIST's own "
        "train-images-idx3-ubyte (plain or .gz) there, or point at a complete copy: data.data_dir=/path",
    ),
    "label file is a loop of links": (
        "train",
        ["@loop"],
        "train-labels-idx1-ubyte cannot be read (Too many levels of symbolic links); make it readable, or put",
    ),
    "image file of 0 bytes": (
        "train",
        ["@empty"],
        "train-images-idx3-ubyte is empty (0 bytes: cut short, e.g. by a full disk); replace it: put MNIST's own",
    ),
    "missing label file, offline": ("train", ["@missing"], "train-labels-idx1-ubyte"),
    "truncated image file": ("train", ["@truncated"], "truncated"),
    # empty data is named as such, not blamed on the number of processes
    "training split empty": (
        "train",
        ["@no training images"],
        "train-images-idx3-ubyte (plain or .gz) holds 0 images: the train split is empty",
    ),
    "test split empty": (
        "eval",
        ["@no test images", "#trained", "data.data_dir={tmp}/broken"],
        "t10k-images-idx3-ubyte (plain or .gz) holds 0 images: the test split is empty",
    ),
    "keep_classes naming no image": (
        "train",
        ["@unlabelled", "data.keep_classes=[3]"],
        "data.keep_classes=[3] keeps none of the 96 training images: they hold classes [0]; keep one of those, "
        "e.g. data.keep_classes=[0]",
    ),
    "wrong IDX magic": ("train", ["@magic"], "wrong IDX magic"),
    "wrong image size": ("train", ["@dims"], "images are 28x27, expected 28x28"),
    "image/label count mismatch": ("train", ["@count"], "holds 95 labels"),
    "label out of range": ("train", ["@labels"], "label 10 is out of range 0-9"),
    "corrupt gzip": ("train", ["@gzip"], "not a valid gzip file"),
    # a user's own images (aelab.data.own): "%kind" writes them broken (see ``own_data``)
    "data=folder without data.root": (
        "train",
        ["data=folder"],
        "data.root is missing: this config needs it from you; give it, e.g. data.root=/path/to/images",
    ),
    "data=arrays without data.path": ("train", ["data=arrays"], "data.path is missing: this config needs it"),
    "image folder missing": (
        "train",
        ["data=folder", "data.root={tmp}/nowhere"],
        "/nowhere does not exist; point at a folder of class folders of images: data.root=/path/to/images",
    ),
    "image folder is a file": ("train", ["data=folder", "data.root={tmp}/a_file"], "/a_file is not a folder; point at"),
    "image folder without images": ("train", ["data=folder", "%no images"], "holds no images (.png, .jpg"),
    "images of mixed sizes": (
        "train",
        ["data=folder", "%mixed sizes"],
        "images of one size are needed; resize them as they are read, e.g. data.size=[32,32]",
    ),
    "image file corrupt": ("train", ["data=folder", "%corrupt image"], "/b/1.png cannot be read as an image"),
    "image file empty": ("train", ["data=folder", "%empty image"], "/b/1.png is empty (0 bytes"),
    "image size of one number": (
        "train",
        ["data=folder", "%mixed sizes", "data.size=[32]"],
        "data.size=[32] is invalid: it must be a list of 2 whose items are each a positive integer or null",
    ),
    "image channels 2": (
        "train",
        ["data=folder", "%mixed sizes", "data.channels=2"],
        "data.channels=2 is invalid: it must be one of 1, 3 or null",
    ),
    "test fraction leaving no test images": (
        "train",
        ["data=folder", "%mixed sizes", "data.size=[8,8]", "data.test_fraction=0.1"],
        "leaves 0 to test and 4 to train: both need one; use e.g. data.test_fraction=0.2",
    ),
    "array file of floats": (
        "train",
        ["data=arrays", "%floats"],
        "images are float32; store pixels as uint8 0-255, e.g. images=(x * 255).round().astype(numpy.uint8)",
    ),
    "array file without images": (
        "train",
        ["data=arrays", "%no images array"],
        "holds no array named images (it holds x)",
    ),
    "array labels negative": (
        "train",
        ["data=arrays", "%negative labels"],
        "labels are int64 (6,) from -1 to 0; give one class index 0, 1, ..., K-1 per image",
    ),
    "array images of five dimensions": (
        "train",
        ["data=arrays", "%five dimensions"],
        "give (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3",
    ),
    "array classes too few": (
        "train",
        ["data=arrays", "%labels 0-2", "data.classes=[cat]"],
        "data.classes names 1 classes but the labels of",
    ),
    "array file not npz": (
        "train",
        ["data=arrays", "data.path={tmp}/a_file"],
        "is not an .npz file (not a zip archive",
    ),
    "array file empty": ("train", ["data=arrays", "data.path={tmp}/empty.npz"], "/empty.npz is empty (0 bytes"),
    "array file is a directory": ("train", ["data=arrays", "data.path={tmp}"], "is a directory, not a file"),
    "array labels past the image count": (
        "train",
        ["data=arrays", "%huge labels"],
        "labels are int64 (6,) from 0 to 1000000000; give one class index 0, 1, ..., K-1 per image",
    ),
    "array labels as text": ("train", ["data=arrays", "%text labels"], "labels are <U3 (6,); give one class index"),
    "array member that is no .npy": ("train", ["data=arrays", "%raw member"], "holds no array named images"),
    "array images with a side of 0": (
        "train",
        ["data=arrays", "%zero side"],
        "images have shape (6, 0, 5), with a side",
    ),
    "image folder with loose images": (
        "train",
        ["data=folder", "%loose image"],
        "holds class folders and also images beside them (loose.png, ...), which belong to no class",
    ),
    "image folder with an empty class": ("train", ["data=folder", "%empty class"], "/c holds no images (.png"),
    "image file a link to nothing": ("train", ["data=folder", "%dangling link"], "/b/1.png is a link to"),
    "eval data key the run's data does not take": (
        "eval",
        ["#trained", "data.root={tmp}"],
        "was trained on (MNISTLikeDataModule): it takes data.data_dir, data.dataset,",
    ),
    "eval on images of another shape": (
        "eval",
        ["#trained", "data=arrays", "%grey 8x8"],
        "the data given holds 1x8x8 images (images) but checkpoint",
    ),
    # the command line as a whole
    "seed null": ("train", ["seed=null"], "seed=null is invalid: it must be an integer from 0 to 4294967295"),
    "seed negative": ("train", ["seed=-1"], "seed=-1 is invalid"),
    "seed above 2**32-1": ("train", ["seed=4294967296"], "seed=4294967296 is invalid"),
    "seed text": ("train", ["seed=abc"], "seed='abc' is invalid"),
    "task_name climbing out of the logs": (
        "train",
        ["task_name=../../x"],
        "task_name='../../x' is invalid: it must be a plain name",
    ),
    "task_name with a slash": ("train", ["task_name=a/b"], "task_name='a/b' is invalid"),
    "task_name empty": ("train", ["task_name=''"], "task_name='' is invalid"),
    "unknown top-level key": (
        "train",
        ["learning_rate=1"],
        "learning_rate=1 is invalid: learning_rate is not a setting of src/train.py; remove it",
    ),
    "added top-level key": ("train", ["+foo=bar"], "foo='bar' is invalid: foo is not a setting aelab reads; remove it"),
    "appending a key that exists": (
        "train",
        ["+seed=1"],
        "+seed=1 adds a key that exists; set it without the +, e.g. seed=1",
    ),
    "unknown experiment": (
        "train",
        ["experiment=nope"],
        "experiment=nope is invalid: it must be one of one_class, seed_conv, seed_mlp, strong_mlp",
    ),
    "unknown debug option": ("train", ["debug=nope"], "debug=nope is invalid: it must be one of fdr, limit, overfit"),
    "unknown logger option": (
        "train",
        ["logger=neptune"],
        "logger=neptune is invalid: it must be one of csv, many, mlflow, tensorboard, wandb",
    ),
    "unknown callbacks option": ("train", ["callbacks=none"], "callbacks=none is invalid: it must be one of default"),
    "callbacks=null": ("train", ["callbacks=null"], "callbacks=null is invalid: a config group is chosen by name"),
    "logger=null": (
        "train",
        ["logger=null"],
        "logger=null is invalid: a config group is chosen by name, e.g. logger=<option>, or left out with ~logger",
    ),
    "unclosed bracket": ("train", ["data.keep_classes=[1"], "data.keep_classes=[1 is not a valid override"),
    "a space in a value": ("train", ["model.latent_dim= 3 4"], "model.latent_dim='3 4' is invalid"),
    "a space in a key": ("train", ["model.latent dim=3"], "model.latent dim=3 is not a valid override"),
    "unknown hydra key": ("train", ["hydra.foo=1"], "hydra.foo=1 is invalid"),
    "missing config dir": ("train", ["--config-dir=/nonexistent"], "/nonexistent"),
    "unresolvable interpolation": (
        "train",
        ["model.latent_dim=${nope}"],
        "model.latent_dim=${nope} cannot be resolved",
    ),
    "log dir empty": ("train", ["paths.log_dir=''"], "paths"),
    "log dir below a file": ("train", ["paths.log_dir={tmp}/a_file/logs"], "Not a directory"),
    # callbacks
    "misspelt monitor key": (
        "train",
        ["callbacks.model_checkpoint.monitor=val/mes"],
        "callbacks.model_checkpoint.monitor='val/mes' is invalid: it must be one of val/mse, train/mse, val/psnr, "
        "val/mse_best",
    ),
    "monitor without a split": (
        "train",
        ["callbacks.model_checkpoint.monitor=mse"],
        "callbacks.model_checkpoint.monitor='mse' is invalid",
    ),
    "monitor mode": (
        "train",
        ["callbacks.model_checkpoint.mode=maximize"],
        "callbacks.model_checkpoint.mode='maximize' is invalid: it must be one of min, max",
    ),
    "save_top_k below -1": (
        "train",
        ["callbacks.model_checkpoint.save_top_k=-2"],
        "callbacks.model_checkpoint.save_top_k=-2 is invalid",
    ),
    "refresh rate negative": (
        "train",
        ["callbacks.progress_bar.refresh_rate=-1"],
        "callbacks.progress_bar.refresh_rate=-1 is invalid",
    ),
    "no reconstruction images": (
        "train",
        ["callbacks.reconstruction_grid.num_images=0"],
        "callbacks.reconstruction_grid.num_images=0 is invalid",
    ),
    "too many reconstruction images": (
        "train",
        ["callbacks.reconstruction_grid.num_images=1000"],
        "callbacks.reconstruction_grid.num_images=1000 is invalid: it must be an integer from 1 to 64",
    ),
    # checkpoints
    "checkpoint missing": ("train", ["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt does not exist"),
    "checkpoint is a directory": (
        "train",
        ["ckpt_path={tmp}"],
        "is a directory, not a file; pass a .ckpt file, e.g. ckpt_path=",
    ),
    "checkpoint of 0 bytes": (
        "eval",
        ["#empty"],
        "empty.ckpt is empty (0 bytes: cut short, e.g. by a full disk); pass a .ckpt file, e.g. ckpt_path=",
    ),
    "checkpoint is a loop of links": (
        "analyze",
        ["#loop"],
        "loop.ckpt cannot be read (Too many levels of symbolic links); make it readable, or pass a .ckpt file",
    ),
    "training into a run folder whose last.ckpt is a directory": (
        "train",
        ["hydra.run.dir={tmp}/run"],
        "run/checkpoints/last.ckpt is a directory, not a file; move it away, then train the run again from its "
        "start, or leave hydra.run.dir unset",
    ),
    "results_dir is a file": (
        "eval",
        ["#trained", "results_dir={tmp}/a_file"],
        "a_file is not a folder; write it elsewhere with results_dir=/path",
    ),
    "results_dir under a file": (
        "encode",
        ["#trained", "results_dir={tmp}/a_file/latents"],
        "a_file is not a folder; write it elsewhere with results_dir=/path",
    ),
    "run folder whose last.ckpt is a directory": (
        "eval",
        ["ckpt_path={tmp}/run"],
        "run/checkpoints/last.ckpt is a directory, not a file; use another checkpoint of the run",
    ),
    "ckpt_path=last with no runs": ("train", ["ckpt_path=last"], "ckpt_path=last found no checkpoints/last.ckpt"),
    "malicious checkpoint": ("train", ["#malicious"], "could run code"),
    "garbage checkpoint": ("train", ["#garbage"], "is not a readable PyTorch checkpoint"),
    "text file as checkpoint": ("train", ["#text"], "is not a readable PyTorch checkpoint"),
    "foreign checkpoint": ("train", ["#foreign"], "was not written by aelab"),
    "checkpoint of another latent size": ("train", ["#trained", "model.latent_dim=5"], "holds a different network"),
    "checkpoint of another backbone": ("train", ["#trained", "model=conv"], "holds a different network"),
    "checkpoint of another objective": (
        "train",
        ["#trained", "objective=vae"],
        "was trained with another objective than the config's: it holds Objective(), the config asks for "
        "Variational(beta=1.0). Pass the objective it was trained with (e.g. objective=plain)",
    ),
    "loss diverges": ("train", ["model.optimizer.lr=1e30"], "loss became non-finite in epoch 0"),
    # eval and analyze share the groups and their checks
    "eval without a checkpoint": ("eval", [], "give ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"),
    "eval of a missing checkpoint": ("eval", ["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt does not exist"),
    "eval of a malicious checkpoint": ("eval", ["#malicious"], "could run code"),
    "eval batch size zero": (
        "eval",
        ["#trained", "data.batch_size=0"],
        "data.batch_size=0 is invalid: it must be a positive integer or null",
    ),
    "eval on a TPU": ("eval", ["#trained", "trainer.accelerator=tpu"], "trainer.accelerator='tpu' is invalid"),
    "eval with an analyze key": (
        "eval",
        ["#trained", "map=pca"],
        "map=pca is invalid: map is not a setting of src/eval.py; remove it",
    ),
    "eval of an unknown dataset": ("eval", ["#trained", "data.dataset=cifar"], "data.dataset='cifar' is invalid"),
    "analyze missing checkpoint": (
        "analyze",
        ["ckpt_path=/no/such/last.ckpt"],
        "ckpt_path=/no/such/last.ckpt does not exist",
    ),
    "analyze with neither checkpoint nor sweep": ("analyze", [], "give exactly one of ckpt_path="),
    "analyze with both": ("analyze", ["#trained", "sweep_dir={tmp}"], "give exactly one of ckpt_path="),
    "analyze unknown map": (
        "analyze",
        ["#trained", "map=sne"],
        "map='sne' is invalid: it must be one of tsne, umap, pca, all",
    ),
    # one loader for every task: weights that do not fit are one line, on resume as in eval
    "resume with a weight missing": (
        "train",
        ["#a weight missing"],
        "holds weights that do not fit the model it describes (missing decoder.",
    ),
    "resume with a weight of another dtype": (
        "train",
        ["#a weight of another dtype"],
        "holds weights that do not fit the model it describes (of another dtype decoder.",
    ),
    "eval of a weight of another shape": (
        "eval",
        ["#a weight of another shape"],
        "holds weights that do not fit the model it describes (of another shape decoder.",
    ),
    "analyze knn_k zero": ("analyze", ["#trained", "knn_k=0"], "knn_k=0 is invalid: " + POSITIVE),
    # settings checked against the data they meet, once it is known
    "analyze knn_k above the split": (
        "analyze",
        ["#trained", "knn_k=100000"],
        "knn_k=100000 is invalid for MNIST: its training split holds 96 images; e.g. knn_k=5",
    ),
    "audit knn_k above the split": (
        "audit",
        ["#trained", "knn_k=100000"],
        "knn_k=100000 is invalid for MNIST: its 136 images have at most 135 neighbours each; e.g. knn_k=10",
    ),
    "analyze a test split too small for umap_gmm": (
        "analyze",
        ["#trained", "data.data_dir={tmp}/few"],
        "MNIST (few)'s test split holds 10 images, and umap_gmm=true (UMAP to 10-D) needs at least 12: analyze a "
        "run of data with a larger test split; or leave it out: umap_gmm=false",
    ),
    "analyze a test split too small for trustworthiness": (
        "analyze",
        ["#trained", "data.data_dir={tmp}/few", "umap_gmm=false"],
        "MNIST (few)'s test split holds 10 images, and the 2-D maps' trustworthiness (10 neighbours) needs at least 21",
    ),
    "analyze too few trustworthiness points": (
        "analyze",
        ["#trained", "trustworthiness_points=5"],
        "trustworthiness_points=5 is invalid: it must be an integer >= 21",
    ),
    "analyze umap_gmm maybe": (
        "analyze",
        ["#trained", "umap_gmm=maybe"],
        "umap_gmm='maybe' is invalid: it must be true or false",
    ),
    "analyze a folder with no sweep": ("analyze", ["sweep_dir={tmp}"], "holds no sweep jobs with checkpoints"),
    "analyze with no runs": ("analyze", ["ckpt_path=last"], "ckpt_path=last found no checkpoints/last.ckpt under"),
    "analyze legacy precision": ("analyze", ["#trained", "trainer.precision=16"], "trainer.precision=16 is invalid"),
    "analyze a foreign checkpoint": ("analyze", ["#foreign"], "was not written by aelab"),
    "a search without -m": (
        "train",
        ["hparams_search=mlp"],
        "hparams_search=mlp is a search over many runs, which Hydra starts only as a multirun: add -m, "
        "e.g. python src/train.py -m hparams_search=mlp",
    ),
    # audit opens checkpoints as analyze does
    "audit without a checkpoint": ("audit", [], "give ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"),
    "audit a split typo": (
        "audit",
        ["#trained", "split=tset"],
        "split='tset' is invalid: it must be one of test, train, all",
    ),
    "audit queries beyond the test split": (
        "audit",
        ["#trained", "queries=[0,40]"],
        "queries=[0, 40] is invalid: 40 is beyond the 40 images of the MNIST test split; give test-split indices "
        "0-39, e.g. queries=[0,1,2]",
    ),
    "audit a run without labels": (
        "audit",
        ["@unlabelled", "#trained", "data.data_dir={tmp}/broken"],
        "every image of MNIST (broken) is in class '0', so no label can be suspect; audit a run of labelled data",
    ),
    "audit more neighbours than images": (
        "audit",
        ["#trained", "knn_k=136"],
        "knn_k=136 is invalid for MNIST: its 136 images have at most 135 neighbours each; e.g. knn_k=10",
    ),
    "audit a split that only encode has": (
        "audit",
        ["#trained", "split=val"],
        "split='val' is invalid: it must be one of test, train, all",
    ),
    "audit more neighbours shown than training images": (
        "audit",
        ["#trained", "neighbours=32", "knn_k=10", "data.data_dir={tmp}/few"],
        "neighbours=32 is invalid for MNIST (few): its training split holds 20 images; e.g. neighbours=8",
    ),
    "audit an unknown outlier score": (
        "audit",
        ["#trained", "outlier_method=iforest"],
        "outlier_method='iforest' is invalid: it must be one of reconstruction, knn",
    ),
    # encode, decode and export open checkpoints as eval does
    "encode without a checkpoint": ("encode", [], "give ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"),
    "encode a malicious checkpoint": ("encode", ["#malicious"], "could run code"),
    "encode an unknown split": (
        "encode",
        ["#trained", "split=dev"],
        "split='dev' is invalid: it must be one of train, val, test",
    ),
    "encode csv maybe": (
        "encode",
        ["#trained", "csv=maybe"],
        "csv='maybe' is invalid: it must be one of true, false, auto",
    ),
    "encode with a decode key": ("encode", ["#trained", "steps=5"], "steps=5 is invalid: steps is not a setting of"),
    "decode a missing latents file": (
        "decode",
        ["#trained", "latents=/no/such.npz"],
        "latents=/no/such.npz does not exist; pass a .npz or .csv written by src/encode.py",
    ),
    "decode a text file as latents": ("decode", ["#trained", "latents={tmp}/a_file"], "cannot be read as latents"),
    "decode a folder as latents": (
        "decode",
        ["#trained", "latents={tmp}"],
        "is a directory, not a file; pass a .npz or .csv written by src/encode.py",
    ),
    "decode an empty latents file": (
        "decode",
        ["#trained", "latents={tmp}/empty.npz"],
        "empty.npz is empty (0 bytes: cut short, e.g. by a full disk); pass a .npz or .csv written by src/encode.py",
    ),
    "decode the same axis twice": (
        "decode",
        ["#trained", "axes=[1,1]"],
        "axes=[1, 1] is invalid: it must be a list of 2 different integers >= 0 (e.g. [0, 1])",
    ),
    "decode three axes": ("decode", ["#trained", "axes=[0,1,2]"], "axes=[0, 1, 2] is invalid: it must be a list of 2"),
    "decode an axis beyond the code": (
        "decode",
        ["#trained", "axes=[0,3]"],
        "axes=[0, 3] is invalid: this model's code has 3 numbers (z0 to z2); e.g. axes=[0,1]",
    ),
    "decode a sweep of one step": (
        "decode",
        ["#trained", "steps=1"],
        "steps=1 is invalid: it must be an integer from 2",
    ),
    "decode zero images": (
        "decode",
        ["#trained", "max_images=0"],
        "max_images=0 is invalid: it must be an integer from 1",
    ),
    "export a foreign checkpoint": ("export", ["#foreign"], "was not written by aelab"),
    "export checking no images": (
        "export",
        ["#trained", "check_images=0"],
        "check_images=0 is invalid: it must be an integer from 1 to 10000",
    ),
}


# rows whose error comes after training began
TRAINING_STARTED = {"loss diverges"}

# The rows above about what is read from disk, and about settings that depend on the data, by fault
# class (docs/errors.md, Fault classes; aelab.faults decides the first four): every class is proved
# on at least two readers. A new reader (a dataset format, a file a task takes) adds its rows under
# the classes it can meet. A read-only run folder is tested on a read-only disk (below).
FAULT_CLASSES = {
    "missing": [
        "data dir missing, download off",
        "missing label file, offline",
        "eval of a missing checkpoint",
        "decode a missing latents file",
    ],
    "not a file": [
        "image file is a directory",
        "checkpoint is a directory",
        "run folder whose last.ckpt is a directory",
        "training into a run folder whose last.ckpt is a directory",
        "decode a folder as latents",
    ],
    "unreadable": ["label file is a loop of links", "checkpoint is a loop of links", "data dir is a file"],
    "empty": ["image file of 0 bytes", "checkpoint of 0 bytes", "decode an empty latents file"],
    "corrupt": [
        "truncated image file",
        "wrong IDX magic",
        "corrupt gzip",
        "garbage checkpoint",
        "text file as checkpoint",
        "decode a text file as latents",
    ],
    "wrong shape or keys": [
        "wrong image size",
        "image/label count mismatch",
        "training split empty",
        "foreign checkpoint",
        "resume with a weight missing",
        "resume with a weight of another dtype",
        "eval of a weight of another shape",
    ],
    "out of range for the data": [
        "analyze knn_k above the split",
        "audit knn_k above the split",
        "audit more neighbours shown than training images",
        "audit queries beyond the test split",
        "keep_classes naming no image",
        "analyze a test split too small for umap_gmm",
        "analyze a test split too small for trustworthiness",
    ],
    "from an environment variable": ["data variable empty", "data variable empty for eval"],
    "nowhere to write": ["results_dir is a file", "results_dir under a file"],
}


def test_every_fault_class_is_proved_on_at_least_two_readers():
    assert all(len(rows) >= 2 for rows in FAULT_CLASSES.values())
    named = [row for rows in FAULT_CLASSES.values() for row in rows]
    assert set(named) <= CASES.keys(), set(named) - CASES.keys()
    assert len(named) == len(set(named)), "a row belongs to one class"


def run_in_process(script: str, args: list[str], capfd, env: dict[str, str]) -> tuple[int, str]:
    """``python src/<script>.py <args>`` in this interpreter (as ``python`` runs it: ``__main__``),
    so the table costs milliseconds per row; ``test_the_table_matches_the_real_command_line``
    proves a sample through a fresh interpreter."""
    script_path = REPO / "src" / f"{script}.py"
    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = [str(script_path), *args]
    os.environ.update(env)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    capfd.readouterr()
    try:
        runpy.run_path(str(script_path), run_name="__main__")
        code = 0
    except SystemExit as exit_request:
        code = exit_request.code if isinstance(exit_request.code, int) else 1
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    captured = capfd.readouterr()
    return code, captured.err, captured.out


def case_arguments(case: str, tmp_path: Path, trained: Path) -> tuple[str, list[str], dict[str, str]]:
    script, args, _ = CASES[case]
    data = make_tiny_dataset(tmp_path / "data")
    make_tiny_dataset(tmp_path / "few", n_train=20, n_test=10)
    (tmp_path / "a_file").write_text("a file where a folder is expected\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "run" / "checkpoints" / "last.ckpt").mkdir(parents=True)
    cli_args = [f"paths.log_dir={tmp_path / 'logs'}"]
    variables = {}
    if script == "train":
        cli_args += ["trainer.max_epochs=5", QUIET]
    for arg in args:
        if arg.startswith("$"):
            name, _, value = arg[1:].partition("=")
            variables[name] = value
        elif arg.startswith("@"):
            data = corrupt(tmp_path / "broken", arg[1:])
        elif arg.startswith("#"):
            cli_args.append(f"ckpt_path={bad_checkpoint(tmp_path, arg[1:], trained)}")
        elif arg.startswith("%"):
            cli_args.append(own_data(tmp_path / "own", arg[1:]))
        else:
            cli_args.append(arg.replace("{tmp}", str(tmp_path)))
    return script, cli_args, {"AELAB_DATA_DIR": str(data), **variables}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.extra(script)) if script == "export" else case
        for case, (script, *_) in CASES.items()
    ],
)
def test_bad_input_exits_2_with_one_clear_line(case, tmp_path, trained, capfd):
    if "without a GPU" in case and torch.cuda.is_available():
        pytest.skip("this row is about a machine without a CUDA GPU")
    script, args, env = case_arguments(case, tmp_path, trained)
    before = set(tmp_path.iterdir())
    code, stderr, _ = run_in_process(script, args, capfd, env)
    expected = CASES[case][2]
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("aelab: error: ")]
    assert expected in line, f"{expected!r} not in:\n{line}"
    assert not (tmp_path / "pwned").exists()
    assert set(tmp_path.iterdir()) - before <= {tmp_path / "logs"}, "wrote outside the log root"
    # a command that failed before producing anything leaves no run folder to clutter logs/; a run
    # that trained keeps what it wrote
    assert bool(list((tmp_path / "logs").glob("*/runs/*"))) == (case in TRAINING_STARTED)


def suggested(line: str, args: list[str], trained: Path) -> list[str]:
    """The arguments with the override the line suggests (its ``e.g. key=value``) in place of the
    one it blames."""
    override = re.search(r"e\.g\. ([\w.]+=[^\s);]+)", line).group(1)
    key = override.split("=", 1)[0]
    return [arg for arg in args if arg.split("=", 1)[0] != key] + [override]


def file_put_back(line: str, args: list[str], trained: Path) -> list[str]:
    """As the line says: move away what stands there (if anything), then put the dataset's own file there."""
    (path,) = re.findall(r"error: (\S+?)(?: \(plain or \.gz\))? (?:is a directory|holds 0 images)", line)
    shutil.rmtree(path, ignore_errors=True)
    make_tiny_dataset(Path(path).parents[2])  # the same tiny MNIST, every file in place
    return args


def another_checkpoint_of_the_run(line: str, args: list[str], trained: Path) -> list[str]:
    """As the line says: the run's own checkpoint instead of the one that does not fit."""
    return [arg for arg in args if not arg.startswith("ckpt_path=")] + [f"ckpt_path={trained}"]


# Rows whose fix is followed: the command is run again as the line says, and succeeds.
FOLLOWED = {
    "analyze knn_k above the split": lambda line, args, run: [*suggested(line, args, run), "map=pca", "umap_gmm=false"],
    "audit knn_k above the split": suggested,
    "checkpoint of another objective": suggested,
    "image file is a directory": file_put_back,
    "training split empty": file_put_back,
    "images of mixed sizes": suggested,
    "test fraction leaving no test images": suggested,
    "resume with a weight missing": another_checkpoint_of_the_run,
}


@pytest.mark.parametrize("case", FOLLOWED)
def test_the_fix_a_line_gives_works_when_followed(case, tmp_path, trained, capfd):
    script, args, env = case_arguments(case, tmp_path, trained)
    code, stderr, _ = run_in_process(script, args, capfd, env)
    (line,) = [line for line in stderr.splitlines() if line.startswith("aelab: error: ")]
    assert code == 2 and CASES[case][2] in line
    code, stderr, _ = run_in_process(script, FOLLOWED[case](line, args, trained), capfd, env)
    assert code == 0, stderr[-3000:]


SAMPLE = [
    "unknown top-level key",
    "latent_dim zero",
    "truncated image file",
    "malicious checkpoint",
    "analyze unknown map",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SAMPLE)
def test_the_table_matches_the_real_command_line(case, tmp_path, trained):
    """A sample of the table as processes of their own; the first through a fresh interpreter too."""
    script, args, env = case_arguments(case, tmp_path, trained)
    result = run_cli(f"{script}.py", *args, env=env, cold=case == SAMPLE[0])
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("aelab: error: ")]
    assert CASES[case][2] in line and result.stderr.strip().endswith(line)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "override",
    [
        "+callbacks.evil={_target_:os.system,command:'touch {tmp}/pwned'}",
        "model._target_=os.system",
        "model.latent_dim=${oc.env:HOME}",
        "model=../../etc/passwd",
    ],
)
def test_stored_overrides_that_could_name_code_are_not_restored_on_resume(override, tmp_path, trained, capfd):
    checkpoint = bad_checkpoint(tmp_path, f"overrides:{override}", trained)
    env = {"AELAB_DATA_DIR": str(make_tiny_dataset(tmp_path / "data"))}
    code, stderr, stdout = run_in_process(
        "train",
        [f"ckpt_path={checkpoint}", "trainer.max_epochs=2", f"paths.log_dir={tmp_path / 'logs'}", QUIET],
        capfd,
        env,
    )
    assert code == 0, stderr[-3000:]
    assert (
        f"not restored from {checkpoint} (they could name code; pass them again if they are yours): "
        f"{override.replace('{tmp}', str(tmp_path))}" in stdout + stderr
    )
    assert not (tmp_path / "pwned").exists()
    assert newest_summary(tmp_path / "logs")["epochs"] == 2


def test_the_table_holds_at_least_100_distinct_bad_inputs():
    assert len(CASES) >= 100
    assert len({(script, tuple(args)) for script, args, _ in CASES.values()}) == len(CASES)


@pytest.mark.parametrize("script", ["eval.py", "analyze.py"])
def test_a_diverged_checkpoint_fails_with_one_line_instead_of_reporting_nan(tmp_path, trained, script):
    checkpoint = torch.load(trained, weights_only=True)
    for tensor in checkpoint["state_dict"].values():
        tensor.fill_(float("nan"))
    path = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, path)
    result = run_cli(
        script,
        f"ckpt_path={path}",
        f"paths.log_dir={tmp_path}",
        env={"AELAB_DATA_DIR": str(trained.parents[5] / "data")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        f"aelab: error: checkpoint {path} holds NaN or infinite weights (decoder.0.bias and 11 more): they come "
        "from a diverged run; use an earlier checkpoint of it"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "analysis" / "analysis.json").exists()


def test_json_files_are_strict_json_even_when_a_number_is_not_finite(tmp_path):
    from aelab.files import write_json

    write_json(tmp_path / "s.json", {"val/mse_best": float("inf"), "nested": [float("nan"), 1.5]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"val/mse_best": None, "nested": [None, 1.5]}
    assert "Infinity" not in (tmp_path / "s.json").read_text()


def test_hydra_full_error_shows_the_traceback(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist)}
    result = run_cli(
        "train.py", "model.latent_dim=0", f"paths.log_dir={tmp_path}", env={**env, "HYDRA_FULL_ERROR": "1"}
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


# A checkpoint that passes torch.load(weights_only=True) is plain data, but the configs inside it
# name classes: each of these would run a shell command if aelab built what the file says.
def payloads(marker: Path) -> dict[str, tuple[str, object]]:
    command = {"_target_": "os.system", "command": f"touch {marker}"}
    pickled = pickle.dumps(Evil(marker))
    return {
        "torch.load of embedded pickle bytes": (
            "hyper_parameters.encoder",
            {"_target_": "torch.load", "weights_only": False, "f": {"_target_": "io.BytesIO", "_args_": [pickled]}},
        ),
        "builtins.open truncating a file": (
            "hyper_parameters.decoder",
            {"_target_": "builtins.open", "_args_": [str(marker.parent / "victim.ckpt"), "w"]},
        ),
        "model class": ("aelab_model_class", "os.system"),
        "data class": ("aelab_data_class", "subprocess.getoutput"),
        "encoder": ("hyper_parameters.encoder", command),
        "optimizer": ("hyper_parameters.optimizer", {**command, "_partial_": True}),
        "nested in an encoder argument": ("hyper_parameters.encoder.hidden_dims", [command]),
        "datamodule argument": ("datamodule_hyper_parameters.mirrors", command),
    }


def poisoned(trained: Path, tmp: Path, where: str, payload: object) -> Path:
    checkpoint = torch.load(trained, weights_only=True)
    *parents, key = where.split(".")
    node = checkpoint
    for part in parents:
        node = node[part]
    node[key] = payload
    path = tmp / "poisoned.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)  # still plain data: the unpickler has nothing to refuse
    return path


@pytest.mark.parametrize("case", list(payloads(Path("x"))))
def test_a_checkpoint_naming_a_non_project_target_is_refused_and_never_runs_it(tmp_path, trained, case):
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim.ckpt"
    victim.write_bytes(b"another run's checkpoint")
    where, payload = payloads(marker)[case]
    path = poisoned(trained, tmp_path, where, payload)
    with pytest.raises(
        CheckpointError,
        match=f"checkpoint {path} is refused: its .* names .*, which is not one of aelab's registered classes",
    ):
        open_run(path)
    assert not marker.exists()
    assert victim.read_bytes() == b"another run's checkpoint"


@pytest.mark.slow
def test_the_sweep_report_reads_a_poisoned_job_without_running_it(tmp_path, tiny_mnist):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train.py",
        "-m",
        "model.latent_dim=2,3",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
        QUIET,
        env={"AELAB_DATA_DIR": str(tiny_mnist)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = tmp_path / "pwned"
    job = sweep_dir / "model.latent_dim=2,trainer.max_epochs=1" / "checkpoints"
    for checkpoint in job.glob("*.ckpt"):
        poisoned_copy = poisoned(checkpoint, tmp_path, "hyper_parameters.encoder", payloads(marker)["encoder"][1])
        poisoned_copy.replace(checkpoint)
    report = run_cli("scripts/sweep_report.py", str(sweep_dir))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "is refused: its hyper_parameters.encoder._target_ names os.system" in report.stderr
    assert not marker.exists()
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 3  # both jobs listed; the poisoned one without its PCA and reconstructions


@pytest.mark.parametrize("script", ["eval.py", "analyze.py", "train.py"])
def test_every_entry_point_refuses_a_poisoned_checkpoint_with_one_line(tmp_path, trained, script):
    marker = tmp_path / "pwned"
    path = poisoned(trained, tmp_path, "hyper_parameters.encoder", payloads(marker)["encoder"][1])
    result = run_cli(
        script,
        f"ckpt_path={path}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *([QUIET] if script == "train.py" else []),
        env={"AELAB_DATA_DIR": str(trained.parents[5] / "data")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("aelab: error:")]
    assert f"checkpoint {path} is refused: its hyper_parameters.encoder._target_ names os.system" in line
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="is refused: it holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


def test_diverging_run_keeps_the_last_good_checkpoint(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    result = run_cli(
        "train.py",
        "trainer.max_epochs=3",
        f"paths.log_dir={tmp_path}",
        QUIET,
        "+callbacks.poison._target_=fault_callbacks.PoisonAt",
        "+callbacks.poison.epoch=1",
        env=env,
    )
    assert result.returncode == 2
    (run,) = (tmp_path / "train" / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    assert "loss became non-finite in epoch 1" in result.stderr
    assert f"the last good checkpoint is {last}" in result.stderr
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_a_resumable_checkpoint(tmp_path, tiny_mnist, signum):
    # signalled from outside, whenever it arrives, as by a user's Ctrl-C or a scheduler's SIGTERM
    process = start_cli(
        "train.py",
        "model=conv",
        "trainer.max_epochs=500",  # far more than run before the signal: 12 batches an epoch
        "data.batch_size=8",
        f"paths.log_dir={tmp_path}",
        QUIET,
        env={"AELAB_DATA_DIR": str(tiny_mnist)},
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signum)
    stopped = process.wait(timeout=120)
    stderr = stopped.stderr
    assert stopped.returncode == (143 if signum == signal.SIGTERM else 1), stderr[-3000:]
    (interrupted,) = tmp_path.glob("train/runs/*/checkpoints/interrupted.ckpt")
    assert f"saved {interrupted}. Resume with: " in stderr
    assert torch.load(interrupted, weights_only=True)["hyper_parameters"]["encoder"]["_target_"].endswith("ConvEncoder")
    # the follow-up the message promises, run as printed (the conv run's own overrides included),
    # with a max_epochs appended that ends it one epoch after the interrupted one
    (printed,) = re.findall(r"Resume with: (.+)", stderr)
    assert printed.startswith("python src/train.py model=conv trainer.max_epochs=500 data.batch_size=8 ")
    stopped_in = torch.load(interrupted, weights_only=True)["epoch"]
    resumed = run_printed(f"{printed} trainer.max_epochs={stopped_in + 2}", {"AELAB_DATA_DIR": str(tiny_mnist)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert newest_summary(tmp_path)["epochs"] == stopped_in + 2


@pytest.mark.slow
def test_kill_9_in_epoch_3_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    # one batch per training_step call, so that the kill lands between two batches of an epoch
    common = ["trainer.max_epochs=5", "data.batch_size=32", "fast.steps_per_call=1", "seed=7", QUIET]

    straight = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'straight'}", env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = run_cli(
        "train.py",
        *common,
        f"paths.log_dir={tmp_path / 'killed'}",
        "+callbacks.kill._target_=fault_callbacks.KillAt",
        "+callbacks.kill.epoch=2",
        "+callbacks.kill.batch=1",
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL
    (run,) = (tmp_path / "killed" / "train" / "runs").iterdir()
    assert not (run / "run_summary.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # epochs 0, 1 done

    resumed = run_cli("train.py", *common, "ckpt_path=last", f"paths.log_dir={tmp_path / 'killed'}", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = newest_summary(tmp_path / "straight"), newest_summary(tmp_path / "killed")
    assert b["epochs"] == 5
    assert b["val/mse"] == pytest.approx(a["val/mse"], rel=1e-6, abs=1e-7)
    assert b["val/mse_best"] == pytest.approx(a["val/mse_best"], rel=1e-6, abs=1e-7)


# --- fuzzing: only the project's own clear errors may come out --------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=3))
def test_idx_reader_on_random_bytes_raises_only_data_error(raw, ndim):
    try:
        array = parse_idx(raw, name="fuzz", ndim=ndim)
    except DataError as err:
        assert str(err).startswith("fuzz: ")
    else:
        assert array.ndim == ndim


VALID_IDX = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 3, 3)) + bytes(range(18))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID_IDX) - 1), st.integers(0, 255)), max_size=4),
    st.integers(0, len(VALID_IDX)),
)
def test_idx_reader_on_mutated_files_raises_only_data_error(mutations, cut):
    raw = bytearray(VALID_IDX)
    for index, value in mutations:
        raw[index] = value
    try:
        parse_idx(bytes(raw[:cut]), name="mutant", ndim=3)
    except DataError as err:
        assert str(err).startswith("mutant: ")


@functools.cache
def composed_train_config(tmp_path: Path):
    return compose_train(tmp_path, tmp_path)


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=8)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(latent_dim=VALUES, batch_size=VALUES, precision=VALUES, max_epochs=VALUES)
def test_config_validation_on_random_values_raises_only_config_error(
    tmp_path, latent_dim, batch_size, precision, max_epochs
):
    from omegaconf import open_dict
    from omegaconf.errors import GrammarParseError

    from aelab.config import validate

    cfg = copy.deepcopy(composed_train_config(tmp_path))  # composed once: only the values vary
    try:
        with open_dict(cfg):
            cfg.model.latent_dim = latent_dim
            cfg.data.batch_size = batch_size
            cfg.trainer.precision = precision
            cfg.trainer.max_epochs = max_epochs
    except GrammarParseError:
        # a broken interpolation such as "${": OmegaConf refuses to hold it, so no config can carry it
        reject()
    try:
        validate(cfg)
    except ConfigError as err:
        assert "=" in str(err)


def test_a_checkpoint_naming_a_registered_class_in_the_wrong_role_is_refused(tmp_path, trained):
    path = poisoned(trained, tmp_path, "aelab_model_class", "torch.optim.SGD")
    with pytest.raises(
        CheckpointError, match="its aelab_model_class names torch.optim.SGD, which is not a LightningModule"
    ):
        open_run(path)


def test_a_checkpoint_cannot_make_aelab_download_or_write_anywhere(tmp_path, trained):
    target = tmp_path / "chosen-by-the-file"
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["datamodule_hyper_parameters"].update(
        data_dir=str(target), download=True, mirrors=["http://127.0.0.1:9/"], num_workers=64
    )
    path = tmp_path / "beacon.ckpt"
    torch.save(checkpoint, path)
    # no data where the user keeps it either (the fallback when the run's own folder is gone)
    loaded = open_run(path, data_dir=tmp_path / "no-data")
    assert (loaded.datamodule.hparams.download, loaded.datamodule.hparams.mirrors) == (False, None)
    assert loaded.datamodule.hparams.num_workers == 0
    with pytest.raises(DataError, match="data.download=false"):
        loaded.datamodule.setup()
    assert not target.exists()
    # the user's own override turns downloading back on
    assert open_run(path, data={"download": True}).datamodule.hparams.download is True


def interrupt_then_resume(tmp_path, tiny_mnist, returncode: int, *stop_overrides: str) -> dict:
    """Train straight through; train again, stopped by the callback ``stop_overrides`` add (the
    process exits with ``returncode``); run the printed resume command; check both runs end at the
    same numbers. Returns the interrupt checkpoint, loaded."""
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    common = ["trainer.max_epochs=4", "data.batch_size=16", "seed=3", QUIET]  # 6 batches per epoch
    straight = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'straight'}", env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    stopped = run_cli("train.py", *common, *stop_overrides, f"paths.log_dir={tmp_path / 'stopped'}", env=env)
    assert stopped.returncode == returncode, stopped.stderr[-2000:]
    (printed,) = re.findall(r"Resume with: (.+)", stopped.stderr)
    interrupted = next((tmp_path / "stopped").glob("train/runs/*/checkpoints/interrupted.ckpt"))
    assert printed.endswith(f"\"ckpt_path='{interrupted}'\"")
    checkpoint = torch.load(interrupted, weights_only=True)

    resumed = run_printed(printed, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = newest_summary(tmp_path / "straight"), newest_summary(tmp_path / "stopped")
    assert b["epochs"] == 4
    for key in ("val/mse", "val/mse_best", "train/mse"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    return checkpoint


# steps_per_call=4: the signal comes as the epoch's first chunk (4 of its 6 batches) starts, and the
# run stops once that chunk is done, so the straight run (one batch per call) also shows that
# chunking trains exactly as it does. (A signal during the epoch's last chunk lets the epoch finish:
# validation is one chunk, and the run stops at the epoch's end.)
@pytest.mark.slow
@pytest.mark.parametrize(("steps_per_call", "stop_at"), [(1, 3), (4, 0)])
def test_sigterm_mid_epoch_then_the_printed_command_ends_where_an_uninterrupted_run_does(
    tmp_path, tiny_mnist, steps_per_call, stop_at
):
    checkpoint = interrupt_then_resume(
        tmp_path,
        tiny_mnist,
        143,
        f"fast.steps_per_call={steps_per_call}",
        "+callbacks.stop._target_=fault_callbacks.SignalAt",
        "+callbacks.stop.epoch=2",
        f"+callbacks.stop.batch={stop_at}",
    )
    assert checkpoint["aelab_epoch_sums"]["count"] > 0


@pytest.mark.slow
def test_a_checkpoint_from_the_middle_of_an_epoch_resumes_on_the_loop_that_saved_it(tmp_path, tiny_mnist):
    """Stopped by SIGTERM on Lightning's plain loop in the middle of epoch 2, then resumed by a
    command that leaves the loop to fast.enabled=auto (a resume takes fast.* from its own command):
    the plain loop resumes it, as only it can exactly, and the run ends where an uninterrupted one
    does."""
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    common = ["trainer.max_epochs=3", "data.batch_size=16", "seed=3", QUIET]
    straight = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'straight'}", env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    stop = ["+callbacks.stop._target_=fault_callbacks.SignalAt", "+callbacks.stop.epoch=1", "+callbacks.stop.batch=3"]
    log_dir = f"paths.log_dir={tmp_path / 'stopped'}"
    stopped = run_cli("train.py", *common, "fast.enabled=false", *stop, log_dir, env=env)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    (interrupted,) = (tmp_path / "stopped").glob("train/runs/*/checkpoints/interrupted.ckpt")
    resumed = run_cli("train.py", *common, f"ckpt_path={interrupted}", log_dir, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_log = "".join(p.read_text() for p in (tmp_path / "stopped").glob("train/runs/*/train.log"))
    assert (
        "training loop: Lightning's plain loop on cpu (not the fast path: the checkpoint was saved in the middle "
        "of an epoch on this loop, the one that resumes it exactly)"
    ) in run_log
    a, b = newest_summary(tmp_path / "straight"), newest_summary(tmp_path / "stopped")
    assert b["epochs"] == 3
    for key in ("val/mse", "val/mse_best", "train/mse"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key


# 96 images in batches of 16: 6 batches an epoch, in chunks of 4 and 2 on the fast path
@pytest.mark.slow
@pytest.mark.parametrize(
    ("pressed_in", "steps", "epoch_batches", "images"),
    [
        (15, 16, 4, 64),  # epoch 2's third batch, in its first chunk: the whole chunk is done first
        (11, 12, 0, 0),  # epoch 1's last chunk: the epoch is finished, validated and saved first
    ],
)
def test_ctrl_c_in_the_middle_of_a_chunk_then_the_printed_command_ends_where_an_uninterrupted_run_does(
    tmp_path, tiny_mnist, pressed_in, steps, epoch_batches, images
):
    """Ctrl-C in the loss of a training batch, inside a training_step call of the fast path. It
    takes effect at the next call, once Lightning has counted this one, so the checkpoint's
    weights, sums and batch counts agree."""
    checkpoint = interrupt_then_resume(
        tmp_path,
        tiny_mnist,
        1,
        "fast.steps_per_call=4",
        "model.objective._target_=fault_callbacks.CtrlCInLoss",
        f"+model.objective.batch={pressed_in}",
        f"+model.objective.once={tmp_path / 'pressed'}",
    )
    assert checkpoint["global_step"] == steps
    assert checkpoint["aelab_epoch_sums"]["batches"] == epoch_batches
    assert checkpoint["aelab_epoch_sums"]["count"] == images
    assert checkpoint["MNISTLikeDataModule"] == {"epoch_batches_done": epoch_batches}
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == steps


def test_an_argument_of_a_users_own_class_is_checked_by_that_class_not_refused(tmp_path):
    from aelab.config import validate

    from conftest import compose_config

    cfg = compose_config(
        "train",
        tmp_path,
        ["+trainer.log_every_n_steps=5", "+logger.csv={_target_: lightning.pytorch.loggers.CSVLogger, save_dir: x}"],
    )
    validate(cfg)
    cfg = compose_config(
        "train", tmp_path, ["+logger.csv={_target_: lightning.pytorch.loggers.CSVLogger, save_dir: x, colour: red}"]
    )
    with pytest.raises(
        ConfigError,
        match=r"^logger.csv.colour='red' is invalid: colour is not an argument of "
        r"lightning.pytorch.loggers.CSVLogger; remove it$",
    ):
        validate(cfg)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the held-open ``.lock`` aside) by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("override", ["model.latent_dim=5", "seed=7"])
def test_a_refused_run_leaves_the_finished_run_it_protects_byte_for_byte(tmp_path, trained, capfd, override):
    """Training into a finished run's folder with other settings is refused before anything is
    written there: its config copies, its log, its summary and checkpoints stay as they were."""
    run_dir = trained.parent.parent
    before = folder_bytes(run_dir)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log"} <= set(before)
    data = json.loads((run_dir / "run_summary.json").read_text())["data_dir"]
    args = [f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir.parent.parent.parent}", override, QUIET]
    code, stderr, _ = run_in_process("train", args, capfd, {"AELAB_DATA_DIR": data})
    assert code == 2, stderr[-3000:]
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"aelab: error: {run_dir} holds a finished run with other settings (")
    assert folder_bytes(run_dir) == before


def test_a_read_only_run_folder_is_named_and_results_dir_is_the_way_out(small_disk, tmp_path, trained, capfd):
    """eval and the other tasks that open a run write into its folder: where that is read-only
    (another user's runs, a mounted archive), the line names that folder and the key that works."""
    disk = small_disk("32m")
    run = disk / "run"
    shutil.copytree(trained.parent.parent, run)
    small_disk("32m", "ro")
    results = tmp_path / "results"
    for script, written in (("eval", "eval.json"), ("encode", "exports/latents-test.npz")):
        args = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"paths.log_dir={tmp_path / 'logs'}"]
        code, stderr, _ = run_in_process(script, args, capfd, {})
        assert code == 2, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == (
            f"aelab: error: {run} (the checkpoint's run folder) cannot be written to (Read-only file system); "
            "the task writes what it finds there: write it elsewhere with results_dir=/path, "
            "e.g. results_dir=/tmp/aelab-results"
        )
        code, stderr, _ = run_in_process(script, [*args, f"results_dir={results}"], capfd, {})
        assert code == 0, stderr[-3000:]
        assert (results / written).is_file()
