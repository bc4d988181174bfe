"""t-SNE of a conv AE's latents: openTSNE (FFT-accelerated) against scikit-learn, same data.

  python scripts/benchmark_tsne.py --ckpt logs/train/runs/<conv run>/checkpoints/last.ckpt

Encodes the test split (10,000 images, the points src/analyze.py maps; 256 numbers each for the conv AE's
64x2x2 bottleneck) and runs both with perplexity 30 and 1,000 iterations in all (250 of them
early exaggeration), on all cores, openTSNE with aelab's settings (aelab.report.metrics.TSNE_SETTINGS).
Prints seconds and the trustworthiness of both maps (on the same 5,000-point subset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aelab.models.inference import encode_images
from aelab.report.metrics import TSNE_SETTINGS, trustworthiness
from aelab.runs import open_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data-dir", default=None, help="default: the data the checkpoint was trained on")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    loaded = open_run(args.ckpt, data={"data_dir": args.data_dir})
    datamodule = loaded.datamodule
    datamodule.setup()
    images = datamodule.split("test")[0]  # what src/analyze.py maps
    z, _ = encode_images(loaded.model, images, torch.device("cpu"), 1024)
    print(f"latents: {z.shape[0]} x {z.shape[1]} ({datamodule.name}), {os.cpu_count()} cores", flush=True)

    from openTSNE import TSNE as OpenTSNE
    from sklearn.manifold import TSNE as SkTSNE

    results = {"n": int(z.shape[0]), "dims": int(z.shape[1]), "cores": os.cpu_count()}
    sample = np.random.default_rng(0).permutation(len(z))[:5000]
    runs = {
        "openTSNE (FFT)": lambda: np.asarray(OpenTSNE(**TSNE_SETTINGS, n_jobs=-1, random_state=args.seed).fit(z)),
        "scikit-learn (Barnes-Hut)": lambda: SkTSNE(
            perplexity=30, max_iter=1000, n_jobs=-1, random_state=args.seed
        ).fit_transform(z),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        embedded = run()
        seconds = time.perf_counter() - start
        trust = trustworthiness(z[sample], embedded[sample])
        results[name] = {"seconds": seconds, "trustworthiness_5000": trust}
        print(f"{name:28s} {seconds:7.1f} s   trustworthiness {trust:.4f}", flush=True)
    ratio = results["scikit-learn (Barnes-Hut)"]["seconds"] / results["openTSNE (FFT)"]["seconds"]
    print(f"openTSNE is {ratio:.1f}x faster")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
