"""How this process was started: alone (it spawns its own DDP processes inside the fit), or as
one of several that torchrun or SLURM's srun started for one run. Read from the environment, as
Lightning reads it, without importing Lightning (``--help`` stays light)."""

from __future__ import annotations

import importlib
import os
import re
import time
from pathlib import Path

from aelab.errors import AelabError, ConfigError


def launched_externally() -> bool:
    """One of the processes torchrun or srun started for one DDP run (Lightning then only connects
    them: ``TorchElasticEnvironment``, ``SLURMEnvironment``)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return True
    return env.get("SLURM_NTASKS", "1") not in ("", "1") and "SLURM_STEP_ID" in env and "SLURM_PROCID" in env


def ddp_strategy() -> str:
    """``${ddp_strategy:}`` (configs/trainer/ddp*.yaml): Lightning's ``ddp_spawn`` for a process
    started alone, whose processes are spawned inside the fit; never its ``ddp``, which starts them
    by running the command again, a second Hydra app per process (one output directory each,
    stuck inside ``-m``). Under torchrun or srun the processes exist already: ``ddp`` only
    connects them, where ``ddp_spawn`` would spawn more inside each."""
    return "ddp" if launched_externally() else "ddp_spawn"


def launched_rank() -> int:
    """This process's rank in a launch that started several (torchrun, SLURM's srun), read where
    Lightning reads it; 0 for a process started alone, which spawns its own DDP processes."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def run_stamp(pattern: str) -> str:
    """``${run_stamp:%Y-%m-%d_%H-%M-%S}``: the start time a run's folder is named by, the same in
    every process of one launch. Under torchrun or srun each process composes its own config, and a
    clock read in each would give each process a folder of its own: on one node it is the start of
    torchrun's agent (the processes' parent); across nodes, the launch's id."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        if env.get("WORLD_SIZE") != env.get("LOCAL_WORLD_SIZE"):
            if env["TORCHELASTIC_RUN_ID"] in ("", "none"):
                raise ConfigError(
                    "torchrun across nodes needs a launch id that names the run's folder: "
                    "torchrun --rdzv-id=<a new id per run> ..."
                )
            return "torchrun-" + re.sub(r"[^A-Za-z0-9._-]+", "_", env["TORCHELASTIC_RUN_ID"])
        return time.strftime(pattern, time.localtime(_start_time(os.getppid())))
    if launched_externally():  # by srun: every task of the job step shares its ids
        return f"slurm-{env.get('SLURM_JOB_ID', '')}.{env['SLURM_STEP_ID']}"
    return time.strftime(pattern)


def _start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    boot = next(
        float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def cluster_plugins(strategy: object) -> list:
    """Lightning plugins a spawning fit needs: inside a SLURM job of one task, Lightning would read
    every spawned process's rank from SLURM (all 0); its own environment numbers them instead."""
    if str(strategy) != "ddp_spawn" or "SLURM_NTASKS" not in os.environ or launched_externally():
        return []
    from lightning.fabric.plugins.environments import LightningEnvironment

    return [LightningEnvironment()]


def raised_in_spawned_process(error: BaseException) -> BaseException:
    """What a process spawned by the fit raised, as the error it was there (torch only passes its
    traceback as text): an aelab error keeps its one-line message; anything else stays as it is."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    name, _, message = last.partition(": ")
    module, _, cls = name.rpartition(".")
    try:
        raised = getattr(importlib.import_module(module), cls) if module else None
    except (ImportError, ValueError):
        return error
    if isinstance(raised, type) and issubclass(raised, AelabError):
        return raised(message)
    return error
