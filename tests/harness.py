"""Shared test helpers. The generic pass harness (the pass-contract checker and running a graph
through the IR executor, torch and ONNX) is public in :mod:`nestir.testing`; re-exported here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from nestir.testing import check_pass, run_ir, run_onnx, run_torch  # noqa: F401

# A user model file for CLI runs on `digits` (8x8): a tiny MLP, fast enough for fuzz and kill tests.
TINY_MLP_FILE = '''
import torch.nn as nn
INPUT_SHAPE = (1, 8, 8)
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)
    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())
def make():
    return MLP()
'''


@contextlib.contextmanager
def dense_interrupted(at: int) -> Iterator[list[int]]:
    """Inside it, nestir's dense phase raises KeyboardInterrupt (as Ctrl-C would) when it starts
    training its ``at``-th dense network; yields the list of trainings started (clear it to count
    afresh)."""
    import nestir.driver.recipe as recipe

    real, calls = recipe.train_dense, []

    def train_dense(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kw)

    recipe.train_dense = train_dense
    try:
        yield calls
    finally:
        recipe.train_dense = real


@contextlib.contextmanager
def dense_stopped_in_training(at: int) -> Iterator[list[int]]:
    """Inside it, nestir's dense phase saves the network in training after every epoch (not every
    half minute) and raises KeyboardInterrupt (as Ctrl-C would) right after the ``at``-th save (0:
    never); yields the list of saves, one per epoch trained (the network's index each)."""
    import nestir.driver.runstore as runstore

    real, every, saves = runstore.DenseRecord.save_partial, runstore.PARTIAL_EVERY, []

    def save_partial(self: Any, index: int, state: Any) -> None:
        real(self, index, state)
        saves.append(index)
        if len(saves) == at:
            raise KeyboardInterrupt

    runstore.PARTIAL_EVERY = 0.0
    runstore.DenseRecord.save_partial = save_partial  # type: ignore[method-assign]
    try:
        yield saves
    finally:
        runstore.PARTIAL_EVERY = every
        runstore.DenseRecord.save_partial = real  # type: ignore[method-assign]
