"""Your training loop, nestir's structure steps: nestir scores and applies each grow or prune
step; your code trains the module between them (the way Torch-Pruning's pruners are driven).

    steps = nestir.StructureSteps(model, x0, data=loader, schedule=nestir.prune_schedule(8, 0.2))
    for module in steps:                 # the module to train before the next structure step
        opt = torch.optim.Adam(module.parameters(), 1e-3)
        my_train(module, opt)            # your loss, optimizer, scheduler, AMP, DDP ...
        if my_validation(module) < target:
            steps.rewind()               # undo the last step and stop
            break
    small = steps.graph.to_torch()

Each yielded module is an ``nn.Module`` view of the current graph whose parameters share storage
with it: training it trains the graph. A structure step changes parameter shapes, so build the
optimizer anew for each yielded module. Dormant connections stay zero in the forward pass
whatever the optimizer does (the mask multiplies the weight)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from nestir.ir.errors import ArgumentError
from nestir.ir.graph import Graph
from nestir.ir.stats import stats
from nestir.passes import resolve
from nestir.passinfra.base import Loss

Pipeline = str | Sequence[str]


def prune_schedule(steps: int, fraction: float = 0.2, neuron_fraction: float = 0.0,
                   scope: str = "global") -> list[list[str]]:
    """``steps`` magnitude-pruning steps, each removing ``fraction`` of the live connections."""
    spec = f"magnitude-prune:fraction={fraction},neuron_fraction={neuron_fraction},scope={scope}"
    return [[spec] for _ in range(steps)]


def nest_schedule(grow_steps: int = 3, prune_steps: int = 8, *, connections: float = 0.2, neurons: int = 4,
                  fraction: float = 0.2) -> list[list[str]]:
    """NeST's order: ``grow_steps`` growth steps (gradient-scored connections and bridging neurons),
    then ``prune_steps`` magnitude-pruning steps."""
    grow = [f"grow-connection:fraction={connections}", f"bridge-neuron:count={neurons}"]
    return [list(grow) for _ in range(grow_steps)] + prune_schedule(prune_steps, fraction)


class StructureSteps:
    """Structure steps for a user-driven training loop (see the module docstring).

    ``model``: a module (traced with ``example_inputs``) or a :class:`nestir.Graph`. ``data``:
    the scoring batches (a ``DataLoader``; streamed, ``batches`` caps how many each pass reads).
    ``schedule``: a list of pipelines, one per step (pass specs or pass objects)."""

    def __init__(self, model: nn.Module | Graph, example_inputs: Any = None, *, data: Any,
                 schedule: Sequence[Pipeline], loss: Loss | None = None, device: Any = None, seed: int = 0,
                 batches: int | None = None) -> None:
        from nestir.backends.device import resolve_device
        from nestir.frontend.tracer import trace

        if isinstance(model, Graph):
            graph = model.copy()
        elif isinstance(model, nn.Module):
            if example_inputs is None:
                raise ArgumentError("StructureSteps: a module needs example_inputs to be traced")
            graph = trace(model, example_inputs)
        else:
            raise ArgumentError(f"StructureSteps: model must be a torch.nn.Module or a nestir.Graph, got "
                                f"{type(model).__name__}")
        if isinstance(schedule, str) or not isinstance(schedule, Sequence) or not schedule:
            raise ArgumentError("StructureSteps: schedule must be a non-empty list of pipelines, e.g. "
                                "nestir.prune_schedule(8, 0.2)")
        self.schedule = [[p] if isinstance(p, str) else list(p) for p in schedule]
        for p in self.schedule:
            resolve(p)  # unknown passes and bad options are refused now, not after hours of training
        self.data, self.loss, self.seed, self.batches = data, loss, seed, batches
        self.device = resolve_device(device)
        self.graph = graph.to(self.device)
        self.done = 0
        self.history: list[dict[str, Any]] = [self._row("start")]
        self._previous: Graph | None = None
        self._module: nn.Module | None = None
        self._stopped = False

    def _row(self, what: str) -> dict[str, Any]:
        s = stats(self.graph)
        return {"step": self.done, "pipeline": what, "params": s["params"], "flops": s["flops"]}

    @property
    def module(self) -> nn.Module:
        """The current graph as a trainable module (the same object until the next step)."""
        if self._module is None:
            from nestir.ir.interpreter import IRModule

            self._module = IRModule(self.graph)
        return self._module

    def step(self) -> nn.Module:
        """Score and apply the next pipeline of the schedule to the trained graph; returns the
        new module to train (build a new optimizer for it)."""
        from nestir.driver.pipeline import apply

        if self.done >= len(self.schedule):
            raise ArgumentError(f"StructureSteps: all {len(self.schedule)} steps are done")
        with torch.no_grad():
            if self._module is not None and hasattr(self._module, "apply_masks"):
                self._module.apply_masks()
        pipe = self.schedule[self.done]
        self._previous = self.graph.copy()
        self.graph = apply(self.graph, pipe, data=self.data, loss=self.loss, device=self.device,
                           seed=self.seed + self.done, batches=self.batches)
        self.done += 1
        self._module = None
        self.history.append(self._row(" ".join(p if isinstance(p, str) else p.spec() for p in pipe)))
        return self.module

    def rewind(self) -> Graph:
        """Undo the last step (the graph as it was trained before it) and stop the iteration."""
        if self._previous is None:
            raise ArgumentError("StructureSteps: no step to rewind")
        self.graph, self._previous, self._module = self._previous, None, None
        self.done -= 1
        self.history.append(self._row("rewind"))
        self._stopped = True
        return self.graph

    def __len__(self) -> int:
        return len(self.schedule)

    def __iter__(self) -> Iterator[nn.Module]:
        """The module before the first step, then after each step: ``len(schedule) + 1`` modules,
        the last one for the final fine-tuning."""
        yield self.module
        while self.done < len(self.schedule) and not self._stopped:
            yield self.step()
