"""Streams of ``(inputs, targets)`` batches: read from the user's loader one batch at a time and
moved to the device as they are used, so that scoring holds one batch, never the data set.

A :class:`Stream` can be iterated more than once when its source can (a ``DataLoader``, a list);
a one-shot iterator (a generator) is read once into host memory, since passes may read their data
twice. Every batch is checked (:func:`nestir.ir.checks.check_batches`) as it is read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import torch

from nestir.ir.errors import DataError, PassError

Batch = tuple[torch.Tensor, torch.Tensor]
Check = Callable[[list[Batch], int], None]


def describe_batch(item: Any) -> str:
    """What a loader gave instead of an ``(inputs, targets)`` pair, in words."""
    if isinstance(item, dict):
        return f"a dict with keys {sorted(map(str, item))[:6]} (return (inputs, targets) pairs, e.g. (b['x'], b['y']))"
    if isinstance(item, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in item[:4])
        return f"a {type(item).__name__} of {len(item)} items ({kinds}{', ...' if len(item) > 4 else ''})"
    return f"an item of type {type(item).__name__}"


def _pair(item: Any) -> Batch:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)
            and isinstance(item[1], torch.Tensor)):
        raise PassError("data must be an (inputs, targets) pair of tensors or an iterable of such pairs, "
                        f"got {describe_batch(item)}")
    return item[0], item[1]


class Stream:
    """Batches of ``source`` on ``device``, at most ``limit`` of them per pass over the data.

    ``source``: an ``(inputs, targets)`` pair, or an iterable of such pairs (a ``DataLoader``).
    ``check(batch_list, index)`` is called on each batch as it is read (before the device copy).
    Host batches are pinned and copied without blocking when the device is CUDA."""

    def __init__(self, source: Any, device: torch.device | str = "cpu", *, limit: int | None = None,
                 check: Check | None = None) -> None:
        if isinstance(source, Stream):
            source = source.source
        if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], torch.Tensor):
            source = [source]
        if isinstance(source, torch.Tensor) or not isinstance(source, Iterable):
            raise PassError("data must be an (inputs, targets) pair of tensors or an iterable of such pairs, "
                            f"got {type(source).__name__}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise PassError(f"the number of scoring batches must be a positive integer, got {limit!r}")
        if iter(source) is source:  # a one-shot iterator: keep its batches (on the host) for re-reading
            source = [_pair(b) for b in islice(source, limit)]
        self.source = source
        self.device = torch.device(device)
        self.limit = limit
        self.check = check
        self._checked: set[int] = set()

    def __iter__(self) -> Iterator[Batch]:
        pin = self.device.type == "cuda"
        n = 0
        for i, item in enumerate(islice(self.source, self.limit)):
            x, y = _pair(item)
            if self.check is not None and i not in self._checked:
                self.check([(x, y)], i)
                self._checked.add(i)
            if pin and x.device.type == "cpu":
                x, y = x.pin_memory(), y.pin_memory()
            yield x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
            n += 1
        if n == 0:
            raise DataError("data holds no batches: give (inputs, targets) or a non-empty iterable of such pairs "
                            "(or data=None for passes that do not score)")

    def first(self) -> Batch:
        """The first batch, on the device."""
        return next(iter(self))

    def __bool__(self) -> bool:
        return True
