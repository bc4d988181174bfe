"""Training steps replayed as CUDA graphs: a chunk of ``data.steps_per_call`` batches (by default
a whole epoch) is captured once and replayed every epoch, while the Trainer keeps validation,
logging, checkpoints and callbacks.

At this model size an eager step costs several times its arithmetic in Python and kernel launches
(one H100: 0.39 s per eager MLP epoch against 0.051 s for the same epoch as one graph, in the
issue that asked for this path). A graph holds fixed addresses, so a chunk is replayed by copying
its positions in the epoch's order into a static buffer that the captured gather reads; the
optimiser steps with a capturable state and learning rates held in device tensors, which the
schedulers fill in place.

Lightning has no CUDA-graph support of its own (lightning #10174), so the per-step hooks that the
graph skips (``PER_STEP_HOOKS``) make the run fall back to the eager loop when a module or callback
overrides them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from aelab.data.datamodule import BOUNDS, IMAGES, INDEX, normalize
from aelab.errors import AelabError

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer

# ``module`` below is an aelab.models.autoencoder.AutoEncoder, which imports this module; typed
# Any so the package keeps no import cycle
AutoEncoder = Any

PER_STEP_HOOKS = (
    "on_before_backward",
    "backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "optimizer_step",
    "on_before_zero_grad",
)
# the precisions whose plugin adds nothing to a backward or an optimiser step (no loss scaling)
PLAIN_BACKWARD_PRECISIONS = ("32-true", "bf16-mixed")
GRAPH_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)
# where a graph is captured; the tests add "cpu" with a stand-in graph (new_graph) to check the
# path's bookkeeping against the eager loop bit for bit
GRAPH_DEVICES = ["cuda"]


class CaptureError(AelabError):
    """A chunk could not be captured. Not retried eagerly: a failed capture can leave the CUDA
    stream and random state mid-capture, so the run stops with the fix instead."""


class Graph(Protocol):
    def capture(self, body: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class CudaGraph:
    def __init__(self) -> None:
        self._graph = torch.cuda.CUDAGraph()

    def capture(self, body: Callable[[], None]) -> None:
        # a private memory pool per graph: a chunk's temporaries never share memory with another
        # graph's outputs, whatever order the graphs replay in
        with torch.cuda.graph(self._graph):
            body()

    def replay(self) -> None:
        self._graph.replay()


new_graph: Callable[[], Graph] = CudaGraph


def wrapper_refusal(module: AutoEncoder) -> str | None:
    """Why this run's steps need Lightning's ``manual_backward`` and ``LightningOptimizer.step``
    (hooks, loss scaling, DDP), or ``None`` when a plain ``backward`` and optimiser step do the
    same arithmetic. Those wrappers cost about 0.4 ms a step on this project's CPU, a seventh of an
    MLP epoch (cProfile, 2026-12-02)."""
    trainer = module.trainer
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return f"{type(trainer.strategy).__name__} prepares each backward"
    if str(trainer.precision) not in PLAIN_BACKWARD_PRECISIONS:
        return f"trainer.precision={trainer.precision} scales the loss"
    for owner, parent in [(module, LightningModule), *((c, Callback) for c in trainer.callbacks)]:
        for hook in PER_STEP_HOOKS:
            if is_overridden(hook, owner, parent):
                return f"{type(owner).__name__}.{hook} runs once per step"
    return None


def refusal(module: AutoEncoder, wrapped: str | None) -> str | None:
    """Why this run trains eagerly, or ``None`` when its chunks can be replayed as graphs.
    ``wrapped``: what ``wrapper_refusal`` said of the run (a graph cannot call Lightning's wrappers)."""
    trainer = module.trainer
    device = trainer.strategy.root_device
    datamodule = getattr(trainer, "datamodule", None)
    if not module.settings.cuda_graph:
        return "model.cuda_graph=false"
    if device.type not in GRAPH_DEVICES:
        return f"the run is on the {device.type}; CUDA graphs need trainer=gpu"
    if datamodule is None or getattr(datamodule, "train_steps_per_call", 1) == 1:
        note = getattr(datamodule, "steps_per_call_note", "")
        return f"one batch per training_step call ({note or 'data.steps_per_call=1 or data.loader=dataloader'})"
    if wrapped is not None:
        return wrapped
    if str(trainer.precision) != "32-true":
        return f"trainer.precision={trainer.precision}: captured only in 32-true"
    if module.settings.compile:
        return "model.compile is set"
    optimizer = trainer.optimizers[0]
    if type(optimizer) not in GRAPH_OPTIMIZERS:
        return f"model.optimizer is {type(optimizer).__name__}; the graph path steps Adam and AdamW"
    return None


def plain_step(module: AutoEncoder, optimizer: LightningOptimizer, x: Tensor) -> dict[str, Tensor]:
    """The training step without Lightning's wrappers: what ``manual_backward`` and
    ``LightningOptimizer.step`` do when ``wrapper_refusal`` finds nothing for them to add. The caller
    counts the step with Lightning (``count_steps``)."""
    torch_optimizer = optimizer.optimizer
    torch_optimizer.zero_grad(set_to_none=True)
    terms = module.loss_terms(x)
    functools.reduce(operator.add, terms.values()).backward()
    torch_optimizer.step()
    return terms


def count_steps(optimizer: LightningOptimizer, steps: int) -> None:
    """What ``LightningOptimizer.step`` does around the optimiser's own step: ``global_step``."""
    for _ in range(steps):
        optimizer._on_before_step()
        optimizer._on_after_step()


def prepare_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """A state and learning rates the graph can read on the device: ``capturable``, each group's
    ``lr`` a device tensor (schedulers fill it in place), each ``step`` on the device.

    The lr tensor is float32 on CUDA, whose fused kernel reads a float (so a schedule, and the lr a
    checkpoint stores, agree with the eager loop's to float32 precision there); elsewhere float64,
    which the CPU kernel reads back as the same double a plain float lr is."""
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    # the warm-up steps it uncaptured on purpose; torch would warn once that capturable is slower
    optimizer._warned_capturable_if_run_uncaptured = True
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(group["lr"], dtype=dtype, device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


def plain_optimizer_state(state: dict[str, Any], was_capturable: list[bool]) -> dict[str, Any]:
    """An optimiser ``state_dict`` as the eager path writes it: float learning rates, the groups'
    own ``capturable``, and ``step`` on the CPU where neither capturable nor fused keeps it on the
    device; so a checkpoint resumes the same whichever path saved it."""
    groups = []
    for group, capturable in zip(state["param_groups"], was_capturable, strict=True):
        groups.append({**group, "lr": _plain(group["lr"]), "capturable": capturable})
    steps_on_cpu = {
        index for group in groups if not group["capturable"] and not group.get("fused") for index in group["params"]
    }
    per_param = {
        index: {**values, "step": values["step"].cpu()} if index in steps_on_cpu and "step" in values else values
        for index, values in state["state"].items()
    }
    return {**state, "state": per_param, "param_groups": groups}


def plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """A scheduler's ``state_dict`` with the tensor learning rates it copied (``_last_lr``) as floats."""
    return {
        key: [_plain(v) for v in value] if isinstance(value, list) else _plain(value) for key, value in state.items()
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, Tensor) and value.dim() == 0 else value


@dataclass
class _Captured:
    graph: Graph
    index: Tensor  # the chunk's positions in the epoch's order: the graph's input
    sums_in: dict[str, Tensor]  # the epoch's sums before the chunk
    sums_out: dict[str, Tensor]  # and after it, filled by each replay
    steps: int


class StepGraphs:
    """The chunks of one fit, each shape captured on first sight and replayed after.

    Made at the start of a fit, so a checkpoint restore (which comes before) or a new optimizer
    gets new graphs; keyed by the chunk's data, length and batch bounds, so the epoch's shorter
    last chunk, or the rest of an epoch after a resume, gets its own."""

    def __init__(self, module: AutoEncoder, optimizer: LightningOptimizer) -> None:
        self.module = module
        self.optimizer = optimizer
        self.device = module.device
        self.was_capturable = [bool(group.get("capturable", False)) for group in optimizer.optimizer.param_groups]
        prepare_optimizer(optimizer.optimizer, self.device)
        self._graphs: dict[tuple[Any, ...], _Captured] = {}
        self._captured_settings = self._optimizer_settings()

    def _optimizer_settings(self) -> list[tuple[Any, ...]]:
        """What a graph holds fixed of the optimiser: each group's settings but the lr's value
        (the lr tensor itself is held), its parameters and which of them train."""
        return [
            (
                tuple((k, id(v) if isinstance(v, Tensor) else v) for k, v in group.items() if k != "params"),
                tuple(id(p) for p in group["params"]),
                tuple(p.requires_grad for p in group["params"]),
            )
            for group in self.optimizer.optimizer.param_groups
        ]

    def run(self, chunk: dict[str, Any]) -> None:
        """Optimise on the chunk's batches, adding their terms to the module's epoch sums and
        counting each optimiser step with Lightning, as the eager loop does."""
        settings = self._optimizer_settings()
        if settings != self._captured_settings:
            # a graph keeps every setting it was captured with but the lr tensor's value: a
            # scheduler that sets betas (OneCycleLR's cycle_momentum), a callback that swaps the
            # lr for a float or freezes a layer, gets new graphs
            prepare_optimizer(self.optimizer.optimizer, self.device)
            self._graphs.clear()
            self._captured_settings = self._optimizer_settings()
        key = (chunk[IMAGES].data_ptr(), len(chunk[INDEX]), chunk[BOUNDS], id(self.optimizer.optimizer))
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._graphs[key] = self._capture(chunk)
            except RuntimeError as error:
                cause = error.__context__ or error  # capture_end's own complaint hides the first one
                reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                raise CaptureError(
                    f"capturing the training steps as a CUDA graph failed ({reason}); train eagerly with "
                    f"model.cuda_graph=false"
                ) from error
        captured.index.copy_(chunk[INDEX])
        module = self.module
        for name, total in captured.sums_in.items():
            if name in module._sums:
                total.copy_(module._sums[name])
            else:
                total.zero_()
        captured.graph.replay()
        module._sums = {name: total.clone() for name, total in captured.sums_out.items()}
        module._count += len(chunk[INDEX])
        count_steps(self.optimizer, captured.steps)

    def _step(self, x: Tensor) -> dict[str, Tensor]:
        return plain_step(self.module, self.optimizer, x)

    def _capture(self, chunk: dict[str, Any]) -> _Captured:
        images, bounds = chunk[IMAGES], chunk[BOUNDS]
        index = chunk[INDEX].clone()
        names = self._warm_up(images, index, bounds)
        sums_in = {name: torch.zeros((), device=self.device) for name in names}
        sums_out: dict[str, Tensor] = {}

        def body() -> None:
            sums = dict(sums_in)
            for first, end in itertools.pairwise(bounds):
                terms = self._step(normalize(images[index[first:end]]))
                for name, value in terms.items():
                    sums[name] = sums[name] + value.detach().float() * (end - first)
            # no gradient outlives the graph: its memory is the graph's, reused by the next replay
            self.optimizer.optimizer.zero_grad(set_to_none=True)
            sums_out.clear()
            sums_out.update(sums)

        graph = new_graph()
        graph.capture(body)
        return _Captured(graph, index, sums_in, sums_out, steps=len(bounds) - 1)

    def _warm_up(self, images: Tensor, index: Tensor, bounds: tuple[int, ...]) -> list[str]:
        """One eager step per batch size of the chunk, on a side stream as capture wants (the
        optimiser's state and cuDNN's choices exist before capture), then the weights, buffers,
        optimiser state and random state put back: the run starts from what it would have."""
        module, optimizer = self.module, self.optimizer.optimizer
        tensors = [*module.parameters(), *module.buffers()]
        saved = [t.detach().clone() for t in tensors]
        had_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream() if cuda else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        names: list[str] = []
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    for size in sorted({end - first for first, end in itertools.pairwise(bounds)}):
                        names = list(self._step(normalize(images[index[:size]])))
        finally:
            if stream is not None:  # before the restore: the side stream's steps must be done
                torch.cuda.current_stream().wait_stream(stream)
            with torch.no_grad():
                for tensor, value in zip(tensors, saved, strict=True):
                    tensor.copy_(value)
                for param, state in optimizer.state.items():
                    before = had_state.get(param)
                    for key, value in state.items():
                        if before is not None:
                            value.copy_(before[key])
                        else:  # a state the warm-up made is zeroed in place: what Adam's first step makes
                            value.zero_()
        optimizer.zero_grad(set_to_none=True)
        return names
