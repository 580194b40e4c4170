"""Training and evaluation of an IR graph on a device; optimizer state follows structural edits.

Under an initialised ``torch.distributed`` process group (torchrun) every rank holds the same
batches and computes its share of each one (:func:`nestir.backends.dist.shard`): gradients are summed over
the ranks before each optimizer step, so the update is the one-process update of the whole batch,
and rank 0's BatchNorm statistics and weights are broadcast after every epoch (as DDP broadcasts
buffers). Evaluation splits the images between the ranks and gathers the per-image results."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nestir.backends import dist
from nestir.backends.device import resolve_device
from nestir.ir.edit import replay
from nestir.ir.graph import Graph
from nestir.ir.interpreter import IRModule, param_key

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[int, int, float], None]


def batches(x: torch.Tensor, y: torch.Tensor, size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None,
            soft: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Mini-batches of device-resident tensors (no per-sample Python work); with ``soft``
    (per-sample teacher logits aligned with ``x``) each batch is ``(x, y, soft)``."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else torch.arange(n, device=x.device)
    for i in range(0, n, size):
        idx = order[i:i + size]
        if soft is None:
            yield x.index_select(0, idx), y.index_select(0, idx)
        else:
            yield x.index_select(0, idx), y.index_select(0, idx), soft.index_select(0, idx)


@dataclass
class Evaluation:
    loss: float
    error: float
    wrong: torch.Tensor  # bool (N,): which samples were misclassified (for paired comparisons)


@torch.no_grad()
def evaluate(graph: Graph, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024,
             loss: Loss | None = None, device: torch.device | str | None = None) -> Evaluation:
    """Mean loss and classification error of ``graph`` (eval mode) on ``(x, y)``."""
    dev = resolve_device(device)
    mod = IRModule(graph.copy(), dev).eval()
    loss_fn = loss or F.cross_entropy
    part = dist.shard(x.shape[0])  # all of it in one process
    total, wrong = 0.0, []
    for xb, yb in batches(x[part].to(dev), y[part].to(dev), batch_size):
        out = mod(xb)
        total += float(loss_fn(out, yb)) * xb.shape[0]
        wrong.append((out.argmax(1) != yb).cpu())
    w = torch.cat(wrong) if wrong else torch.zeros(0, dtype=torch.bool)
    (total,) = dist.sum_float(total)
    w = dist.gather_cat(w)
    n = max(1, x.shape[0])
    return Evaluation(total / n, int(w.sum()) / n, w)


@torch.no_grad()
def logits(graph: Graph, x: torch.Tensor, *, batch_size: int = 1024,
           device: torch.device | str | None = None) -> torch.Tensor:
    """The outputs of ``graph`` (eval mode) on ``x``, batched, on ``x``'s device: the soft
    targets of a teacher for distillation."""
    dev = resolve_device(device)
    mod = IRModule(graph.copy(), dev).eval()
    outs = [mod(x[i:i + batch_size].to(dev)).float() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs).to(x.device) if outs else torch.zeros(0, device=x.device)


def distill_loss(out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor, alpha: float,
                 temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation loss: (1 - alpha) * cross-entropy on the labels + alpha * T^2 *
    KL(teacher || student) at temperature T."""
    t = temperature
    kl = F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(soft / t, 1), reduction="batchmean", log_target=True)
    return (1 - alpha) * F.cross_entropy(out, y) + alpha * t * t * kl


class Trainer:
    """Adam (or SGD) training of a graph in place. After a structural edit call :meth:`rebuild`:
    surviving entries keep their optimizer state, new neurons get fresh (zero) state."""

    def __init__(self, graph: Graph, *, device: torch.device | str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.0, optimizer: str = "adam", loss: Loss | None = None,
                 distill: tuple[float, float] = (0.0, 1.0), amp: bool | None = None) -> None:
        self.device = resolve_device(device)
        # bf16 autocast for the forward pass: on by default on CUDA devices that support it
        # (weights, gradients, optimizer state and all statistics stay fp32); amp=True forces
        # it, also on the CPU, amp=False turns it off
        self.amp = (self.device.type == "cuda" and torch.cuda.is_bf16_supported()) if amp is None else bool(amp)
        if self.device.type == "cpu":
            # Late in training many weights and Adam moments turn denormal, and CPU arithmetic on
            # denormals is slow: measured 0.75 s -> 3 s per dense LeNet-5 epoch. Flush them to zero.
            torch.set_flush_denormal(True)
        self.graph = graph.to(self.device)
        self.lr, self.weight_decay, self.kind = lr, weight_decay, optimizer
        self.loss = loss or F.cross_entropy
        self.distill = distill  # (alpha, temperature) for batches that carry teacher logits
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

    def step(self, xb: torch.Tensor, yb: torch.Tensor, soft: torch.Tensor | None = None) -> float:
        """One optimizer step; with ``soft`` (teacher logits) the loss is :func:`distill_loss`."""
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = xb.shape[0]
        if dist.active():  # this rank's share of the batch, weighted so that the summed gradient is the batch's
            part = dist.shard(n)
            xb, yb, soft = xb[part], yb[part], soft[part] if soft is not None else None
        value = 0.0
        if xb.shape[0]:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.module(xb)
            out = out.float()
            loss = distill_loss(out, yb, soft, *self.distill) if soft is not None and self.distill[0] > 0 \
                else self.loss(out, yb)
            (loss * (xb.shape[0] / n)).backward()
            value = float(loss.detach())
        if dist.active():
            grads = []
            for p in self.module.params.values():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
            dist.all_sum(grads)
        self.optimizer.step()
        self.module.apply_masks()
        return value

    def sync(self) -> None:
        """Rank 0's floating-point tensors (weights, BatchNorm statistics) on every rank."""
        if dist.active():
            with torch.no_grad():
                dist.broadcast([t for n in self.graph for t in n.params.values() if t.is_floating_point()])

    def epoch(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, *,
              generator: torch.Generator | None = None, progress: Progress | None = None,
              soft: torch.Tensor | None = None) -> float:
        """One pass over ``(x, y)`` in shuffled mini-batches; returns the mean training loss.
        ``soft``: teacher logits aligned with ``x`` (distillation)."""
        total, n = 0.0, 0
        steps = math.ceil(x.shape[0] / batch_size)
        for i, b in enumerate(batches(x, y, batch_size, shuffle=True, generator=generator, soft=soft)):
            xb = b[0]
            total += self.step(*b) * xb.shape[0]
            n += xb.shape[0]
            if progress is not None:
                progress(i + 1, steps, total / n)
        self.sync()
        return total / max(1, n)
