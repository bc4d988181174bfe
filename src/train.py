"""Train an autoencoder: ``python src/train.py model=conv trainer=gpu``."""

import hydra
from omegaconf import DictConfig

from aelab.cli import one_line_errors, run_task


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_task("train", cfg)


if __name__ == "__main__":
    with one_line_errors():
        main()
