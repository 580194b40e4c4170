"""``nestir.apply``: run a pipeline of passes on a copy of a graph with data on a device."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nestir.driver.batches import Stream
from nestir.ir.graph import Graph
from nestir.passes import resolve
from nestir.passinfra.base import Loss, Pass, PassContext, PassManager


def as_batches(data: Any, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, targets)`` or an iterable of such pairs, read into a list on ``device``."""
    if data is None:
        return []
    return list(Stream(data, device))


def apply(
    graph: Graph,
    pipeline: Iterable[str | Pass] | str | Pass,
    data: Any = None,
    loss: Loss | None = None,
    device: torch.device | str | None = None,
    *,
    seed: int = 0,
    verify: bool = True,
    batches: int | None = None,
) -> Graph:
    """Run ``pipeline`` (pass specs like ``"grow-connection:fraction=0.1"`` or pass objects) on a
    copy of ``graph``; gradients for scoring come from ``data`` on ``device`` (CUDA when available,
    else CPU) with ``loss`` (cross-entropy by default). The verifier runs between passes.

    ``data`` is streamed: each batch is read from the loader and moved to the device when a pass
    uses it, so memory does not grow with the number of batches; ``batches`` caps how many are
    read per pass over the data (all by default). Under an initialised ``torch.distributed``
    process group each rank gives its own shard and the passes sum their statistics over the
    ranks, so every rank makes the same edits."""
    from nestir.backends.device import resolve_device
    from nestir.ir.checks import check_batches, check_loss, check_seed, require_graph

    require_graph(graph, "nestir.apply")
    check_loss(loss, "nestir.apply")
    check_seed(seed, "nestir.apply")
    dev = resolve_device(device)
    passes = resolve(pipeline)
    if data is None:
        stream = None
    else:
        stream = Stream(data, dev, limit=batches, check=lambda b, i: check_batches(b, graph, loss, start=i))
        if isinstance(data, list):  # in memory already: every batch is checked before any pass runs
            list(stream)
        else:  # a loader: the first batch now, each further one as a pass reads it
            stream.first()
    ctx = PassContext(stream, loss, dev, seed)
    g = graph.copy().to(dev)
    res = PassManager(passes, verify_each=verify).run(g, ctx)
    return res.graph
