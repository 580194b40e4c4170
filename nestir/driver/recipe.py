"""One training recipe for every method (dense reference, pruning only, NeST): the same data
pipeline (affine augmentation on for all or off for all), the same learning-rate shape within a
stint, the same distillation from the dense reference when one exists."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nestir.backends.train import Trainer, logits
from nestir.driver.data import Dataset, affine_augment, require_images
from nestir.ir.graph import Graph


class Reporter(Protocol):
    def phase(self, name: str, total: int | None = None) -> None: ...
    def epoch(self, done: int, total: int, loss: float) -> None: ...
    def step(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class Recipe:
    """How every stint of training runs. ``anneal``: cosine from the current learning rate down
    to ``floor`` times it (a tenth) over the stint. ``alpha``/``temperature``: distillation (alpha 0: off)."""

    batch_size: int = 64
    # an epoch is a pass over the training split or a fresh random draw of this many of its samples,
    # whichever is fewer (0: always the whole split): every budget counted in epochs is then a budget
    # in samples on large data, so 45,000 training images cost about 3.4x what 3,500 cost, not 13x
    epoch_samples: int = 12_000
    augment: bool = False
    anneal: bool = True
    floor: float = 0.1
    alpha: float = 0.0
    temperature: float = 4.0


class SoftTargets:
    """The teachers' logits on a data set, averaged over the teachers (an ensemble of dense
    networks teaches better than any one of them): computed once, on first use, when nothing is
    augmented, and for each augmented epoch's images otherwise."""

    def __init__(self, teachers: Graph | Sequence[Graph], data: Dataset, device: torch.device) -> None:
        self.teachers = [teachers] if isinstance(teachers, Graph) else list(teachers)
        if not self.teachers:
            raise ValueError("soft targets need at least one teacher")
        self.data, self.device = data, device
        self._fixed: torch.Tensor | None = None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([logits(t, x, device=self.device) for t in self.teachers]).mean(0)

    def on(self, x: torch.Tensor, augmented: bool, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The teachers' logits for ``x``: the data set's samples ``idx`` (all when None), or
        freshly computed images when ``augmented``."""
        if augmented:
            return self._logits(x)
        if self._fixed is None:
            self._fixed = self._logits(self.data.x)
        return self._fixed if idx is None else self._fixed.index_select(0, idx.to(self._fixed.device))


def train_dense(trainer: Trainer, data: Dataset, dense_epochs: int, final_epochs: int, recipe: Recipe,
                gen: torch.Generator, *, label: str = "dense", reporter: Reporter | None = None,
                soft: SoftTargets | None = None) -> Graph:
    """A dense network under the shared recipe: ``dense_epochs`` (cosine-annealed) then the final
    training every method gets (``final_epochs`` more, from the base learning rate). On labels
    only, or also distilling from ``soft`` under the recipe's ``alpha`` (a born-again student).
    Returns a copy of the trained graph."""
    rec = recipe if soft is not None else dataclasses.replace(recipe, alpha=0.0)
    base = trainer.lr
    if dense_epochs:
        stint(trainer, data, dense_epochs, rec, gen, soft=soft, anneal=True, label=f"{label} training",
              reporter=reporter)
    if final_epochs:
        trainer.set_lr(base)
        stint(trainer, data, final_epochs, rec, gen, soft=soft, anneal=True, label=f"{label} final training",
              reporter=reporter)
    return trainer.graph.copy()


def stint(trainer: Trainer, data: Dataset, epochs: int, recipe: Recipe, gen: torch.Generator, *,
          soft: SoftTargets | None = None, anneal: bool = False, label: str = "training",
          reporter: Reporter | None = None) -> float:
    """``epochs`` of training on ``data`` (on the trainer's device); returns the last epoch's
    mean loss. An epoch is a pass over ``data``, or over a fresh random draw (without
    replacement) of ``recipe.epoch_samples`` of its samples when it holds more. The learning
    rate is restored afterwards."""
    if reporter is not None:
        reporter.phase(label, epochs)
    base = trainer.lr
    loss = float("nan")
    trainer.distill = (recipe.alpha if soft is not None else 0.0, recipe.temperature)
    n = len(data)
    draw = 0 < recipe.epoch_samples < n and data.reread is None
    for e in range(epochs):
        if anneal and recipe.anneal:
            f = recipe.floor
            trainer.set_lr(base * (f + (1 - f) / 2 * (1 + math.cos(math.pi * e / max(1, epochs)))))
        idx = torch.randperm(n, generator=gen)[:recipe.epoch_samples].to(data.x.device) if draw else None
        fresh = data.reread is not None  # a user's loader: one pass of it per epoch (its augmentation, its order)
        if fresh:
            x, y = (t.to(data.x.device) for t in data.reread())  # type: ignore[misc]
        else:
            x, y = (data.x, data.y) if idx is None else (data.x.index_select(0, idx), data.y.index_select(0, idx))
        x = affine_augment(x, gen) if recipe.augment else x
        s = soft.on(x, recipe.augment or fresh, idx) if soft is not None and recipe.alpha > 0 else None
        loss = trainer.epoch(x, y, recipe.batch_size, generator=gen, soft=s)
        if reporter is not None:
            reporter.epoch(e + 1, epochs, loss)
    trainer.set_lr(base)
    return loss


TEACHER_SEED_STRIDE = 7919  # dense network i of a run starts from seed + i * this


def train_teachers(count: int, make: Callable[[int], Graph], data: Dataset, dense_epochs: int, final_epochs: int,
                   recipe: Recipe, seed: int, *, reporter: Reporter | None = None, first: int = 0,
                   teacher_final_epochs: int | None = None, teacher_augment: bool = False,
                   done: Callable[[int, Graph], None] | None = None, **trainer: Any) -> list[Graph]:
    """``count`` dense networks under the shared recipe (:func:`train_dense`), network i built by
    ``make(i)`` and trained from seed ``seed + i * TEACHER_SEED_STRIDE``; the first is the
    reference, the others only teach. The reference gets ``dense_epochs`` + ``final_epochs`` (the
    final training every method gets); the others ``dense_epochs`` + ``teacher_final_epochs``
    (None: ``final_epochs`` too). ``teacher_augment``: the others train on randomly distorted
    images (:func:`affine_augment`) whatever the recipe says; the reference keeps the recipe's
    data. ``first``: start at network ``first`` (those before it exist already; returns the
    networks from ``first`` on). ``done(i, net)``: called as each network is trained (the run
    directory saves it). ``trainer``: the :class:`Trainer`'s keyword arguments."""
    if teacher_augment and count > max(1, first):  # refused before any training
        require_images(data.x)
    nets = []
    rest = final_epochs if teacher_final_epochs is None else teacher_final_epochs
    taught = dataclasses.replace(recipe, augment=True) if teacher_augment else recipe
    for i in range(first, count):
        s = seed + TEACHER_SEED_STRIDE * i
        torch.manual_seed(s)
        nets.append(train_dense(Trainer(make(i), **trainer), data, dense_epochs, final_epochs if i == 0 else rest,
                                recipe if i == 0 else taught, torch.Generator().manual_seed(s),
                                label="dense" if i == 0 else f"dense teacher {i + 1}/{count}", reporter=reporter))
        if done is not None:
            done(i, nets[-1])
    return nets
