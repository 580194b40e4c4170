"""Argument checks of the Python API, in one place: what a public function was given (a graph, a
pipeline, data batches, a path) is checked before any work starts, and refused with a
:class:`~nestir.ir.errors.NestirError` subclass that names the problem, never a raw torch error."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from nestir.ir.errors import ArgumentError, DataError
from nestir.ir.graph import Graph
from nestir.ir.kinds import Op


def require_graph(obj: Any, where: str) -> Graph:
    """``obj`` if it is a :class:`Graph`; else an :class:`ArgumentError` that says how to get one."""
    if isinstance(obj, Graph):
        return obj
    if isinstance(obj, torch.nn.Module):
        raise ArgumentError(f"{where} needs a nestir.Graph, got the torch module {type(obj).__name__}: trace it "
                            "first, g = nestir.trace(module, example_inputs)")
    raise ArgumentError(f"{where} needs a nestir.Graph, got {type(obj).__name__}")


def require_path(path: Any, where: str) -> str:
    """A file path to write: a str or os.PathLike that is not an existing directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"{where} needs a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path or os.path.isdir(path):
        raise ArgumentError(f"{where}: '{path}' is a directory, not a file path")
    return str(path)


def _input_shapes(graph: Graph) -> list[tuple[int, ...] | None]:
    return [tuple(n.shape[1:]) if n.shape is not None else None for n in graph.inputs]


def _classes(graph: Graph) -> int | None:
    """The width of the graph's single 2-D output (N, C): the number of classes, or None."""
    out = graph.output
    if len(out.inputs) != 1:
        return None
    shape = graph[out.inputs[0]].shape
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def check_batches(batches: Sequence[tuple[Any, Any]], graph: Graph, loss: Any = None, start: int = 0) -> None:
    """Every ``(inputs, targets)`` batch must fit ``graph``: non-empty, the same number of inputs
    as targets, floating-point finite inputs of the graph's per-sample shape and, for the default
    cross-entropy loss, 1-D integer labels in ``[0, classes)``. ``start``: the index of the first
    batch in the data (for the error message)."""
    shapes = _input_shapes(graph)
    classes = _classes(graph) if loss is None else None
    dtype = next((n.params["weight"].dtype for n in graph.parametric()), None)
    for i, (x, y) in enumerate(batches):
        where = f"data batch {start + i}"
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(f"{where}: inputs and targets must be tensors, got {type(x).__name__} and "
                            f"{type(y).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise DataError(f"{where} is empty (inputs of shape {tuple(x.shape)})")
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise DataError(f"{where}: {x.shape[0]} inputs but {y.shape[0] if y.dim() else 'a scalar of'} targets")
        if not x.is_floating_point():
            raise DataError(f"{where}: inputs must be floating point (e.g. float32 in [0, 1]), got {x.dtype}")
        if dtype is not None and x.dtype != dtype:
            raise DataError(f"{where}: inputs are {x.dtype} but the graph's weights are {dtype}: convert them "
                            f"(x.to({dtype}))")
        if len(shapes) == 1 and shapes[0] is not None and tuple(x.shape[1:]) != shapes[0]:
            raise DataError(f"{where}: inputs of shape {tuple(x.shape[1:])} per sample, but the graph takes "
                            f"{shapes[0]}")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{where}: inputs contain NaN or infinite values")
        if loss is not None:
            continue
        if y.dim() != 1 or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise DataError(f"{where}: labels must be a 1-D integer tensor of class indices for the default "
                            f"cross-entropy loss, got {y.dtype} of shape {tuple(y.shape)} (pass loss= for other "
                            "targets)")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise DataError(f"{where}: negative label {lo}")
        if classes is not None and hi >= classes:
            raise DataError(f"{where}: label {hi} is out of range: the graph has {classes} outputs "
                            f"(labels 0..{classes - 1})")


def require_single_output(graph: Graph, where: str) -> None:
    """Training needs one output tensor (logits, or a prediction): a model that returns a tuple or
    a dict is refused with what to do."""
    n = len(graph.output.inputs)
    if n != 1:
        raise ArgumentError(f"{where}: the model returns {n} values (a tuple, list or dict); nestir trains a model "
                            "with one output tensor. Wrap it so that forward returns the tensor the loss reads, "
                            "e.g. forward(x) = model(x)[0]")


def check_seed(seed: Any, where: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentError(f"{where}: seed must be an integer, got {seed!r}")
    return seed


def check_loss(loss: Any, where: str) -> None:
    if loss is not None and not callable(loss):
        raise ArgumentError(f"{where}: loss must be callable, loss(outputs, targets) -> scalar tensor, "
                            f"got {type(loss).__name__}")


def opaque_nodes(graph: Graph) -> list[str]:
    """One line per opaque node: its name, what it calls and where it came from."""
    require_graph(graph, "nestir.opaque_nodes")
    return [f"{n.name} = {n.attrs.get('label')} ({n.source or 'unknown source'})"
            for n in graph if n.op == Op.OPAQUE]
