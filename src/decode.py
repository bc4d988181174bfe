"""Images from latents (a file, or a sweep over two axes): ``python src/decode.py ckpt_path=... latents=...``."""

import hydra
from omegaconf import DictConfig

from aelab.cli import one_line_errors, run_task


@hydra.main(config_path="../configs", config_name="decode", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_task("decode", cfg)


if __name__ == "__main__":
    with one_line_errors():
        main()
