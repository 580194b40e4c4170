"""Training and evaluation of an IR graph on a device; optimizer state follows structural edits."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nestir.edit import replay
from nestir.graph import Graph

from .device import resolve_device
from .executor import IRModule, param_key

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[int, int, float], None]


def batches(x: torch.Tensor, y: torch.Tensor, size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of device-resident tensors (no per-sample Python work)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else torch.arange(n, device=x.device)
    for i in range(0, n, size):
        idx = order[i:i + size]
        yield x.index_select(0, idx), y.index_select(0, idx)


@dataclass
class Evaluation:
    loss: float
    error: float


@torch.no_grad()
def evaluate(graph: Graph, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024,
             loss: Loss | None = None, device: torch.device | str | None = None) -> Evaluation:
    """Mean loss and classification error of ``graph`` (eval mode) on ``(x, y)``."""
    dev = resolve_device(device)
    mod = IRModule(graph.copy(), dev).eval()
    loss_fn = loss or F.cross_entropy
    total, wrong = 0.0, 0
    for xb, yb in batches(x.to(dev), y.to(dev), batch_size):
        out = mod(xb)
        total += float(loss_fn(out, yb)) * xb.shape[0]
        wrong += int((out.argmax(1) != yb).sum())
    n = max(1, x.shape[0])
    return Evaluation(total / n, wrong / n)


class Trainer:
    """Adam (or SGD) training of a graph in place. After a structural edit call :meth:`rebuild`:
    surviving entries keep their optimizer state, new neurons get fresh (zero) state."""

    def __init__(self, graph: Graph, *, device: torch.device | str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.0, optimizer: str = "adam", loss: Loss | None = None) -> None:
        self.device = resolve_device(device)
        self.graph = graph.to(self.device)
        self.lr, self.weight_decay, self.kind = lr, weight_decay, optimizer
        self.loss = loss or F.cross_entropy
        graph.journal.clear()
        self.module = IRModule(graph)
        self.optimizer = self._make()

    def _make(self) -> torch.optim.Optimizer:
        params = list(self.module.params.values())
        if self.kind == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def rebuild(self) -> None:
        old = {k: self.optimizer.state.get(p, {}) for k, p in self.module.params.items()}
        journal = list(self.graph.journal)
        self.graph.journal.clear()
        self.graph.to(self.device)
        self.module = IRModule(self.graph)
        self.optimizer = self._make()
        for key, p in self.module.params.items():
            state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in old.get(key, {}).items()}
            for node, pkey, how in journal:
                if param_key(node, pkey) == key:
                    state = {k: replay(v, how) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                             for k, v in state.items()}
            if state and all(v.shape == p.shape for v in state.values() if isinstance(v, torch.Tensor) and v.dim()):
                self.optimizer.state[p] = state

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.module(xb), yb)
        loss.backward()
        self.optimizer.step()
        self.module.apply_masks()
        return float(loss.detach())

    def epoch(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, *,
              generator: torch.Generator | None = None, progress: Progress | None = None) -> float:
        """One pass over ``(x, y)`` in shuffled mini-batches; returns the mean training loss."""
        total, n = 0.0, 0
        steps = math.ceil(x.shape[0] / batch_size)
        for i, (xb, yb) in enumerate(batches(x, y, batch_size, shuffle=True, generator=generator)):
            total += self.step(xb, yb) * xb.shape[0]
            n += xb.shape[0]
            if progress is not None:
                progress(i + 1, steps, total / n)
        return total / max(1, n)
