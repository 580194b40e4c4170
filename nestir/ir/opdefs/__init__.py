"""Op definitions: one :class:`OpDef` per IR op, registered by name (see :mod:`.base`).

Importing this package registers every op nestir knows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nestir.ir.opdefs import elementwise, graphio, heads, norms, parametric, shape, spatial, tokens  # noqa: F401  (registration)
from nestir.ir.opdefs.base import OPS, OpDef, TorchLowering, opdef, register
from nestir.ir.opdefs.shape import index_range

if TYPE_CHECKING:
    from nestir.ir.graph import Node

__all__ = ["OPS", "OpDef", "TorchLowering", "evaluate", "index_range", "opdef", "register"]


def evaluate(node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool = False) -> Any:
    """Compute ``node`` from its input values ``args`` with the tensors ``p``.

    ``p`` holds the tensors to compute with: for parametric nodes ``weight`` must already have
    its mask applied (the executor multiplies, the lowering bakes it in)."""
    return opdef(node.op).evaluate(node, args, p, training)
