"""Training steps replayed as CUDA graphs: a chunk of ``fast.steps_per_call`` batches (by default
a whole epoch) is captured once and replayed every epoch, while the Trainer keeps validation,
logging, checkpoints and callbacks.

At this model size an eager step costs several times its arithmetic in Python and kernel launches
(one H100: 0.39 s per eager MLP epoch against 0.051 s for the same epoch as one graph, in the
issue that asked for this path). A graph holds fixed addresses, so a chunk is replayed by copying
its positions in the epoch's order into a static buffer that the captured gather reads; the
optimiser steps with a capturable state and learning rates held in device tensors, which the
schedulers fill in place. Lightning has no CUDA-graph support of its own (lightning #10174).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aelab.data.batches import gather, normalize
from aelab.errors import AelabError
from aelab.fast.chunks import BOUNDS, IMAGES, INDEX
from aelab.models.autoencoder import AutoEncoder
from aelab.names import LOSS

GRAPH_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)
# where a graph is captured; the tests add "cpu" with a stand-in graph (new_graph) to check the
# path's bookkeeping against the eager loop bit for bit
GRAPH_DEVICES = ["cuda"]


class CaptureError(AelabError):
    """A chunk could not be captured. Not retried eagerly: a failed capture can leave the CUDA
    stream and random state mid-capture, so the run stops with the fix instead."""


class CudaGraph(torch.cuda.CUDAGraph):
    def capture(self, body: Callable[[], None]) -> None:
        # a private memory pool per graph: a chunk's temporaries never share memory with another
        # graph's outputs, whatever order the graphs replay in
        with torch.cuda.graph(self):
            body()


new_graph: Callable[[], CudaGraph] = CudaGraph


def refusal(module: AutoEncoder) -> str | None:
    """Why this fast-path run steps eagerly, or ``None`` when its chunks can be replayed as graphs."""
    trainer = module.trainer
    device = trainer.strategy.root_device
    if device.type not in GRAPH_DEVICES:
        return f"the run is on the {device.type}; CUDA graphs need trainer=gpu"
    if str(trainer.precision) != "32-true":
        return f"trainer.precision={trainer.precision}: captured only in 32-true"
    if module.settings.compile:
        return "model.compile is set"
    optimizer = trainer.optimizers[0]
    if type(optimizer) not in GRAPH_OPTIMIZERS:
        return f"model.optimizer is {type(optimizer).__name__}; the graph path steps Adam and AdamW"
    return None


def step(module: AutoEncoder, optimizer: torch.optim.Optimizer, x: Tensor) -> dict[str, Tensor]:
    """One optimiser step on the batch ``x``; returns the objective's terms (batch means)."""
    optimizer.zero_grad(set_to_none=True)
    terms = module.loss_terms(x).terms
    loss = functools.reduce(operator.add, terms.values())
    loss.backward()
    optimizer.step()
    # the optimised sum, logged as <split>/loss where there are several terms (AutoEncoder.terms)
    return {**terms, LOSS: loss} if len(terms) > 1 else terms


def prepare_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """A state and learning rates the graph can read on the device: ``capturable``, each group's
    ``lr`` a device tensor (schedulers fill it in place), each ``step`` on the device.

    The lr tensor is float32 on CUDA, whose fused kernel reads a float (so a schedule, and the lr a
    checkpoint stores, agree with the eager loop's to float32 precision there); elsewhere float64,
    which the CPU kernel reads back as the same double a plain float lr is."""
    dtype = torch.float32 if device.type == "cuda" else torch.float64
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
    graph: CudaGraph
    index: Tensor  # the chunk's positions in the epoch's order: the graph's input
    sums: dict[str, Tensor]  # the chunk's terms summed over its images (float64), filled by each replay


class StepGraphs:
    """The chunks of one fit, each shape captured on first sight and replayed after.

    Made at the start of a fit, so a checkpoint restore (which comes before) or a new optimizer
    gets new graphs; keyed by the chunk's data, length and batch bounds, so the epoch's shorter
    last chunk, or the rest of an epoch after a resume, gets its own."""

    def __init__(self, module: AutoEncoder, optimizer: torch.optim.Optimizer) -> None:
        self.module = module
        self.optimizer = optimizer
        self.device = module.device
        self.was_capturable = [bool(group.get("capturable", False)) for group in optimizer.param_groups]
        self._graphs: dict[tuple[Any, ...], _Captured] = {}
        self._captured_settings: list[tuple[Any, ...]] | None = None  # the first run prepares the optimiser

    def _optimizer_settings(self) -> list[tuple[Any, ...]]:
        """What a graph holds fixed of the optimiser: each group's settings but the lr's value
        (the lr tensor itself is held), its parameters and which of them train."""
        return [
            (
                tuple((k, id(v) if isinstance(v, Tensor) else v) for k, v in group.items() if k != "params"),
                tuple(id(p) for p in group["params"]),
                tuple(p.requires_grad for p in group["params"]),
            )
            for group in self.optimizer.param_groups
        ]

    def run(self, chunk: dict[str, Any]) -> dict[str, Tensor]:
        """Optimise on the chunk's batches; returns their terms summed over the chunk's images."""
        if self._optimizer_settings() != self._captured_settings:
            # a graph keeps every setting it was captured with but the lr tensor's value: a
            # scheduler that sets betas (OneCycleLR's cycle_momentum), a callback that swaps the
            # lr for a float or freezes a layer, gets new graphs (and the first run, a prepared optimiser)
            prepare_optimizer(self.optimizer, self.device)
            self._graphs.clear()
            self._captured_settings = self._optimizer_settings()
        key = (chunk[IMAGES].data_ptr(), len(chunk[INDEX]), chunk[BOUNDS], id(self.optimizer))
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._graphs[key] = self._capture(chunk)
            except RuntimeError as error:
                cause = error.__context__ or error  # capture_end's own complaint hides the first one
                reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                raise CaptureError(
                    f"capturing the training steps as a CUDA graph failed ({reason}); train eagerly with "
                    f"fast.cuda_graph=false"
                ) from error
        captured.index.copy_(chunk[INDEX])
        captured.graph.replay()
        return {name: total.clone() for name, total in captured.sums.items()}

    def _capture(self, chunk: dict[str, Any]) -> _Captured:
        images, bounds = chunk[IMAGES], chunk[BOUNDS]
        index = chunk[INDEX].clone()
        self._warm_up(images, index, bounds)
        sums: dict[str, Tensor] = {}

        def body() -> None:
            batches = (normalize(gather(images, index[first:end])) for first, end in itertools.pairwise(bounds))
            sums.update(chunk_sum(self.module, self.optimizer, batches, as_floats=False))
            # no gradient outlives the graph: its memory is the graph's, reused by the next replay
            self.optimizer.zero_grad(set_to_none=True)

        graph = new_graph()
        graph.capture(body)
        return _Captured(graph, index, sums)

    def _warm_up(self, images: Tensor, index: Tensor, bounds: tuple[int, ...]) -> None:
        """One eager step per batch size of the chunk, on a side stream as capture wants (the
        optimiser's state and cuDNN's choices exist before capture), then the weights, buffers,
        optimiser state and random state put back: the run starts from what it would have."""
        module, optimizer = self.module, self.optimizer
        tensors = [*module.parameters(), *module.buffers()]
        saved = [t.detach().clone() for t in tensors]
        had_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream() if cuda else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        try:
            # (torch.cuda.stream(None) is a no-op, and initialises no CUDA for a CPU run)
            with torch.random.fork_rng(devices=[self.device] if cuda else []), torch.cuda.stream(stream):
                for size in sorted({end - first for first, end in itertools.pairwise(bounds)}):
                    step(module, optimizer, normalize(gather(images, index[:size])))
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


def chunk_sum(
    module: AutoEncoder, optimizer: torch.optim.Optimizer, batches: Iterable[Tensor], *, as_floats: bool
) -> dict[str, Tensor]:
    """A ``step`` on each batch of a chunk in turn; returns their terms summed over the chunk's
    images in float64: what ``EpochMean.update`` takes.

    A float32 batch mean times its batch size is exact in float64, and so is a sum of such
    products while it needs at most 53 bits: while the largest batch mean (in magnitude) over the
    smallest, times the images summed, stays below 2**29 (for 60,000 images, batch means within a
    factor of 8,000 of each other). Then any order of addition gives EpochMean's batch-by-batch
    sums, bit for bit; beyond it the float64 sums may differ in their last bits, the float32 means
    logged from them almost never.

    ``as_floats`` (the CPU) accumulates Python floats as the steps come: ``item()`` waits for
    nothing there, and it costs about 35 µs right after a step against 80 µs for three tensor
    operations, while keeping a chunk's outputs alive to stack them at its end cost 20-30 ms of
    the MLP's epoch (docs/benchmarks.md). On a GPU ``item()`` would wait for each step and a
    captured graph cannot call it, so there the outputs are stacked: a few kernels per chunk
    rather than three per step."""
    if as_floats:
        totals: dict[str, float] = {}
        for x in batches:
            for name, value in step(module, optimizer, x).items():
                totals[name] = totals.get(name, 0.0) + value.item() * len(x)
        return {name: torch.tensor(total, dtype=torch.float64) for name, total in totals.items()}
    by_size: dict[int, list[dict[str, Tensor]]] = {}
    for x in batches:
        terms = step(module, optimizer, x)
        # detached at once, so that no step's autograd graph outlives its step
        by_size.setdefault(len(x), []).append({name: value.detach() for name, value in terms.items()})
    sums: dict[str, Tensor] = {}
    for count, group in by_size.items():
        for name in group[0]:
            term = (torch.stack([terms[name] for terms in group]).double() * count).sum()
            sums[name] = sums[name] + term if name in sums else term
    return sums
