"""One training recipe for every method (dense reference, pruning only, NeST): the same data
pipeline (affine augmentation on for all or off for all), the same learning-rate shape within a
stint, the same distillation from the dense reference when one exists."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .backends.train import Trainer, logits
from .data import Dataset, affine_augment
from .graph import Graph


class Reporter(Protocol):
    def phase(self, name: str, total: int | None = None) -> None: ...
    def epoch(self, done: int, total: int, loss: float) -> None: ...
    def step(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class Recipe:
    """How every stint of training runs. ``anneal``: cosine from the current learning rate down
    to a tenth of it over the stint. ``alpha``/``temperature``: distillation (alpha 0: off)."""

    batch_size: int = 64
    augment: bool = False
    anneal: bool = True
    alpha: float = 0.0
    temperature: float = 4.0


class SoftTargets:
    """A teacher's logits on a data set: computed once, on first use, when nothing is augmented,
    and for each augmented epoch's images otherwise."""

    def __init__(self, teacher: Graph, data: Dataset, device: torch.device) -> None:
        self.teacher, self.data, self.device = teacher, data, device
        self._fixed: torch.Tensor | None = None

    def on(self, x: torch.Tensor, augmented: bool) -> torch.Tensor:
        if augmented:
            return logits(self.teacher, x, device=self.device)
        if self._fixed is None:
            self._fixed = logits(self.teacher, self.data.x, device=self.device)
        return self._fixed


def stint(trainer: Trainer, data: Dataset, epochs: int, recipe: Recipe, gen: torch.Generator, *,
          soft: SoftTargets | None = None, anneal: bool = False, label: str = "training",
          reporter: Reporter | None = None) -> float:
    """``epochs`` of training on ``data`` (on the trainer's device); returns the last epoch's
    mean loss. The learning rate is restored afterwards."""
    if reporter is not None:
        reporter.phase(label, epochs)
    base = trainer.lr
    loss = float("nan")
    trainer.distill = (recipe.alpha if soft is not None else 0.0, recipe.temperature)
    for e in range(epochs):
        if anneal and recipe.anneal:
            trainer.set_lr(base * (0.1 + 0.45 * (1 + math.cos(math.pi * e / max(1, epochs)))))
        x = affine_augment(data.x, gen) if recipe.augment else data.x
        s = soft.on(x, recipe.augment) if soft is not None and recipe.alpha > 0 else None
        loss = trainer.epoch(x, data.y, recipe.batch_size, generator=gen, soft=s)
        if reporter is not None:
            reporter.epoch(e + 1, epochs, loss)
    trainer.set_lr(base)
    return loss
