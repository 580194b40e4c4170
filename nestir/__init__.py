"""nestir: a compiler for neural-network architectures (trace, grow/prune passes, lower).

The package is laid out in layers, each importing only the ones below it (checked by
import-linter, see pyproject.toml): ``nestir.ir`` (the core), ``nestir.frontend`` and
``nestir.backends``, ``nestir.passinfra``, ``nestir.passes``, ``nestir.driver``, and on top
``nestir.cli`` and ``nestir.testing``. Importing ``nestir`` loads the core only; the public
names below load their layer on first use."""

from __future__ import annotations

from typing import Any

from nestir.ir.errors import (
    ArgumentError,
    DataError,
    EditError,
    LoweringError,
    ModelFileError,
    NestirError,
    OutputError,
    PassError,
    ShapeError,
    TraceError,
    VerifyError,
)
from nestir.ir.graph import Graph, Node
from nestir.ir.verify import verify

__version__ = "0.1.0"


def _register_graph_methods() -> None:
    """The composition root: Graph's analyses and lowerings, registered with the graph module
    (which imports none of them). The lowerings load on first use."""
    from nestir.ir import graph as _graph
    from nestir.ir.checks import require_path
    from nestir.ir.groups import analyze
    from nestir.ir.stats import format_table, stats

    def to_torch(g: Graph, **kw: Any) -> Any:
        from nestir.backends.lower_torch import lower_torch

        return lower_torch(g, **kw)

    def to_onnx(g: Graph, path: str, **kw: Any) -> None:
        from nestir.backends.lower_onnx import lower_onnx

        lower_onnx(g, require_path(path, "Graph.to_onnx"), **kw)

    _graph.provide("groups", analyze)
    _graph.provide("verify", verify)
    _graph.provide("to_torch", to_torch)
    _graph.provide("to_onnx", to_onnx)
    _graph.provide("summary", lambda g: format_table(stats(g)))


_register_graph_methods()


def apply(graph: Graph, pipeline: Any, data: Any = None, loss: Any = None, device: Any = None, **kw: Any) -> Graph:
    """Run a pipeline of passes on a copy of ``graph`` (see :func:`nestir.driver.pipeline.apply`)."""
    from nestir.driver.pipeline import apply as _apply

    return _apply(graph, pipeline, data, loss=loss, device=device, **kw)


def synthesize(model: Any, example_inputs: Any, *, train: Any, val: Any, loss: Any = None, metric: Any = None,
               target: float | None = None, max_params: int | None = None, device: Any = None, out: str | None = None,
               **options: Any) -> Any:
    """NeST on your model and loaders; returns ``.graph`` and ``.report`` (see :func:`nestir.driver.api.synthesize`)."""
    from nestir.driver.api import synthesize as _synthesize

    return _synthesize(model, example_inputs, train=train, val=val, loss=loss, metric=metric, target=target,
                       max_params=max_params, device=device, out=out, **options)


def load(path: str) -> Graph:
    """A saved model (a run's ``model.pt``, or any file :func:`nestir.ir.serialize.save_graph`
    wrote), verified; loading never executes code. ``nestir.load(p).to_torch()`` is the module,
    ``.to_torch(masks=True)`` one whose pruned weights stay zero under fine-tuning."""
    from nestir.ir.checks import require_path
    from nestir.ir.serialize import load_graph

    path = require_path(path, "nestir.load")
    return load_graph(path)[0]


def remove_masks(module: Any) -> Any:
    """Make the masks of a ``to_torch(masks=True)`` module permanent (plain weights with zeros)."""
    from nestir.backends.lower_torch import remove_masks as _remove

    return _remove(module)


_LAZY = {"trace": ("nestir.frontend.tracer", "trace"), "opaque_nodes": ("nestir.ir.checks", "opaque_nodes"),
         "stats": ("nestir.frontend.measure", "stats"), "StructureSteps": ("nestir.driver.steps", "StructureSteps"),
         "nest_schedule": ("nestir.driver.steps", "nest_schedule"),
         "prune_schedule": ("nestir.driver.steps", "prune_schedule")}
_LAYERS = ("ir", "frontend", "backends", "passinfra", "passes", "driver", "cli", "testing")


def __getattr__(name: str) -> Any:
    """The public names of the upper layers, and the layer packages, loaded on first use."""
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _LAYERS:
        return importlib.import_module(f"nestir.{name}")
    raise AttributeError(f"module 'nestir' has no attribute {name!r}")


__all__ = [
    "ArgumentError", "DataError", "EditError", "Graph", "LoweringError", "ModelFileError", "NestirError", "Node",
    "OutputError", "PassError", "ShapeError", "TraceError", "VerifyError", "apply", "opaque_nodes", "stats", "trace",
    "synthesize", "verify", "StructureSteps", "prune_schedule", "nest_schedule", "load", "remove_masks",
]
