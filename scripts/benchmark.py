"""Seconds per epoch, side by side, on the same data, model, batch size and epochs:

  (a) the article's pipeline: torchvision MNIST + ToTensor/Normalize/per-image .to(device),
      DataLoader(batch_size=256, shuffle=True), a plain loop that reads each step's loss;
  (b) a plain PyTorch loop on device-resident tensors: the floor without Lightning;
  (g) GPU only: the same plain loop with its whole training epoch captured as one CUDA graph
      (capturable fused AdamW, a device permutation copied into the graph's static index): the
      floor for the graph path;
  (c) aelab's own training: train(cfg), the real Trainer path with its loggers and callbacks, on
      the fast path where the run allows it (fast.enabled=auto, the default);
  (p) the same on Lightning's plain loop (fast.enabled=false): what the fast path saves.

Each epoch is a training pass plus a validation pass; one warm-up epoch is not timed, and each
variant is timed by its fastest epoch, as timeit does: on a shared machine noise only ever adds,
and one epoch differs from the next by 10 % here (the medians are in the JSON too). With
``--rounds N`` every variant runs N times, interleaved (b c b c ...), and is timed by its fastest
epoch of all: this machine also has slow minutes, and a ratio of two variants timed minutes
apart moved by 10 % from one invocation to the next. The ratios to (b) are also printed round by
round (each round's fastest epochs, seconds apart), with their median: a slow stretch that falls
on one round moves that round's ratio only. The data is the official split the data
folder holds (60,000 / 10,000 for MNIST). Example:

  python scripts/benchmark.py --models mlp conv --device cpu --epochs 3
  python scripts/benchmark.py --models mlp --variants b c --epochs 3 --rounds 3
  python scripts/benchmark.py --device cuda --variants a b g c --sweep   # on a GPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab.data import normalize
from aelab.data.batches import gather
from aelab.models.backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from aelab.names import VAL_MSE
from aelab.quiet import no_gpu_probe_per_step

MNIST = (1, 28, 28)

REPO = Path(__file__).resolve().parents[1]
SEED = 42
BATCH = 256


def build(model: str) -> nn.Module:
    torch.manual_seed(SEED)
    if model == "mlp":
        return nn.Sequential(MLPEncoder(MNIST, 3), MLPDecoder(MNIST, 3))
    return nn.Sequential(ConvEncoder(MNIST), ConvDecoder(MNIST))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        return compose(config_name="train", overrides=overrides)


def datamodule_for(data: str, data_dir: Path):
    """The datamodule ``data=<data> data.data_dir=<data_dir>`` gives, set up."""
    from hydra.utils import instantiate

    datamodule = instantiate(compose_train([f"data={data}", f"data.data_dir={data_dir}", "data.download=false"]).data)
    datamodule.setup()
    return datamodule


def benchmark_copy(data: str, data_dir: Path, tile_to: int | None, workdir: Path) -> Path:
    """A copy of the dataset as plain IDX files (torchvision's class, used by (a), reads only
    those), its training split optionally repeated to ``tile_to`` images."""
    from aelab.data.datasets import SPLIT_FILES
    from aelab.data.idx import write_idx

    datamodule = datamodule_for(data, data_dir)
    raw = workdir / "data" / datamodule.raw_dir.relative_to(datamodule.source)
    for split, (images_file, labels_file) in SPLIT_FILES.items():
        images, labels = (t.numpy() for t in datamodule.split(split))
        images = images[:, 0]  # the datamodule holds (N, 1, H, W); an IDX file of MNIST's kind (N, H, W)
        if split == "train" and tile_to:
            reps = -(-tile_to // len(images))
            images, labels = np.tile(images, (reps, 1, 1))[:tile_to], np.tile(labels, reps)[:tile_to]
        write_idx(raw / images_file, images)
        write_idx(raw / labels_file, labels)
    return workdir / "data"


def article_pipeline(model_name: str, data: str, data_dir: Path, device: str, epochs: int) -> tuple[list[float], float]:
    import torchvision.datasets
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from aelab.data import DATASETS

    dataset = getattr(torchvision.datasets, DATASETS[data].torchvision_class)

    transform = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
            transforms.Lambda(lambda x: x.to(device)),
        ]
    )
    train_dl = DataLoader(dataset(str(data_dir), train=True, transform=transform), batch_size=BATCH, shuffle=True)
    val_dl = DataLoader(dataset(str(data_dir), train=False, transform=transform), batch_size=BATCH, shuffle=False)
    model = build(model_name).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    times, val = [], float("nan")
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        model.train()
        for x, _ in train_dl:
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), x)
            loss.backward()
            optimizer.step()
            loss.item()  # the article records every step's loss (torch_snippets Report.record)
        val = evaluate(model, ((x, None) for x, _ in val_dl))
        sync(device)
        times.append(time.perf_counter() - start)
    return times, val


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> float:
    model.eval()
    sse, count = 0.0, 0
    total = None
    for x, _ in batches:
        part = F.mse_loss(model(x), x, reduction="sum")
        total = part if total is None else total + part
        count += x.numel()
    sse = float(total)
    return sse / count


def resident_images(data: str, data_dir: Path, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and test images (uint8) on ``device``: what (b) and (g) slice batches from."""
    dm = datamodule_for(data, data_dir)
    return dm.split("train", device)[0], dm.split("test", device)[0]


def evaluate_resident(model: nn.Module, test_images: torch.Tensor) -> float:
    return evaluate(model, ((normalize(test_images[i : i + BATCH]), None) for i in range(0, len(test_images), BATCH)))


def resident_loop(
    model_name: str, data: str, data_dir: Path, device: str, epochs: int, precision: str
) -> tuple[list[float], float]:
    train_images, test_images = resident_images(data, data_dir, device)
    model = build(model_name).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5, fused=True)
    generator = torch.Generator().manual_seed(SEED)
    times, val = [], float("nan")
    n = len(train_images)
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n, BATCH):
            x = normalize(gather(train_images, order[i : i + BATCH]))
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = F.mse_loss(model(x), x)
            loss.backward()
            optimizer.step()
        val = evaluate_resident(model, test_images)
        sync(device)
        times.append(time.perf_counter() - start)
    return times, val


def graph_loop(model_name: str, data: str, data_dir: Path, device: str, epochs: int) -> tuple[list[float], float]:
    """(g): the resident loop with each training epoch one CUDA graph, always fp32."""
    train_images, test_images = resident_images(data, data_dir, device)
    model = build(model_name).to(device)
    lr = torch.tensor(1e-3, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5, fused=True, capturable=True)
    generator = torch.Generator().manual_seed(SEED)
    n = len(train_images)
    bounds = [*range(0, n, BATCH), n]
    order = torch.randperm(n, generator=generator).to(device)  # the graph's static input

    def step(first: int, end: int) -> None:
        x = normalize(gather(train_images, order[first:end]))
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(x), x).backward()
        optimizer.step()

    # eager steps of both batch sizes on a side stream before capture: the optimiser's state exists
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for first, end in (bounds[:2], bounds[-2:]):
            step(first, end)
    torch.cuda.current_stream().wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    times, val = [], float("nan")
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        model.train()
        order.copy_(torch.randperm(n, generator=generator))
        if epoch == 0:
            with torch.cuda.graph(graph):
                for first, end in itertools.pairwise(bounds):
                    step(first, end)
                optimizer.zero_grad(set_to_none=True)
        graph.replay()
        val = evaluate_resident(model, test_images)
        sync(device)
        times.append(time.perf_counter() - start)
    return times, val


def time_sweep(data: str, data_dir: Path) -> float:
    """Wall seconds of the seed sweep as a user types it, from the shell to its report."""
    env = {**os.environ, "AELAB_DATA_DIR": str(data_dir)}
    with tempfile.TemporaryDirectory() as logs:
        command = [sys.executable, str(REPO / "src" / "train.py"), "-m", "model.latent_dim=2,3,5,10,50"]
        command += [f"data={data}", f"paths.log_dir={logs}"]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def aelab_training(
    model_name: str,
    data: str,
    data_dir: Path,
    device: str,
    epochs: int,
    workdir: Path,
    precision: str,
    extra: list[str],
) -> tuple[list[float], float]:
    from omegaconf import open_dict

    from aelab.tasks.train import train

    cfg = compose_train(
        [
            f"model={model_name}",
            f"data={data}",
            f"trainer={'gpu' if device == 'cuda' else 'cpu'}",
            f"trainer.precision={precision}",
            f"trainer.max_epochs={epochs}",
            f"seed={SEED}",
            *extra,
        ]
    )
    with open_dict(cfg):
        cfg.paths.root_dir = str(workdir)
        cfg.paths.output_dir = str(workdir / f"aelab-{model_name}-{time.time_ns()}")
        cfg.data.data_dir = str(data_dir)
    summary = train(cfg)
    return summary["epoch_times_s"], summary[VAL_MSE]


def time_to_first_step(data: str, data_dir: Path) -> float:
    env = {**os.environ, "AELAB_DATA_DIR": str(data_dir)}
    with tempfile.TemporaryDirectory() as logs:
        env["AELAB_T0"] = repr(time.time())
        out = subprocess.run(
            [
                sys.executable,
                str(REPO / "src/train.py"),
                f"data={data}",
                "trainer.max_epochs=1",
                f"paths.log_dir={logs}",
                "+callbacks.first_step._target_=aelab.callbacks.FirstStepTimer",
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
    match = re.search(r"aelab: first training step ([0-9.]+) s", out)
    return float(match.group(1))


def time_help(runs: int = 5) -> float:
    """Median wall seconds of ``python src/train.py --help``: Hydra's TAB completion runs the script
    the same way on every TAB, so it must not wait for torch and Lightning to import."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "src/train.py"), "--help"], capture_output=True, check=True, cwd=REPO
        )
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every variant, interleaved")
    parser.add_argument("--data", default="mnist", help="a configs/data option: mnist, fashion_mnist, kmnist")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("AELAB_DATA_DIR"))
    parser.add_argument("--tile-to", type=int, default=None, help="repeat the training split to this many images")
    parser.add_argument(
        "--precision",
        default="32-true",
        choices=["32-true", "bf16-mixed"],
        help="for (b) (autocast) and (c) (trainer.precision); (a) is always fp32 like the article",
    )
    parser.add_argument("--variants", nargs="+", default=["a", "b", "c", "p"], choices=["a", "b", "g", "c", "p"])
    parser.add_argument("--aelab-args", nargs="*", default=[], help="extra overrides for (c), e.g. model.compile=true")
    parser.add_argument("--startup", action="store_true", help="also time python src/train.py to its first step")
    parser.add_argument("--sweep", action="store_true", help="also time the seed sweep -m model.latent_dim=2,3,5,10,50")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be positive integers, e.g. --epochs 3 --rounds 2")
    if args.data_dir is None:
        parser.error("--data-dir (or AELAB_DATA_DIR) must name the folder that holds the dataset")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch finds no CUDA GPU on this machine")
    if "g" in args.variants and args.device != "cuda":
        parser.error("--variants g: the CUDA-graph floor needs --device cuda")

    # (a), (b) and (g) are plain PyTorch, whose optimiser steps do not probe for a GPU; this process
    # imported Lightning (through aelab), whose setting would make them probe on every step
    # (aelab.quiet.no_gpu_probe_per_step)
    no_gpu_probe_per_step()
    total = args.epochs + 1
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "device": args.device,
        "data": f"{Path(args.data_dir).name}" + (f" tiled to {args.tile_to} (timing stand-in)" if args.tile_to else ""),
        "precision_b_c": args.precision,
        "epochs_timed": args.epochs,
        "rounds": args.rounds,
        "batch_size": BATCH,
        "aelab_args": args.aelab_args,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_dir = benchmark_copy(args.data, Path(args.data_dir), args.tile_to, workdir)
        runners = {
            "a": lambda m: article_pipeline(m, args.data, data_dir, args.device, total),
            "b": lambda m: resident_loop(m, args.data, data_dir, args.device, total, args.precision),
            "g": lambda m: graph_loop(m, args.data, data_dir, args.device, total),
            "c": lambda m: aelab_training(
                m, args.data, data_dir, args.device, total, workdir, args.precision, args.aelab_args
            ),
            "p": lambda m: aelab_training(
                m,
                args.data,
                data_dir,
                args.device,
                total,
                workdir,
                args.precision,
                [*args.aelab_args, "fast.enabled=false"],
            ),
        }
        for model in args.models:
            timed: dict[str, list[list[float]]] = {variant: [] for variant in args.variants}
            vals: dict[str, float] = {}
            # rounds interleave the variants, so that a slow minute of this shared machine falls
            # on all of them rather than on one
            for _ in range(args.rounds):
                for variant in args.variants:
                    # aelab uses TF32 matmuls on a GPU (AutoEncoder.setup), and the setting outlives
                    # the run: the floors get it too, the article's pipeline never
                    torch.set_float32_matmul_precision("highest" if variant == "a" else "high")
                    times, vals[variant] = runners[variant](model)
                    timed[variant].append([round(t, 4) for t in times])
                    print(f"{model} ({variant}) {min(times[1:]):.3f} s/epoch  val MSE {vals[variant]:.4f}", flush=True)
            row = {}
            for variant, rounds in timed.items():
                epochs = [t for times in rounds for t in times[1:]]  # each round's warm-up left out
                row[variant] = {
                    "s_per_epoch": min(epochs),
                    "median_s_per_epoch": statistics.median(epochs),
                    "epoch_times_s": rounds,
                    "val_mse": vals[variant],
                }
            seconds = {k: v["s_per_epoch"] for k, v in row.items()}
            for over, under in (("a", "c"), ("c", "b"), ("c", "g"), ("p", "b")):
                if over in seconds and under in seconds:
                    row[f"{over}_over_{under}"] = seconds[over] / seconds[under]
                    # the same ratio within each round, whose two runs are seconds apart: a slow
                    # stretch of the machine that falls on one round moves that round's ratio only
                    row[f"{over}_over_{under}_by_round"] = [
                        round(min(o[1:]) / min(u[1:]), 3) for o, u in zip(timed[over], timed[under], strict=True)
                    ]
            results["models"][model] = row
        if args.startup:
            results["time_to_first_step_s"] = time_to_first_step(args.data, Path(args.data_dir))
            results["help_s"] = time_help()
        if args.sweep:
            results["sweep_s"] = time_sweep(args.data, Path(args.data_dir))

    print(
        f"\n{results['machine']}; device {args.device}; data {results['data']}; precision (b),(c) "
        f"{args.precision}; the fastest of {args.epochs} epochs after 1 warm-up, in each of {args.rounds} "
        f"round(s); batch {BATCH}"
    )
    print(
        f"{'model':6} {'(a) article':>12} {'(b) floor':>10} {'(g) graph':>10} {'(c) aelab':>10} {'(p) plain':>10}"
        f" {'(a)/(c)':>8} {'(c)/(b)':>8} {'(c)/(g)':>8} {'(p)/(b)':>8}   val MSE"
    )
    for model, row in results["models"].items():

        def cell(variant: str, row: dict = row) -> str:
            return f"{row[variant]['s_per_epoch']:.3f}" if variant in row else "-"

        def ratio(key: str, row: dict = row) -> str:
            return f"{row[key]:.2f}" if key in row else "-"

        vals = " ".join(f"{v} {row[v]['val_mse']:.4f}" for v in "abgcp" if v in row)
        times = f"{cell('a'):>12} {cell('b'):>10} {cell('g'):>10} {cell('c'):>10} {cell('p'):>10}"
        ratios = " ".join(f"{ratio(k):>8}" for k in ("a_over_c", "c_over_b", "c_over_g", "p_over_b"))
        print(f"{model:6} {times} {ratios}   {vals}")
    for model, row in results["models"].items():
        for over in ("c", "p"):
            by_round = row.get(f"{over}_over_b_by_round", [])
            if len(by_round) > 1:
                shown = " ".join(f"{r:.2f}" for r in by_round)
                print(f"{model} ({over})/(b) round by round: {shown} (median {statistics.median(by_round):.2f})")
    if "time_to_first_step_s" in results:
        print(f"time from `python src/train.py` to the first training step: {results['time_to_first_step_s']:.2f} s")
        print(f"`python src/train.py --help`: {results['help_s']:.2f} s (median of 5)")
    if "sweep_s" in results:
        print(f"`python src/train.py -m model.latent_dim=2,3,5,10,50`: {results['sweep_s']:.1f} s wall")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
