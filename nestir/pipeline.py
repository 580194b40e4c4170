"""``nestir.apply``: run a pipeline of passes on a copy of a graph with data on a device."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .errors import PassError
from .graph import Graph
from .passinfra import Loss, Pass, PassContext, PassManager, resolve


def as_batches(data: Any, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, targets)`` or an iterable of such pairs, moved to ``device``."""
    if data is None:
        return []
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = [data]
    out = []
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
            raise PassError("data must be an (inputs, targets) pair of tensors or an iterable of such pairs")
        out.append((item[0].to(device), item[1].to(device)))
    return out


def apply(
    graph: Graph,
    pipeline: Iterable[str | Pass] | str | Pass,
    data: Any = None,
    loss: Loss | None = None,
    device: torch.device | str | None = None,
    *,
    seed: int = 0,
    verify: bool = True,
) -> Graph:
    """Run ``pipeline`` (pass specs like ``"grow-connection:fraction=0.1"`` or pass objects) on a
    copy of ``graph``; gradients for scoring come from ``data`` on ``device`` (CUDA when available,
    else CPU) with ``loss`` (cross-entropy by default). The verifier runs between passes."""
    from nestir.backends.device import resolve_device

    dev = resolve_device(device)
    passes = resolve(pipeline)
    ctx = PassContext(as_batches(data, dev), loss, dev, seed)
    g = graph.copy().to(dev)
    res = PassManager(passes, verify_each=verify).run(g, ctx)
    return res.graph
