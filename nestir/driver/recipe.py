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

from nestir.backends.device import resolve_device
from nestir.backends.train import Trainer, logits
from nestir.driver.data import Dataset, affine_augment, require_images
from nestir.ir.graph import Graph
from nestir.ir.serialize import graph_state


class Reporter(Protocol):
    def phase(self, name: str, total: int | None = None) -> None: ...
    def epoch(self, done: int, total: int, loss: float) -> None: ...
    def step(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


class DenseProgress(Protocol):
    """Where the dense phase stands, kept in the run directory so that a stopped dense phase goes
    on where it stopped: the networks trained (``done``) and, for the one in training, its state
    after an epoch (``save_partial``; ``partial`` reads it back: the graph, the optimizer's state,
    the random generators', the stage and the epochs done); ``trained`` reads back the networks
    done (0, 1, ... up to the first missing one)."""

    def trained(self, count: int) -> list[Graph]: ...
    def partial(self, index: int) -> dict[str, Any] | None: ...
    def save_partial(self, index: int, state: Callable[[], dict[str, Any]]) -> None: ...
    def done(self, index: int, graph: Graph) -> None: ...


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
                soft: SoftTargets | None = None, at: tuple[int, int] = (0, 0),
                after: Callable[[int, int], None] | None = None) -> Graph:
    """A dense network under the shared recipe: ``dense_epochs`` (cosine-annealed) then the final
    training every method gets (``final_epochs`` more, from the base learning rate). On labels
    only, or also distilling from ``soft`` under the recipe's ``alpha`` (a born-again student).
    ``at``: (stage, epochs done) to go on from (stage 0: the dense epochs, 1: the final training),
    the trainer and ``gen`` holding the state they had there; ``after(stage, epochs done)`` is
    called after every epoch. Returns a copy of the trained graph."""
    rec = recipe if soft is not None else dataclasses.replace(recipe, alpha=0.0)
    base = trainer.lr
    for stage, (epochs, what) in enumerate(((dense_epochs, "training"), (final_epochs, "final training"))):
        if not epochs or stage < at[0]:
            continue
        trainer.set_lr(base)
        stint(trainer, data, epochs, rec, gen, soft=soft, anneal=True, label=f"{label} {what}", reporter=reporter,
              first=at[1] if stage == at[0] else 0,
              after=None if after is None else (lambda e, stage=stage: after(stage, e)))
    return trainer.graph.copy()


def stint(trainer: Trainer, data: Dataset, epochs: int, recipe: Recipe, gen: torch.Generator, *,
          soft: SoftTargets | None = None, anneal: bool = False, label: str = "training",
          reporter: Reporter | None = None, first: int = 0, after: Callable[[int], None] | None = None) -> float:
    """``epochs`` of training on ``data`` (on the trainer's device); returns the last epoch's
    mean loss. An epoch is a pass over ``data``, or over a fresh random draw (without
    replacement) of ``recipe.epoch_samples`` of its samples when it holds more. The learning
    rate is restored afterwards. ``first``: epochs done already (a resumed stint starts after
    them); ``after(epochs done)`` is called after every epoch."""
    if reporter is not None:
        reporter.phase(label, epochs)
    base = trainer.lr
    loss = float("nan")
    trainer.distill = (recipe.alpha if soft is not None else 0.0, recipe.temperature)
    n = len(data)
    draw = 0 < recipe.epoch_samples < n and data.reread is None
    for e in range(first, epochs):
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
        if after is not None:
            after(e + 1)
    trainer.set_lr(base)
    return loss


TEACHER_SEED_STRIDE = 7919  # dense network i of a run starts from seed + i * this


def train_teachers(count: int, make: Callable[[int], Graph], data: Dataset, dense_epochs: int, final_epochs: int,
                   recipe: Recipe, seed: int, *, reporter: Reporter | None = None, first: int = 0,
                   teacher_final_epochs: int | None = None, teacher_augment: bool = False,
                   progress: DenseProgress | None = None, **trainer: Any) -> list[Graph]:
    """``count`` dense networks under the shared recipe (:func:`train_dense`), network i built by
    ``make(i)`` and trained from seed ``seed + i * TEACHER_SEED_STRIDE``; the first is the
    reference, the others only teach. The reference gets ``dense_epochs`` + ``final_epochs`` (the
    final training every method gets); the others ``dense_epochs`` + ``teacher_final_epochs``
    (None: ``final_epochs`` too). ``teacher_augment``: the others train on randomly distorted
    images (:func:`affine_augment`) whatever the recipe says; the reference keeps the recipe's
    data. ``first``: start at network ``first`` (those before it exist already; returns the
    networks from ``first`` on). ``progress``: the run directory's record (:class:`DenseProgress`):
    each network is handed to it as it is trained, and its state after every epoch; the networks
    it holds are loaded instead of trained again, and the next goes on from the state saved
    there, if any, as the uninterrupted training would have.
    ``trainer``: the :class:`Trainer`'s keyword arguments."""
    if teacher_augment and count > max(1, first):  # refused before any training
        require_images(data.x)
    nets = [] if progress is None else [g.to(resolve_device(trainer.get("device")))
                                        for g in progress.trained(count)[first:]]
    if nets and reporter is not None:
        reporter.message(f"the dense phase resumes: {first + len(nets)} of {count} dense networks were trained "
                         "and saved before the run stopped")
    rest = final_epochs if teacher_final_epochs is None else teacher_final_epochs
    taught = dataclasses.replace(recipe, augment=True) if teacher_augment else recipe
    for i in range(first + len(nets), count):
        s = seed + TEACHER_SEED_STRIDE * i
        torch.manual_seed(s)
        gen = torch.Generator().manual_seed(s)
        part = progress.partial(i) if progress is not None and i == first + len(nets) else None
        t = Trainer(make(i) if part is None else part["graph"], **trainer)
        at = (0, 0)
        if part is not None:  # the state an interrupted training saved after an epoch
            t.optimizer.load_state_dict(part["optimizer"])
            t.set_lr(t.lr)
            gen.set_state(part["generator"])
            torch.set_rng_state(part["rng"])
            if part.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(part["cuda_rng"])
            at = (int(part["stage"]), int(part["epoch"]))
            if reporter is not None:
                reporter.message(f"dense network {i + 1} of {count} goes on after epoch {at[1]} of its "
                                 f"{'final ' if at[0] else ''}training, where the run stopped")
        nets.append(train_dense(t, data, dense_epochs, final_epochs if i == 0 else rest,
                                recipe if i == 0 else taught, gen,
                                label="dense" if i == 0 else f"dense teacher {i + 1}/{count}", reporter=reporter,
                                at=at, after=None if progress is None else _saver(progress, i, t, gen)))
        if progress is not None:
            progress.done(i, nets[-1])
    return nets


def _saver(progress: DenseProgress, index: int, t: Trainer, gen: torch.Generator) -> Callable[[int, int], None]:
    """After each epoch of dense network ``index``: its state, for ``progress`` to save (built
    only when it saves)."""
    def state(stage: int, epoch: int) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if t.device.type == "cuda" else None  # dropout and the like on CUDA
        return {"stage": stage, "epoch": epoch, "graph": graph_state(t.graph), "optimizer": t.optimizer.state_dict(),
                "generator": gen.get_state(), "rng": torch.get_rng_state(), "cuda_rng": cuda}

    def after(stage: int, epoch: int) -> None:
        progress.save_partial(index, lambda: state(stage, epoch))
    return after
