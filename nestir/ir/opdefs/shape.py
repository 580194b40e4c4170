"""Ops that move, select, join or reduce values without weights: ``flatten``, ``reshape``,
``permute``, ``index``, ``slice``, ``gather``, ``cat``, ``stack``, ``mean``, ``pad``."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.opdefs.heads import headed, through
from nestir.ir.ops import index_key, kept_axis

if TYPE_CHECKING:
    from nestir.ir.graph import Graph, Node
    from nestir.ir.groups import GroupInfo, Layout, _Analysis


def index_range(n: Node, axis: int | None) -> tuple[int, int] | None:
    """The (start, stop) an ``index`` node takes of its input's neuron ``axis``, or None when it
    takes all of it."""
    if axis is None:
        return None
    item = n.attrs["items"][axis]
    return None if item is None or isinstance(item, int) else (item[0], item[1])


@register
class Flatten(OpDef):
    """``torch.flatten(x, 1)``: each channel becomes H·W features (a repeated layout)."""

    name = "flatten"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return 1

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.flatten(args[0], 1)

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.input_layout(node, 1)
        sp = math.prod((an.graph[node.inputs[0]].shape or ())[2:])
        return None if lay is None else [(g, r * sp) for g, r in lay]

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.flatten, (args[0], 1))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.op("Flatten", xs, node.name, axis=1)


@register
class Reshape(OpDef):
    """``x.reshape(B, *rest)``. With ``keep`` = [input axis, output axis] it keeps the neuron axis a
    whole dim (the dims before and after it only merge or split among themselves) and passes the
    layout through; ``rest`` then follows the width under edits. Otherwise it freezes.
    ``rebatch``: ``x.reshape(-1, *rest)``, the batch dim merged with others or split (Swin's
    windows: ``view(-1, w, w, C)``); the dims after the neuron axis must then stay as they are.
    ``joins`` = (output axis, before, after): the neuron axis merged with the dims next to it
    (Swin's patch merging, ``(B, h, w, 2, 2, C) -> (B, h, w, 4C)``): ``before`` copies of the
    layout, each neuron repeated ``after`` times."""

    name = "reshape"
    layout_only = True

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        if "joins" in node.attrs:
            return node.attrs["joins"][0]
        if node.attrs.get("merge"):
            return value.dim() - 1
        return node.attrs["keep"][1] if "keep" in node.attrs else None

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        if node.attrs.get("rebatch"):
            return args[0].reshape(-1, *node.attrs["rest"])
        return args[0].reshape(args[0].shape[0], *node.attrs["rest"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        if "keep" in node.attrs:
            return an.input_layout(node, node.attrs["keep"][0])
        if "joins" in node.attrs:  # the neuron axis merged with dims before it (copies) or after (repeats)
            _, before, after = node.attrs["joins"]
            lay = an.input_layout(node, None)
            return None if lay is None else [(g, r * after) for g, r in lay] * before
        return super().neurons(an, node)

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """A reshape that keeps the heads a whole dim stays in head space; ``merge``, a reshape
        of (B, ..., H, D) into (B, ..., H*D), makes the heads neurons of the group again (of a
        group of their own, tied to it in heads, where D is a part of each head)."""
        g, h = an.heads[node.inputs[0]]
        src, out = an.graph[node.inputs[0]].shape or (), node.shape or ()
        if node.attrs.get("merge") and h == len(src) - 2:
            if an.width[an.find(g)] == out[-1]:
                return True, [(g, 1)]
            # a part of each head (v of LeViT's per-head q|k|v): new neurons, tied to the heads
            part = an.new(out[-1])
            return (True, [(part, 1)]) if an.tie_heads(node.name, g, part, src[h]) else (False, None)
        k = kept_axis(src, out, h, rebatch=bool(node.attrs.get("rebatch")))
        return (False, None) if k is None else headed(an, node, h=k)

    def follow(self, node: Node, graph: Graph, info: GroupInfo, gid: int, delta: int,
               shape: tuple[int, ...] | None) -> dict[str, Any] | None:
        return None if shape is None else {"rest": tuple(shape[1:])}  # its target shape follows the width

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_method("reshape", (args[0], -1, *node.attrs["rest"]))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        shape = e.const(node.name + "_shape", np.array([-1, *node.attrs["rest"]]), np.int64)
        return e.op("Reshape", [xs[0], shape], node.name)


@register
class Permute(OpDef):
    """``x.permute(dims)`` (``transpose`` too) with the batch dim first: the neuron axis moves."""

    name = "permute"
    layout_only = True

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return None if srcs[0].axis is None else node.attrs["dims"].index(srcs[0].axis)

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return args[0].permute(*node.attrs["dims"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.layout.get(node.inputs[0])

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        return headed(an, node, h=node.attrs["dims"].index(an.heads[node.inputs[0]][1]))

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_method("permute", (args[0], *node.attrs["dims"]))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.op("Transpose", xs, node.name, perm=list(node.attrs["dims"]))


@register
class Index(OpDef):
    """``x[...]`` with ``items``, one per dim: None (whole), an int (the dim goes) or
    (start, stop, step). The batch dim stays whole; the neuron axis whole or a contiguous range,
    which selects the layout segments it covers (edits move the range with the widths)."""

    name = "index"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        a = srcs[0].axis
        return None if a is None else a - sum(isinstance(i, int) for i in node.attrs["items"][:a])

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return args[0][index_key(node.attrs["items"])]

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        src = an.graph[node.inputs[0]]
        lay = an.layout.get(src.name)
        cut = index_range(node, src.axis)
        if lay is None or cut is None:
            return lay
        start, stop = cut
        out, off = [], 0
        for g, r in lay:
            w = an.width[an.find(g)] * r
            if start <= off and off + w <= stop:
                out.append((g, r))
            elif off < stop and start < off + w:  # cuts into this segment
                an.freeze(lay, f"'{node.name}' takes channels {start}:{stop}, which cut a neuron group")
                return None
            off += w
        return out

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """Any dim but the heads' may be sliced or dropped (a class token's query)."""
        items, h = node.attrs["items"], an.heads[node.inputs[0]][1]
        if items[h] is not None:
            return False, None
        return headed(an, node, h=h - sum(isinstance(i, int) for i in items[:h]))

    def follow(self, node: Node, graph: Graph, info: GroupInfo, gid: int, delta: int,
               shape: tuple[int, ...] | None) -> dict[str, Any] | None:
        """A channel range moves with the widths of the segments before and inside it."""
        src = graph[node.inputs[0]]
        lay = info.layouts.get(src.name) or []
        cut = index_range(node, src.axis)
        if cut is None or gid not in {g for g, _ in lay}:
            return None
        before, inside, off = 0, 0, 0
        for g, r in lay:
            if off < cut[0]:
                before += (g == gid) * r
            elif off < cut[1]:
                inside += (g == gid) * r
            off += info.groups[g].width * r
        items = list(node.attrs["items"])
        s = cut[0] + before * delta
        items[src.axis] = (s, s + cut[1] - cut[0] + inside * delta, 1)  # type: ignore[index]
        return {"items": items}

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(operator.getitem, (args[0], index_key(node.attrs["items"])))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """Ranges as one Slice, then each int index as a Gather (last dim first: it drops the dim)."""
        nm, x, items = node.name, xs[0], node.attrs["items"]
        ranges = [(d, i) for d, i in enumerate(items) if isinstance(i, (list, tuple))]
        if ranges:
            cols = list(zip(*[(s, t, st, d) for d, (s, t, st) in ranges], strict=True))
            big = np.iinfo(np.int64).max  # a negative step's stop of -1 means 'past index 0', not 'the last'
            stops = [-big if st < 0 and t == -1 else t for t, st in zip(cols[1], cols[2], strict=True)]
            ins = [x] + [e.const(nm + k, np.array(v), np.int64)
                         for k, v in (("_starts", cols[0]), ("_ends", stops), ("_axes", cols[3]), ("_steps", cols[2]))]
            x = e.op("Slice", ins, nm + "_slice")
        for d in sorted((d for d, i in enumerate(items) if isinstance(i, int)), reverse=True):
            x = e.op("Gather", [x, e.const(nm + "_at", np.array(items[d]), np.int64)], nm + f"_at{d}", axis=d)
        return x


@register
class Slice(OpDef):
    """``narrow`` along ``dims`` from ``starts`` to ``ends`` (made by compaction: a crop to the
    live pixels); freezes what it reads."""

    name = "slice"

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        x, a = args[0], node.attrs
        for d, s, e in zip(a["dims"], a["starts"], a["ends"], strict=True):
            x = x.narrow(d, s, e - s)
        return x

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        x, a = args[0], node.attrs
        for d, s, e in zip(a["dims"], a["starts"], a["ends"], strict=True):
            x = low.fg.call_method("narrow", (x, d, s, e - s))
        return x

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        a, nm = node.attrs, node.name
        ins = [xs[0]] + [e.const(nm + k, np.array(a[v]), np.int64)
                         for k, v in (("_starts", "starts"), ("_ends", "ends"), ("_axes", "dims"))]
        return e.op("Slice", ins, nm)


@register
class Gather(OpDef):
    """``index_select`` of ``params["index"]`` along ``dim`` (made by compaction: the input
    columns a layer still reads); freezes what it reads."""

    name = "gather"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return args[0].index_select(node.attrs["dim"], p["index"])

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        low.root.register_buffer(node.name, node.params["index"].clone())
        return low.fg.call_function(torch.index_select, (args[0], node.attrs["dim"], low.fg.get_attr(node.name)))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        idx = e.const(node.name + "_index", node.params["index"], np.int64)
        return e.op("Gather", [xs[0], idx], node.name, axis=int(node.attrs["dim"]))


@register
class Cat(OpDef):
    """``torch.cat`` along ``dim``: along the neuron axis the layouts join end to end (concat
    offsets); along another dim they must be the same neurons."""

    name = "cat"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis if value.dim() >= 2 else None

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.cat(list(args), dim=node.attrs["dim"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lays = [an.layout.get(i) for i in node.inputs]
        srcs = [an.graph[i] for i in node.inputs]
        if all(s.axis == node.attrs["dim"] for s in srcs):
            if any(lay is None for lay in lays):
                for lay in lays:
                    an.freeze(lay, f"cat '{node.name}' joins a frozen value")
                return None
            return [seg for lay in lays for seg in lay]  # type: ignore[union-attr]
        for i, s in zip(node.inputs, srcs, strict=True):
            if s.axis != node.axis:  # its neurons lie along another dim of the result: fixed
                an.freeze(an.layout.get(i), f"cat '{node.name}' joins it along another dim")
        return an.unify([lay if s.axis == node.axis else None for lay, s in zip(lays, srcs, strict=True)],
                        f"cat '{node.name}'")

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """Values in head space joined along another dim than their heads' (EVA's rotary
        embedding of every token but the class token): they tie."""
        hs = {an.heads.get(i, (0, -1))[1] for i in node.inputs}
        if len(hs) != 1 or node.attrs["dim"] in hs or -1 in hs:
            return False, None
        return headed(an, node, h=hs.pop(), tie=node.inputs)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.cat, (list(args),), {"dim": node.attrs["dim"]})

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.op("Concat", xs, node.name, axis=int(node.attrs["dim"]))


@register
class Stack(OpDef):
    """``torch.stack`` along a new dim ``dim`` (not the batch dim): every input holds the same
    neurons (SKNet's paths, the pieces of a split neuron axis), and the neuron axis moves past the
    new dim when it comes after it."""

    name = "stack"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        a = srcs[0].axis
        if a is None or any(s.axis != a for s in srcs):
            return None
        return a + 1 if node.attrs["dim"] <= a else a

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.stack(list(args), dim=node.attrs["dim"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lays = [an.layout.get(i) for i in node.inputs]
        if node.axis is None:
            for lay in lays:
                an.freeze(lay, f"stack '{node.name}' joins values with their neurons on different dims")
            return None
        return an.unify(lays, f"stack '{node.name}'")

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        hs = {an.heads.get(i, (0, -1))[1] for i in node.inputs}
        if len(hs) != 1 or -1 in hs:
            return False, None
        h = hs.pop()
        return headed(an, node, h=h + 1 if node.attrs["dim"] <= h else h, tie=node.inputs)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.stack, (list(args),), {"dim": node.attrs["dim"]})

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        d, nm = node.attrs["dim"], node.name
        axes = e.const(nm + "_axes", np.array([d]), np.int64)
        ups = [e.op("Unsqueeze", [x, axes], f"{nm}_u{k}") for k, x in enumerate(xs)]
        return e.op("Concat", ups, nm, axis=int(d))


@register
class Mean(OpDef):
    """``x.mean(dims, keepdim)`` (``x.sum`` with ``kind`` "sum"); reducing the neuron axis freezes it."""

    name = "mean"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        first = srcs[0]
        if value.dim() < 2 or first.axis is None:
            return None
        dims = node.attrs["dims"]
        if first.axis in dims:
            return None
        return first.axis if node.attrs["keepdim"] else first.axis - sum(d < first.axis for d in dims)

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        kind = node.attrs.get("kind", "mean")
        return getattr(args[0], kind)(dim=node.attrs["dims"], keepdim=node.attrs["keepdim"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.layout.get(node.inputs[0])
        if node.axis is None:
            an.freeze(lay, f"mean '{node.name}' reduces the neuron axis")
            return None
        return lay

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        dims, h = node.attrs["dims"], an.heads[node.inputs[0]][1]
        if h in dims:
            return False, None
        return headed(an, node, h=h if node.attrs["keepdim"] else h - sum(d < h for d in dims))

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a = node.attrs
        return low.fg.call_method(a.get("kind", "mean"), (args[0], tuple(a["dims"])), {"keepdim": a["keepdim"]})

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        axes = e.const(node.name + "_axes", np.array(node.attrs["dims"]), np.int64)
        op = "ReduceSum" if node.attrs.get("kind") == "sum" else "ReduceMean"
        return e.op(op, [xs[0], axes], node.name, keepdims=int(node.attrs["keepdim"]))


@register
class Pad(OpDef):
    """Zero padding (``pads`` in ``F.pad`` order: begin/end pairs, last dim first; the batch dim
    is never padded). Padding the neuron axis would add constant neurons: it freezes them."""

    name = "pad"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    @staticmethod
    def padded(node: Node, dim: int | None) -> bool:
        """Whether dim ``dim`` of the input is padded."""
        fp, nd = node.attrs["pads"], len(node.shape or ())
        i = nd - 1 - dim if dim is not None else len(fp)
        return 2 * i < len(fp) and any(fp[2 * i: 2 * i + 2])

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return F.pad(args[0], node.attrs["pads"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.layout.get(node.inputs[0])
        if self.padded(node, an.graph[node.inputs[0]].axis):
            an.freeze(lay, f"pad '{node.name}' pads the neuron axis")
            return None
        return lay

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        return (False, None) if self.padded(node, an.heads[node.inputs[0]][1]) else through(an, node)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(F.pad, (args[0], list(node.attrs["pads"])))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """F.pad's (last dim first, begin/end pairs) to ONNX's (all begins, then all ends)."""
        nd = len(node.shape or ())
        fp = list(node.attrs["pads"])
        pair = lambda d, k: fp[2 * (nd - 1 - d) + k] if 2 * (nd - 1 - d) + k < len(fp) else 0  # noqa: E731
        pads = [pair(d, 0) for d in range(nd)] + [pair(d, 1) for d in range(nd)]
        return e.op("Pad", [xs[0], e.const(node.name + "_pads", np.array(pads), np.int64)], node.name)


@register
class Roll(OpDef):
    """``torch.roll(x, shifts, dims)`` (Swin's shifted windows): a cyclic shift of dims other
    than the batch dim; rolling the neuron axis would reorder the neurons (it freezes them)."""

    name = "roll"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.roll(args[0], list(node.attrs["shifts"]), list(node.attrs["dims"]))

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.layout.get(node.inputs[0])
        if an.graph[node.inputs[0]].axis in node.attrs["dims"]:
            an.freeze(lay, f"roll '{node.name}' rolls the neuron axis")
            return None
        return lay

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        return (False, None) if an.heads[node.inputs[0]][1] in node.attrs["dims"] else through(an, node)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.roll, (args[0], list(node.attrs["shifts"]), list(node.attrs["dims"])))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """Per dim: the last ``shift`` entries, then the rest (two Slices and a Concat)."""
        x, nm = xs[0], node.name
        for k, (s, d) in enumerate(zip(node.attrs["shifts"], node.attrs["dims"], strict=True)):
            n = (node.shape or ())[d]
            s %= n
            if not s:
                continue
            big = np.iinfo(np.int64).max
            ax = e.const(f"{nm}_ax{k}", np.array([d]), np.int64)
            tail = e.op("Slice", [x, e.const(f"{nm}_t{k}", np.array([n - s]), np.int64),
                                  e.const(f"{nm}_e{k}", np.array([big]), np.int64), ax], f"{nm}_tail{k}")
            head = e.op("Slice", [x, e.const(f"{nm}_z{k}", np.array([0]), np.int64),
                                  e.const(f"{nm}_h{k}", np.array([n - s]), np.int64), ax], f"{nm}_head{k}")
            x = e.op("Concat", [tail, head], f"{nm}_{k}", axis=int(d))
        return x if x != xs[0] else e.op("Identity", [x], nm)
