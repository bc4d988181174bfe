"""Suspect labels, outliers and similar images from a trained run: ``python src/audit.py ckpt_path=last``."""

import hydra
from omegaconf import DictConfig

from aelab.cli import one_line_errors, run_task


@hydra.main(config_path="../configs", config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_task("audit", cfg)


if __name__ == "__main__":
    with one_line_errors():
        main()
