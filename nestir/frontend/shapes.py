"""Shape and elementwise functions: split, permute, reshape, mean, softmax, binary ops with
constants, matmul, roll, pad, einsum, conv subclasses, and functions an op definition knows."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from nestir.frontend.values import _source, _Values
from nestir.ir import convert as cv
from nestir.ir.graph import Node
from nestir.ir.kinds import Fx, Op
from nestir.ir.opdefs import OPS, evaluate
from nestir.ir.ops import kept_axis, merged_axis


class _ShapeOps(_Values):
    def split(self, fxn: fx.Node, x: str, method: str, args: tuple) -> bool:
        """``chunk`` / ``split`` / ``tensor_split`` / ``unbind``: one ``index`` node per piece (a
        range of the cut dim, or one position for unbind); the call's value is their tuple."""
        shape = self.in_shape(x)
        kwargs = {k: self.const(v) for k, v in fxn.kwargs.items()}
        dim = cv.split_dim(method, tuple(self.const(a) for a in args), kwargs, len(shape))
        pieces = self.values[fxn]
        if dim is None or dim == 0 or not isinstance(pieces, (tuple, list)) or not pieces:
            return False
        names, start = [], 0
        for k, v in enumerate(pieces):
            index: Any = [slice(None)] * len(shape)
            if method == "unbind":
                index[dim] = k
            else:
                index[dim] = slice(start, start + v.shape[dim])
                start += v.shape[dim]
            items = cv.index_items(tuple(index), shape, self.graph[x].axis)
            if items is None:
                for n in names:
                    del self.graph.nodes[n]
                return False
            node = Node(self.graph.fresh_name(f"{fxn.name}__{k}"), "index", [x], {"items": items})
            node.axis = self.axis(node, v)
            node.shape, node.source = tuple(v.shape), _source(fxn)
            self.graph.add(node)
            names.append(node.name)
        self.env[fxn] = ("tuple", names)
        return True

    def permute(self, fxn: fx.Node, x: str, args: tuple, method: str | None = None) -> bool:
        if method is None:
            method = "permute" if fxn.target is torch.permute else "transpose"
        dims = cv.permute_dims(method, len(self.in_shape(x)), tuple(self.const(a) for a in args))
        if dims is None:
            return False
        if dims == sorted(dims):
            self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])
        else:
            self.add(Node(fxn.name, "permute", attrs={"dims": dims}), fxn, [x])
        return True

    def reshape(self, fxn: fx.Node, x: str) -> None:
        out = tuple(self.values[fxn].shape)
        if self.rebatches(fxn):
            self.unmerge_batch(x, out)  # the reshape that folded the channels into the batch dim keeps them apart
        src = self.in_shape(x)
        if len(out) == 2 and len(src) >= 2 and out[0] == src[0] and out[1] == math.prod(src[1:]) and \
                (self.graph[x].axis in (None, 1) or len(src) == 2):  # (else: a channels-last layout, below)
            op = "identity" if len(src) == 2 else "flatten"
            self.add(Node(fxn.name, op, attrs={"p": 0.0} if op == Op.IDENTITY else {}), fxn, [x])
        elif self.heads(fxn, x, src, out) or self.split_axis(fxn, x, src, out) or \
                self.channels_first_heads(fxn, x, src, out) or self.channels_first_merge(fxn, x, src, out):
            return
        elif len(src) >= 1 and len(out) >= 1 and out[0] == src[0] and self.fixed_rest(fxn):
            attrs: dict[str, Any] = {"rest": out[1:]}
            keep = kept_axis(src, out, self.graph[x].axis)
            if keep is not None:
                attrs["keep"] = [self.graph[x].axis, keep]
            elif (joins := merged_axis(src, out, self.graph[x].axis)) is not None:
                attrs["joins"] = list(joins)
            if keep is None and len(src) >= 3 and out[:-1] == src[:-2] and out[-1] == src[-2] * src[-1]:
                attrs["merge"] = True  # (B, ..., H, D) -> (B, ..., H*D): heads merged back (opdefs.heads)
            self.add(Node(fxn.name, "reshape", attrs=attrs), fxn, [x])
        elif self.rebatches(fxn):
            attrs = {"rest": out[1:], "rebatch": True}
            keep = kept_axis(src, out, self.graph[x].axis, rebatch=True)
            if keep is not None:
                attrs["keep"] = [self.graph[x].axis, keep]
            self.add(Node(fxn.name, "reshape", attrs=attrs), fxn, [x])
        elif fxn.op == Fx.CALL_MODULE:
            mod = self.gm.get_submodule(str(fxn.target))
            self.opaque(fxn, mod, "module", f"{type(mod).__name__}: reshapes the batch dimension away")
        else:
            self.opaque(fxn, fxn.target, "method" if fxn.op == Fx.CALL_METHOD else "function")

    def flatten_module(self, fxn: fx.Node, mod: nn.Flatten, x: str) -> None:
        """``nn.Flatten``: from dim 1 to the last, the flatten op (one channel becomes its H*W
        features); another range that keeps the batch dim, a reshape (freezes the groups it
        touches); one that flattens the batch dim stays opaque, saying so."""
        nd = len(self.in_shape(x))
        start = mod.start_dim % nd if nd else mod.start_dim
        if start >= 1:
            return self.reshape(fxn, x)
        self.opaque(fxn, mod, "module", f"Flatten(start_dim={mod.start_dim}, end_dim={mod.end_dim}): flattens "
                    "the batch dimension (only start_dim >= 1 is understood; nn.Flatten() is)")

    def mean(self, fxn: fx.Node, x: str, dims: Any, keepdim: bool, kind: str = "mean") -> None:
        nd = len(self.in_shape(x))
        if dims is None or not isinstance(keepdim, bool):
            return self.opaque(fxn, fxn.target, "method" if fxn.op == Fx.CALL_METHOD else "function")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % nd for d in dims)
        if 0 in dims:
            return self.opaque(fxn, fxn.target, "method" if fxn.op == Fx.CALL_METHOD else "function")
        attrs: dict[str, Any] = {"dims": dims, "keepdim": bool(keepdim)}
        if kind != "mean":
            attrs["kind"] = kind
        self.add(Node(fxn.name, "mean", attrs=attrs), fxn, [x])

    def softmax(self, fxn: fx.Node, x: str, dim: int) -> None:
        nd = len(self.in_shape(x))
        if dim % nd == 0:
            return self.opaque(fxn, fxn.target, "method" if fxn.op == Fx.CALL_METHOD else "function")
        self.add(Node(fxn.name, "softmax", attrs={"dim": dim % nd}), fxn, [x])

    def channelwise(self, fxn: fx.Node, kind: str, x: str, c: torch.Tensor, first: bool, trained: bool = True) -> bool:
        """``x op c`` with ``c`` one value per neuron of ``x`` (a layer scale, a per-channel shift,
        ``c`` broadcast along every other dim): a ``scale`` node that owns ``c`` (``scale_const``
        where ``c`` is not a trained parameter, ``trained``: a buffer, a table computed from
        buffers); a one-element ``c`` becomes a scalar operand."""
        src, out = self.graph[x], tuple(self.values[fxn].shape)
        if src.shape != out or c.is_complex():
            return False
        if c.numel() == 1:
            self.add(Node(fxn.name, "binary", attrs={"kind": kind, "scalar": float(c.item()), "scalar_first": first}),
                     fxn, [x])
            return True
        shape = list(c.shape)
        while shape and shape[0] == 1:
            shape.pop(0)
        ax = src.axis
        k = -1 if ax is None else len(shape) - len(out) + ax  # the operand's dim along the neuron axis
        if k < 0 or shape[k] != out[ax] or torch.broadcast_shapes(tuple(shape), out) != out:  # type: ignore[index]
            return False
        value = c.detach().reshape(shape).movedim(k, 0).clone().float()  # one row per neuron
        attrs = {"kind": kind, "first": first, **({"dim": k} if k else {})}
        op = "scale" if trained else "scale_const"
        self.add(Node(fxn.name, op, attrs=attrs, params={"value": value}), fxn, [x])
        return True

    def binary(self, fxn: fx.Node, kind: str, a: Any, b: Any) -> bool:
        ra, rb = self.ref(a), self.ref(b)
        for r, other, first in ((ra, b, False), (rb, a, True)):
            c = self.const_tensor(other)
            if r is not None and c is not None and self.graph[r].op != Op.CONST \
                    and self.channelwise(fxn, kind, r, c, first, self.trained(other)):
                return True
        if ra is not None and rb is not None:
            self.add(Node(fxn.name, "binary", attrs={"kind": kind}), fxn, [ra, rb])
            return True
        for r, other, first in ((ra, b, False), (rb, a, True)):
            s = self.const(other)
            if r is not None and isinstance(s, (int, float)) and not isinstance(s, bool):
                self.add(Node(fxn.name, "binary", attrs={"kind": kind, "scalar": float(s), "scalar_first": first}),
                         fxn, [r])
                return True
        return False

    def matmul(self, fxn: fx.Node) -> bool:
        """``a @ b`` of two computed values (not constants: a product with a weight is a layer)."""
        refs = [self.ref(a) for a in fxn.args]
        if len(refs) != 2 or fxn.kwargs or any(r is None or self.graph[r].op == Op.CONST for r in refs):
            return False
        self.add(Node(fxn.name, "matmul"), fxn, refs)  # type: ignore[arg-type]
        return True

    def roll(self, fxn: fx.Node, x: str) -> bool:
        """``torch.roll`` with constant shifts along given dims other than the batch dim."""
        a = {**dict(zip(("input", "shifts", "dims"), fxn.args, strict=False)), **fxn.kwargs}
        shifts, dims = a.get("shifts"), a.get("dims")
        shifts = [self.const(v) for v in shifts] if isinstance(shifts, (tuple, list)) else [self.const(shifts)]
        dims = [self.const(v) for v in dims] if isinstance(dims, (tuple, list)) else [self.const(dims)]
        nd = len(self.in_shape(x))
        if len(shifts) != len(dims) or not all(isinstance(v, int) for v in shifts + dims) or \
                any(d % nd == 0 for d in dims):
            return False
        self.add(Node(fxn.name, "roll", attrs={"shifts": tuple(shifts), "dims": tuple(d % nd for d in dims)}), fxn, [x])
        return True

    def pad(self, fxn: fx.Node, x: str) -> bool:
        """``F.pad`` with zeros, the batch dim not padded: a ``pad`` node (an identity where every
        pad is 0, as Swin's at sizes that are multiples of its window)."""
        names = ("input", "pad", "mode", "value")
        a = {**dict(zip(names, fxn.args, strict=False)), **fxn.kwargs}
        pads, mode, value = a.get("pad"), self.const(a.get("mode", "constant")), self.const(a.get("value"))
        pads = [self.const(p) for p in pads] if isinstance(pads, (tuple, list)) else self.const(pads)
        nd = len(self.in_shape(x))
        if not isinstance(pads, (tuple, list)) or not all(isinstance(p, int) for p in pads) or len(pads) % 2 or \
                len(pads) // 2 >= nd or mode != "constant" or value not in (None, 0, 0.0):
            return False
        if not any(pads):
            self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])
        else:
            self.add(Node(fxn.name, "pad", attrs={"pads": tuple(pads)}), fxn, [x])
        return True

    def einsum(self, fxn: fx.Node) -> bool:
        """``torch.einsum(equation, *values)`` of computed values: an ``einsum`` node."""
        if fxn.kwargs or len(fxn.args) < 2 or not isinstance(fxn.args[0], str):
            return False
        ops = fxn.args[1] if len(fxn.args) == 2 and isinstance(fxn.args[1], (list, tuple)) else fxn.args[1:]
        refs = [self.ref(a) for a in ops]
        eq = fxn.args[0].replace(" ", "")
        if not refs or "." in eq or any(r is None or self.graph[r].op == Op.CONST for r in refs):
            return False
        self.add(Node(fxn.name, "einsum", attrs={"equation": eq}), fxn, refs)  # type: ignore[arg-type]
        return True

    def conv_subclass(self, fxn: fx.Node, mod: nn.Module, x: str) -> bool:
        """A subclass of ``nn.Conv2d`` / ``nn.Conv1d`` (timm's ``Conv2dSame``) whose recorded output
        is a plain conv of its input, as declared or after TensorFlow-style 'same' zero padding
        (asymmetric: a ``pad`` node before the conv)."""
        w, b = mod.weight, mod.bias  # type: ignore[union-attr]
        src, out = self.values[fxn.args[0]], self.values[fxn]
        if not isinstance(out, torch.Tensor) or getattr(mod, "padding_mode", "zeros") != "zeros":
            return False
        k, s, d = tuple(w.shape[2:]), cv._pair(mod.stride, w.dim() - 2), cv._pair(mod.dilation, w.dim() - 2)
        pads: list[int] = []
        for i, kk, ss, dd in reversed(list(zip(src.shape[2:], k, s, d, strict=True))):  # F.pad: last dim first
            total = max((math.ceil(i / ss) - 1) * ss + (kk - 1) * dd + 1 - i, 0)
            pads += [total // 2, total - total // 2]
        tol = 1e-5 * max(1.0, float(out.abs().max()))
        for same in (False, True):
            attrs = cv.conv_attrs(mod.stride, 0 if same else mod.padding, mod.dilation, mod.groups, k)
            if attrs is None:
                continue
            node = cv.conv_node(fxn.name, w, b, attrs)
            with torch.no_grad():
                inp = F.pad(src, pads) if same else src
                y = evaluate(node, [inp], node.params)
            if y.shape != out.shape or not torch.allclose(y, out, atol=tol, rtol=1e-4):
                continue
            if same and any(pads):
                pad = Node(self.graph.fresh_name(f"{fxn.name}__pad"), "pad", attrs={"pads": pads})
                self.put(pad, [x], inp, axis=1)
                x = pad.name
            self.put(node, [x], y, axis=1)
            self.env[fxn] = ("node", node.name)
            return True
        return False

    def known_function(self, fxn: fx.Node, kw: dict[str, Any] | None) -> bool:
        """A call of a function an op definition recognises (``OpDef.functions``), with one tensor
        input and every other tensor argument a constant."""
        t = fxn.target
        d = next((d for d in OPS.values() if d.handles(t)), None)
        if d is None:
            return False
        src = kw["input"] if kw is not None and "input" in kw else (fxn.args[0] if fxn.args else None)
        x = self.ref(src)
        others = [a for a in cv.flat((*fxn.args, *fxn.kwargs.values())) if isinstance(a, fx.Node) and a is not src]
        if x is None or any(self.env[a][0] == "node" and self.graph[self.env[a][1]].op != Op.CONST for a in others):
            return False
        node = d.from_function(fxn.name, fxn, kw, self.const)
        if node is None:
            return False
        self.add(node, fxn, [x])
        return True
