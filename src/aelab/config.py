"""One schema for every config key of train, eval and analyze, checked before any work starts.

Each key has a rule (type, range or allowed values); the error for a bad value is generated from
the rule, so every message has one shape: ``<key>=<value as typed in Hydra> is invalid: it must be
<what the rule allows>``. A key no rule covers is accepted only as an argument of the class its
config builds (``_target_``: the Trainer, a user's own model or callback), which checks it; any
other key is refused as unknown. Every task runs ``validate``: a key means the same in each.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aelab.data.datasets import DATASETS
from aelab.errors import ConfigError, hydra_value, is_int
from aelab.fast import STEPS_PER_CALL_WORDS
from aelab.launch import launched_externally
from aelab.loggers import EXTRAS
from aelab.paths import SAFE_NAME_RULE, checkout, is_safe_name
from aelab.registry import check_importable, import_targets
from aelab.report.audit import OUTLIER_METHODS, SUSPECT_METHODS
from aelab.report.metrics import FEWEST_TRUSTWORTHINESS_POINTS
from aelab.report.plots import FIGURE_FORMATS
from aelab.rules import (
    Either,
    Flag,
    Group,
    Int,
    IntList,
    ListOf,
    Metric,
    Number,
    OneOf,
    Open,
    Rule,
    Text,
    TextList,
    Unsupported,
    argument_rule,
    message,
    type_hints,
)

# 64-true and bf16-true are not offered: the data arrive as float32 and meet float64/bf16 weights
PRECISIONS = ("32-true", 32, "bf16-mixed", "16-mixed")  # trainer.precision=32 arrives as an integer
GPU_ACCELERATORS = ("gpu", "cuda")
ACCELERATORS = ("cpu", *GPU_ACCELERATORS, "auto")
MAPS = ("tsne", "umap", "pca", "all")


@dataclass(frozen=True)
class Name(Rule):
    def accepts_value(self, value: Any) -> bool:
        return is_safe_name(str(value) if is_int(value) else value)

    def describe(self) -> str:
        return SAFE_NAME_RULE


POSITIVE = Int(min=1)
FRACTION_OR_COUNT = Either(rules=(Number(min=0, max=1), Int(min=0)))

SCHEMA: dict[str, Rule] = {
    "task_name": Name(),
    "seed": Int(min=0, max=2**32 - 1),
    "ckpt_path": Text(null=True),
    "sweep_dir": Text(null=True),
    "results_dir": Text(null=True),
    # train (its sweep and search reports), analyze, audit
    "figure_format": OneOf(values=FIGURE_FORMATS),
    "figure_dpi": Int(min=50, max=1200),
    # analyze
    "map": OneOf(values=MAPS),
    "knn_k": POSITIVE,
    "umap_gmm": Flag(),
    "trustworthiness_points": Int(min=FEWEST_TRUSTWORTHINESS_POINTS),
    # audit
    "suspect_method": OneOf(values=SUSPECT_METHODS),
    "outlier_method": OneOf(values=OUTLIER_METHODS),
    "queries": IntList(null=True),
    "neighbours": Int(min=1, max=32),
    "top": Int(min=1, max=256),
    # encode, decode: a split of the datamodule (audit ranks official splits: AUDIT_SPLIT)
    "split": OneOf(values=("train", "val", "test")),
    "csv": OneOf(values=(True, False, "auto")),
    "latents": Text(null=True),
    "axes": IntList(length=2),
    "steps": Int(min=2, max=64),
    "max_images": Int(min=1, max=1024),
    # export
    "check_images": Int(min=1, max=10000),
    # train: the training loop (aelab.fast)
    "fast": Group(what="the training loop's settings (e.g. fast.enabled=false)"),
    "fast.enabled": Either(rules=(Flag(), OneOf(values=("auto",)))),
    "fast.steps_per_call": Either(rules=(POSITIVE, OneOf(values=STEPS_PER_CALL_WORDS))),
    "fast.cuda_graph": Flag(),
    # data
    "data": Group(what="a group of settings (e.g. data=mnist)"),
    "data.dataset": OneOf(values=tuple(DATASETS)),
    "data.data_dir": Text(),
    "data.batch_size": POSITIVE,
    "data.loader": OneOf(values=("device", "dataloader")),
    "data.num_workers": Int(min=0),
    "data.keep_classes": IntList(null=True),
    "data.val_size": Int(min=1, null=True),
    "data.seed": Int(min=0, max=2**32 - 1),
    "data.download": Flag(),
    "data.mirrors": TextList(null=True),
    # data=folder, data=arrays (aelab.data.own)
    "data.root": Text(),
    "data.path": Text(),
    "data.size": ListOf(item=Int(min=1), length=2, null=True),
    "data.channels": OneOf(values=(1, 3), null=True),
    "data.classes": TextList(null=True),
    "data.test_fraction": Number(above=0, max=1),
    "data.split_seed": Int(min=0, max=2**32 - 1),
    # model: the backbone checks model.latent_dim=null (fine for conv, not for mlp)
    "model": Group(what="a group of settings (e.g. model=conv)"),
    "model.latent_dim": Int(min=1, null=True, null_note=" (model=conv: its 64x2x2 map as the code)"),
    "model.encoder": Open(),
    "model.decoder": Open(),
    "model.optimizer.lr": Number(above=0),
    "model.optimizer.weight_decay": Number(min=0),
    "model.optimizer.fused": Flag(null=True),
    "model.optimizer": Open(),
    "model.scheduler": Open(),
    "model.objective": Group(what="a group of settings (e.g. objective=vae)"),
    # trainer
    "trainer": Group(what="a group of settings (e.g. trainer=cpu)"),
    "trainer.accelerator": OneOf(values=ACCELERATORS),
    # a count, -1 (all), "auto", or which GPUs: [0, 1]
    "trainer.devices": Either(rules=(POSITIVE, OneOf(values=("auto", -1)), IntList())),
    "trainer.precision": OneOf(values=PRECISIONS),
    "trainer.min_epochs": Int(min=0, null=True),
    # null would mean Lightning's default of 1000 epochs, never what a user meant
    "trainer.max_epochs": POSITIVE,
    "trainer.max_steps": Int(min=-1),
    "trainer.check_val_every_n_epoch": POSITIVE,
    "trainer.num_sanity_val_steps": Int(min=-1),
    "trainer.deterministic": Either(rules=(Flag(), OneOf(values=("warn",)))),
    "trainer.limit_train_batches": FRACTION_OR_COUNT,
    "trainer.limit_val_batches": FRACTION_OR_COUNT,
    "trainer.limit_test_batches": FRACTION_OR_COUNT,
    "trainer.overfit_batches": FRACTION_OR_COUNT,
    "trainer.fast_dev_run": Either(rules=(Flag(), POSITIVE)),
    "trainer.default_root_dir": Text(),
    "trainer.gradient_clip_val": Number(min=0, null=True),
    "trainer.gradient_clip_algorithm": OneOf(values=("norm", "value"), null=True),
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.callbacks": Unsupported(reason="set in the callbacks group, e.g. +callbacks.name={_target_: ...}"),
    "trainer.logger": Unsupported(reason="set in the logger group, e.g. logger=csv"),
    "trainer.plugins": Unsupported(reason="not supported: aelab sets the checkpoint writer plugin itself"),
    # callbacks and loggers: each class checks its own arguments; these are read by aelab too
    "callbacks": Group(
        what="a group of settings (drop one callback with ~callbacks.<name>, e.g. ~callbacks.reconstruction_grid)"
    ),
    # which metrics a model logs depends on its objective's terms: the train task checks the name
    "callbacks.model_checkpoint.monitor": Metric(null=True),
    "callbacks.model_checkpoint.mode": OneOf(values=("min", "max")),
    "callbacks.model_checkpoint.save_top_k": Int(min=-1),
    "callbacks.progress_bar.refresh_rate": Int(min=0),
    "callbacks.reconstruction_grid.num_images": Int(min=1, max=64),
    "callbacks.*": Group(
        null=True,
        what="a config with a _target_, e.g. {_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/mse}",
    ),
    "logger": Group(null=True, what="a group of settings (e.g. logger=csv, or ~logger for none)"),
    "logger.*": Group(
        null=True, what="a config with a _target_, e.g. {_target_: lightning.pytorch.loggers.CSVLogger, save_dir: logs}"
    ),
    "paths": Group(what="a group of settings (e.g. paths.log_dir=/scratch/logs)"),
    # a free label for a run or sweep, e.g. +tag=baseline (it becomes part of sweep job names)
    "tag": Text(null=True),
    "paths.root_dir": Text(),
    "paths.data_dir": Text(),
    "paths.log_dir": Text(),
    "paths.output_dir": Text(),
}

# The audit ranks the dataset's own files (train, test or both), whose positions its indices count
AUDIT_SPLIT = OneOf(values=("test", "train", "all"))


def validate(cfg: DictConfig, task_rules: dict[str, Rule] | None = None) -> None:
    """Check every key of ``cfg`` against ``SCHEMA``, where ``task_rules`` (the calling task's own
    meaning of a key) take precedence; raise one ``ConfigError`` for the first bad one."""
    # eval and analyze start from data=from_checkpoint, where null means "as the checkpoint says"
    from_checkpoint = "data" in cfg and isinstance(cfg.data, DictConfig) and "_target_" not in cfg.data
    # The user's own config is trusted: importing what it names lets user classes register; the
    # model and data must be built from registered classes (checkpoints are rebuilt from them).
    for group in ("model", "data"):
        if isinstance(cfg.get(group), DictConfig):
            import_targets(OmegaConf.to_container(cfg[group], resolve=False), group)
    built: list[str] = []  # the groups that name a class to build
    # checked in order as each key resolves: a bad value is named before an interpolation that
    # reads it fails on it (model.encoder.hidden_dims before the decoder's mirror of it)
    for key, value in _leaves(cfg):
        if key.endswith("._target_"):
            check_importable(key, value)
            _check_extra_installed(key, value)
            built.append(key.removesuffix("._target_"))
        copied_from = _copied_from(cfg, key)
        rule = (task_rules or {}).get(key) or rule_of(cfg, key, typed=copied_from is None)
        target = _target_of_group(cfg, key)
        if rule is None:
            raise ConfigError(unknown_key_message(key, hydra_value(value), target=target))
        if from_checkpoint and key.startswith("data."):
            rule = replace(rule, null=True)
        if not rule.accepts(value):
            if variable := _environment_variable(cfg, key):
                raise ConfigError(
                    f"{variable}={hydra_value(value)} (an environment variable, read as {key}) is invalid: it must be "
                    f"{rule.allowed}; set it to one, or unset it"
                )
            raise ConfigError(message(key, value, rule))
        declared = argument_rule(target, key.rpartition(".")[2]) if copied_from and target else None
        if declared is not None and not declared.accepts(value):
            # reported where it was typed: model.latent_dim=null, not the encoder's copy of it
            raise ConfigError(f"{copied_from}={hydra_value(value)} is invalid for {key}: it must be {declared.allowed}")
    for path in built:
        _check_required_arguments(cfg, path)
    _check_combinations(cfg)


def rule_of(cfg: DictConfig, key: str, *, typed: bool = True) -> Rule | None:
    """The rule for ``key`` in ``cfg``; ``None`` if the key is unknown. A key without a rule of its
    own is known when the class its group builds (``_target_``) takes it as an argument, and is
    checked by the type that class declares for it (``argument_rule``) where it is ``typed`` here,
    not copied from another key by an interpolation (which is checked where it is typed)."""
    rule = SCHEMA.get(key)
    parent, _, name = key.rpartition(".")
    if name.startswith("_"):
        return rule or Open()  # _target_, _partial_, _convert_, _recursive_: Hydra's instantiation keys
    target = _target_of_group(cfg, key)
    if target is None:
        # inside a mapping a class takes as one argument (logger.mlflow.tags.run_dir): the class's to check
        return (
            rule or SCHEMA.get(f"{parent}.*") or (Open() if parent and isinstance(rule_of(cfg, parent), Open) else None)
        )
    # a group whose class varies (model.objective) takes only its class's arguments, even where
    # another class of the group gives the key a rule
    arguments = _arguments(target)
    if arguments is not None and name not in arguments and not isinstance(rule, Unsupported):
        return None
    if rule is None and typed:
        rule = argument_rule(target, name)
    return rule or Open()  # Open: the class checks its own argument


def unknown_key_message(key: str, shown: str, config: str = "", target: str | None = None) -> str:
    """``shown``: the value as the user typed it (``hydra_value`` of a composed one); ``config``
    names the task's config when Hydra found the key missing from it, ``target`` the class whose
    arguments the key's group holds."""
    group, _, name = key.rpartition(".")
    siblings = [k for k in SCHEMA if "*" not in k and k != key and k.rpartition(".")[0] == group]
    if target is not None:
        siblings += [f"{group}.{argument}" for argument in _arguments(target) or ()]
    close = difflib.get_close_matches(key, sorted(set(siblings)), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else "; remove it"
    what = f"an argument of {target}" if target else f"a setting of {config}" if config else "a setting aelab reads"
    return f"{key}={shown} is invalid: {name if target else key} is not {what}{hint}"


def _check_extra_installed(key: str, target: Any) -> None:
    """A logger from an optional extra (``aelab.loggers.EXTRAS``) needs that extra installed."""
    module, extra = EXTRAS.get(str(target), ("", ""))
    if module and not is_installed(module):
        owner = key.removesuffix("._target_")
        raise ConfigError(
            f"{owner} needs {module}, an optional extra of aelab: {install_command(extra)}; "
            f"or leave it out with ~{owner}, e.g. logger=tensorboard"
        )


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or the module blocked
        return False


def install_command(extra: str) -> str:
    """How to install an optional extra: a checkout installs from its lock (which holds every
    extra), an installed wheel from the index."""
    return "make install LOCK=requirements/all.lock" if checkout() else f"pip install 'aelab[{extra}]'"


def _target_of_group(cfg: DictConfig, key: str) -> str | None:
    group = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, group) if group else None
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target) if target else None


@functools.cache
def _parameters(target: str) -> dict[str, inspect.Parameter] | None:
    """The parameters ``target`` takes; ``None`` if it cannot be imported or inspected."""
    from hydra.utils import get_object

    try:
        # a class's signature is its __init__'s without self; () where it has no __init__ of its own
        return dict(inspect.signature(get_object(target)).parameters)
    except Exception:  # noqa: BLE001 - any failure to import or inspect is reported when building
        return None


def _arguments(target: str) -> tuple[str, ...] | None:
    """The keyword arguments ``target`` takes; ``None`` if it takes any (``**kwargs``) or cannot be imported."""
    parameters = _parameters(target)
    if parameters is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return tuple(parameters)


# a value of each plain type, for the example in a message
EXAMPLES: dict[Any, str] = {int: "10", float: "0.1", str: "name", bool: "true"}


# Arguments no config holds: the train task hands the datamodule's to the model, which hands them
# to its encoder and decoder (Lightning's ``Model(width=datamodule.width)``).
FROM_THE_DATA = ("image_shape",)


def _check_required_arguments(cfg: DictConfig, path: str) -> None:
    """The class ``path`` builds gets the arguments it cannot do without (a ``_partial_``'s first
    one, e.g. a scheduler's optimizer, comes when it is called)."""
    node = OmegaConf.select(cfg, path)
    target = str(node._target_)
    parameters = (_parameters(target) or {}).values()
    required = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is p.empty]
    for name in required[1:] if node.get("_partial_") else required:
        if name not in node and name not in FROM_THE_DATA:
            example = EXAMPLES.get(type_hints(target).get(name), "1")
            raise ConfigError(f"{path}.{name} is missing: {target} needs it; add it, e.g. +{path}.{name}={example}")


def _interpolation(cfg: DictConfig, key: str) -> str | None:
    """``key``'s text as written if it is an interpolation (``${a.b}``, ``${oc.env:NAME,...}``),
    ``None`` if its value was typed here."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or not OmegaConf.is_interpolation(node, name):
        return None
    raw = OmegaConf.to_container(node, resolve=False)
    return str(raw.get(name, "")) if isinstance(raw, dict) else ""


def _copied_from(cfg: DictConfig, key: str) -> str | None:
    """Where ``key``'s value comes from if it is an interpolation: the key it copies (``${a.b}``),
    ``""`` for any other interpolation (a resolver's result), ``None`` if it was typed here."""
    text = _interpolation(cfg, key)
    copied = re.fullmatch(r"\$\{([A-Za-z0-9_.]+)\}", text or "")
    return None if text is None else copied.group(1) if copied else ""


def _environment_variable(cfg: DictConfig, key: str) -> str | None:
    """The environment variable ``key``'s value was read from (``${oc.env:NAME,...}``, through copies)."""
    while copied := _copied_from(cfg, key):
        key = copied
    variable = re.match(r"\$\{oc\.env:(\w+)", _interpolation(cfg, key) or "")
    return variable.group(1) if variable else None


# what a ??? key's message gives as an example
MISSING_EXAMPLES = {"data.root": "/path/to/images", "data.path": "/path/to/images.npz"}


def _leaves(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key's resolved value, a list as one value; a failed interpolation names its key."""
    for key in cfg.keys():
        path = f"{prefix}{key!s}"
        if OmegaConf.is_missing(cfg, key):  # ??? in a config: a value only the user can give
            example = MISSING_EXAMPLES.get(path, "...")
            raise ConfigError(f"{path} is missing: this config needs it from you; give it, e.g. {path}={example}")
        try:
            node = cfg[key]
        except OmegaConfBaseException as err:
            unresolved = OmegaConf.to_container(cfg, resolve=False)
            raw = unresolved.get(key) if isinstance(unresolved, dict) else "?"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{path}={raw} cannot be resolved: {first}") from None
        if isinstance(node, DictConfig):
            yield path, {}
            yield from _leaves(node, f"{path}.")
        elif isinstance(node, ListConfig):
            try:
                yield path, OmegaConf.to_container(node, resolve=True)
            except OmegaConfBaseException as err:
                raise ConfigError(f"{path} cannot be resolved: {str(err).strip().splitlines()[0]}") from None
        else:
            yield path, node


def _check_combinations(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, and torch finds none on this machine; use trainer=cpu"
        )
    if device_of(cfg).type == "cpu" and trainer.get("precision") == "16-mixed":
        raise ConfigError("trainer.precision=16-mixed needs a GPU; on CPU use trainer.precision=bf16-mixed or 32-true")
    _check_process_launch(trainer, accelerator)
    min_epochs, max_epochs = trainer.get("min_epochs"), trainer.get("max_epochs")
    if is_int(min_epochs) and is_int(max_epochs) and min_epochs > max_epochs:
        raise ConfigError(
            f"trainer.min_epochs={min_epochs} is more than trainer.max_epochs={max_epochs}; "
            f"lower it, e.g. trainer.min_epochs={max_epochs}"
        )


# Lightning strategies that start their processes by running the command again (its "popen"
# launcher): one Hydra app per process, one output directory each, a hang inside -m
RELAUNCHING_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")


def _check_process_launch(trainer: DictConfig, accelerator: str) -> None:
    """More than one process is started inside the fit (trainer=ddp, ddp_sim) or by torchrun/srun,
    never by Lightning running the command again."""
    if launched_externally():
        return
    strategy = str(trainer.get("strategy", "auto"))
    devices = trainer.get("devices", 1)  # the schema allows a count, -1, "auto" or a list of GPUs
    if isinstance(devices, ListConfig):
        per_node = len(devices)
    elif devices in (-1, "auto"):
        per_node = torch.cuda.device_count() if accelerator in (*GPU_ACCELERATORS, "auto") else 1
    else:
        per_node = devices
    processes = per_node * trainer.get("num_nodes", 1)  # an int, as the Trainer declares it
    if strategy in RELAUNCHING_STRATEGIES or (strategy == "auto" and processes > 1):
        raise ConfigError(
            f"trainer.strategy={strategy} with {processes} process{'es' if processes != 1 else ''} would start them by "
            f"running this command again, one output directory each; use trainer=ddp (GPUs) or trainer=ddp_sim "
            f"(CPU), which start them inside the fit, e.g. trainer=ddp trainer.devices={max(processes, 2)}"
        )


def check_monitor(cfg: DictConfig, logged: list[str]) -> None:
    """``callbacks.model_checkpoint.monitor`` names a metric the model logs, found before training."""
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
    if monitor is not None and monitor not in logged:
        raise ConfigError(message("callbacks.model_checkpoint.monitor", monitor, OneOf(values=tuple(logged))))


def device_of(cfg: DictConfig) -> torch.device:
    """The one device a task works on, from ``trainer.accelerator`` (``auto``: the GPU if torch finds one)."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
