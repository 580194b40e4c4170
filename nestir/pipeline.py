"""``nestir.apply``: run a pipeline of passes on a copy of a graph with data on a device."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .errors import DataError, PassError
from .graph import Graph
from .passinfra import Loss, Pass, PassContext, PassManager, resolve


def as_batches(data: Any, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, targets)`` or an iterable of such pairs, moved to ``device``."""
    if data is None:
        return []
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        data = [data]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise PassError("data must be an (inputs, targets) pair of tensors or an iterable of such pairs, "
                        f"got {type(data).__name__}")
    out = []
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
            raise PassError("data must be an (inputs, targets) pair of tensors or an iterable of such pairs")
        out.append((item[0].to(device), item[1].to(device)))
    if not out:
        raise DataError("data holds no batches: give (inputs, targets) or a non-empty iterable of such pairs "
                        "(or data=None for passes that do not score)")
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

    from .checks import check_batches, check_loss, check_seed, require_graph

    require_graph(graph, "nestir.apply")
    check_loss(loss, "nestir.apply")
    check_seed(seed, "nestir.apply")
    dev = resolve_device(device)
    passes = resolve(pipeline)
    batches = as_batches(data, dev)
    check_batches(batches, graph, loss)
    ctx = PassContext(batches, loss, dev, seed)
    g = graph.copy().to(dev)
    res = PassManager(passes, verify_each=verify).run(g, ctx)
    return res.graph
