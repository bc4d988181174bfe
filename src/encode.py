"""A split's latents, labels and per-image errors: ``python src/encode.py ckpt_path=.../last.ckpt``."""

import hydra
from omegaconf import DictConfig

from aelab.cli import one_line_errors, run_task


@hydra.main(config_path="../configs", config_name="encode", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_task("encode", cfg)


if __name__ == "__main__":
    with one_line_errors():
        main()
