"""Warnings and log lines that are known and not actionable for a user, silenced in one place:
by every task, and again in each DDP process a fit spawns (it starts without its parent's filters).
And one setting of the same kind for a process that trains: ``no_gpu_probe_per_step``."""

from __future__ import annotations

import logging
import os
import warnings

# set to "1" by ``import lightning`` (lightning/fabric/__init__.py)
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def no_gpu_probe_per_step() -> None:
    """On a machine without a GPU, stop every optimiser step from probing for one.

    ``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that torch answers "is CUDA
    available?" through NVML without initialising CUDA, which would spoil a later ``fork``
    (pytorch/pytorch#83973). torch caches that answer only once CUDA is initialised, and
    ``Optimizer.step`` asks it on every step (its CUDA-graph capture check): with no GPU, CUDA is
    never initialised, and each step loads NVML again. That was 0.27 ms of a 0.5 ms AdamW step on
    this project's 2-core CPU, 63 ms of an MLP epoch. Where there is no GPU there is no CUDA to
    spoil, and torch's own check is cached. Called in every process that trains (``AutoEncoder.setup``).
    A run on the CPU of a machine that has a GPU keeps the setting, and so still probes per step:
    a later fork may need CUDA there.
    """
    import torch  # here: the CLI imports this module, and --help must not wait for torch

    if os.environ.get(NVML_CHECK) == "1" and not torch.cuda.is_available():
        del os.environ[NVML_CHECK]


def quiet_known_warnings() -> None:
    # Lightning's own pytree call under torch >= 2.10, and a hint about step logging, which aelab
    # does not use (it logs once per epoch): neither is actionable for a user.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")
    # under DDP val/mse_best is the best of epoch means torchmetrics has already added across processes
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True\)")
    # the fast path's CUDA graphs: their eager warm-up steps run a capturable optimiser uncaptured on purpose
    warnings.filterwarnings("ignore", message=r"This instance was constructed with capturable=True")
    # debug=overfit: Lightning says it turned off the shuffle of loaders it cannot see into (the
    # val loader never shuffles; the datamodule stops the train loader's shuffle itself)
    warnings.filterwarnings("ignore", message=r"You requested to overfit but enabled \w+ dataloader shuffling")
    # umap-learn: a fixed random_state (which aelab always sets, for reproducibility) means one thread
    warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden to 1 by setting random_state")
    # openTSNE announces at INFO that it was given an initialisation it was given
    logging.getLogger("openTSNE").setLevel(logging.WARNING)
    # advertisements for Lightning's cloud services, printed on every run
    # (addFilter adds a filter once, however often a task calls this)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)


def _not_an_advert(record: logging.LogRecord) -> bool:
    message = record.getMessage().lower()
    # and the note that configs/callbacks adds its own ModelSummary (to set its depth)
    return not any(noise in message for noise in ("litlogger", "litmodels", "already configured with model summary"))
