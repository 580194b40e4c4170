"""The walker: each fx node of a traced module is handed to the handler of its kind (function,
method, module, setitem); ``build`` returns the IR graph after the end-of-build rewrites."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from nestir.frontend.attention import _AttentionOps
from nestir.frontend.batch import _BatchOps
from nestir.frontend.rewrites import _cut_producers, _holds_tensor, _output_refs, _take_pieces, _takes_piece
from nestir.frontend.shapes import _ShapeOps
from nestir.frontend.values import _NEW_TENSOR, _source
from nestir.ir import convert as cv
from nestir.ir.errors import TraceError
from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Fx, Op
from nestir.ir.opdefs import OPS, opdef
from nestir.ir.opdefs.elementwise import ACT_METHODS
from nestir.ir.permutations import fold_permutations


class _Builder(_ShapeOps, _AttentionOps, _BatchOps):
    def call_function(self, fxn: fx.Node) -> None:
        """A function call: the handler its target has in :data:`_FUNCTIONS` (each says whether it
        made the node), else a function an op definition knows, else an opaque node."""
        t = fxn.target
        try:
            norm = fxn.normalized_arguments(self.gm, normalize_to_only_use_kwargs=True)
        except Exception:
            norm = None
        kw = dict(norm.kwargs) if norm is not None else None
        first = self.ref(fxn.args[0]) if fxn.args else None
        handler = _FUNCTIONS.get(t)  # type: ignore[arg-type]
        if handler is not None and handler(self, fxn, kw, first):
            return
        if self.known_function(fxn, kw):
            return
        self.opaque(fxn, t, "function")

    # -- the function handlers: (fx node, normalized kwargs or None, first input's IR name) -> handled?
    def _neg(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if first is None or len(fxn.args) != 1 or fxn.kwargs:
            return False
        self.add(Node(fxn.name, Op.BINARY, attrs={"kind": "mul", "scalar": -1.0, "scalar_first": False}), fxn, [first])
        return True

    def _matmul(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return bool(self.matmul(fxn))

    def _sdpa(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return bool(self.sdpa(fxn))

    def _einsum(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return bool(self.einsum(fxn))

    def _pad(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return first is not None and bool(self.pad(fxn, first))

    def _roll(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return first is not None and bool(self.roll(fxn, first))

    def _binary(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if len(fxn.args) != 2 or fxn.kwargs.get("alpha", 1) != 1:
            return False
        return bool(self.binary(fxn, cv.BINARY_FUNCS[fxn.target], fxn.args[0], fxn.args[1]))

    def _cat(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        refs = [self.ref(a) for a in kw["tensors"]] if kw is not None else []
        if not refs or any(r is None for r in refs):
            return False
        dim = int(kw.get("dim", 0)) % len(self.in_shape(refs[0]))  # type: ignore[union-attr, arg-type]
        if not self.prepend(fxn, refs, dim):  # type: ignore[arg-type]
            self.add(Node(fxn.name, Op.CAT, attrs={"dim": dim}), fxn, refs)  # type: ignore[arg-type]
        return True

    def _stack(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        refs = [self.ref(a) for a in kw["tensors"]] if kw is not None else []
        if not refs or any(r is None for r in refs):
            return False
        d = int(kw.get("dim", 0)) % (len(self.in_shape(refs[0])) + 1)  # type: ignore[union-attr, arg-type]
        if d < 1:
            return False
        self.add(Node(fxn.name, Op.STACK, attrs={"dim": d}), fxn, refs)  # type: ignore[arg-type]
        return True

    def _softmax(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if first is None or kw is None or not isinstance(kw.get("dim"), int) or kw.get("dtype") is not None:
            return False
        self.softmax(fxn, first, kw["dim"])
        return True

    def _sum(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if first is None or kw is None or kw.get("dim") is None or kw.get("dtype") is not None:
            return False
        self.mean(fxn, first, kw.get("dim"), kw.get("keepdim", False), kind="sum")
        return True

    def _mean(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if first is None or kw is None or "dim" not in kw:
            return False
        self.mean(fxn, first, kw.get("dim"), kw.get("keepdim", False))
        return True

    def _reshape(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if first is None:
            return False
        self.reshape(fxn, first)
        return True

    def _permute(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return first is not None and bool(self.permute(fxn, first, fxn.args[1:]))

    def _split(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        return first is not None and bool(self.split(fxn, first, fxn.target.__name__, tuple(fxn.args[1:])))

    def _getitem(self, fxn: fx.Node, kw: dict | None, first: str | None) -> bool:
        if first is None or len(fxn.args) != 2 or self.ref(fxn.args[1]) is not None:
            return False
        items = cv.index_items(self.index_key(fxn.args[1]), self.in_shape(first), self.graph[first].axis)
        if items is None:
            return False
        op = Op.IDENTITY if all(i is None for i in items) else Op.INDEX
        self.add(Node(fxn.name, op, attrs={"p": 0.0} if op == Op.IDENTITY else {"items": items}), fxn, [first])
        return True

    def call_method(self, fxn: fx.Node) -> None:
        m = str(fxn.target)
        x = self.ref(fxn.args[0]) if fxn.args else None
        if x is not None and m in cv.IDENTITY_METHODS:
            return self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])
        if x is not None and m == "roll" and self.roll(fxn, x):
            return None
        if x is not None and m in ("to", "type_as", "float") and self.same_tensor_type(fxn, x):
            return self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])  # a cast to what it is
        if x is not None and m in ACT_METHODS and len(fxn.args) == 1:
            return self.add(Node(fxn.name, "act", attrs={"kind": ACT_METHODS[m]}), fxn, [x])
        if m in cv.BINARY_METHODS and len(fxn.args) == 2 and not fxn.kwargs:
            if self.binary(fxn, cv.BINARY_METHODS[m], fxn.args[0], fxn.args[1]):
                return
        if x is not None and m in ("repeat", "expand") and self.batch_expand(fxn, x, m):
            return None
        if x is not None and m == "expand_as" and len(fxn.args) == 2 and not fxn.kwargs:
            other = self.ref(fxn.args[1])
            if other is not None and self.graph[other].op != Op.CONST:
                return self.add(Node(fxn.name, "expand_as"), fxn, [x, other])
        if x is not None and m == "neg" and len(fxn.args) == 1 and not fxn.kwargs:
            return self.add(Node(fxn.name, "binary", attrs={"kind": "mul", "scalar": -1.0, "scalar_first": False}),
                            fxn, [x])
        if m in ("matmul", "bmm", "__matmul__") and self.matmul(fxn):
            return None
        if x is not None and m in cv.RESHAPE_METHODS:
            return self.reshape(fxn, x)
        if x is not None and m in cv.SPLIT_METHODS and self.split(fxn, x, m, tuple(fxn.args[1:])):
            return None
        if x is not None and m in cv.PERMUTE_METHODS and not fxn.kwargs and self.permute(fxn, x, fxn.args[1:], m):
            return None
        if x is not None and m in ("mean", "sum") and "dtype" not in fxn.kwargs:
            dims = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim")
            keepdim = fxn.args[2] if len(fxn.args) > 2 else fxn.kwargs.get("keepdim", False)
            return self.mean(fxn, x, dims, keepdim, kind=m)
        if x is not None and m == "softmax" and "dtype" not in fxn.kwargs:
            dim = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim")
            if isinstance(dim, int):
                return self.softmax(fxn, x, dim)
        self.opaque(fxn, m, "method")

    def call_module(self, fxn: fx.Node) -> None:
        mod = self.gm.get_submodule(str(fxn.target))
        auto = getattr(self.gm, "_nestir_auto_leaves", {})
        x = self.ref(fxn.args[0]) if len(fxn.args) == 1 and not fxn.kwargs else None
        if isinstance(mod, nn.Flatten) and x is not None and str(fxn.target) not in auto:
            return self.flatten_module(fxn, mod, x)
        if type(mod) is nn.Softmax and x is not None and isinstance(mod.dim, int):
            return self.softmax(fxn, x, mod.dim)
        if cv.is_attention_module(mod) and str(fxn.target) not in auto and self.attention(fxn, mod):
            return None
        if x is not None and isinstance(mod, (nn.Conv1d, nn.Conv2d)) and type(mod) not in (nn.Conv1d, nn.Conv2d):
            if str(fxn.target) not in auto and self.conv_subclass(fxn, mod, x):
                return None
            if str(fxn.target) not in auto:  # not a plain conv (weight standardisation): trace it through
                self.unmatched.append(str(fxn.target))
        d = next((d for d in OPS.values() if d.matches(mod)), None)
        node = d.from_module(fxn.name, mod) if d is not None and x is not None and str(fxn.target) not in auto else None
        if node is not None and d.structural and not self.reproduces(node, fxn):  # type: ignore[union-attr]
            node = None
        if node is not None:
            return self.add(node, fxn, [x])  # type: ignore[list-item]
        if str(fxn.target) not in auto and not type(mod).__module__.startswith("torch.") and \
                (cv.is_attention_module(mod) or (d is not None and d.structural)):
            self.unmatched.append(str(fxn.target))
        self.opaque(fxn, mod, "module")
        if str(fxn.target) in auto:
            n = self.graph[fxn.name]
            n.attrs["label"] = f"{n.attrs['label']} (not traceable, kept whole: {auto[str(fxn.target)]})"

    def setitem(self, fxn: fx.Node) -> None:
        """``t[...] = value``: on a constant (a mask built in place, as Swin's) the constant's
        recorded value already holds it; on a computed value nestir cannot follow it."""
        target = fxn.args[0]
        kind, r = self.env.get(target, ("const", None)) if isinstance(target, fx.Node) else ("const", None)
        if kind == "node" and self.graph[r].op != Op.CONST:
            raise TraceError(f"{_source(fxn)}: an assignment into a computed tensor ('{r}[...] = ...') changes it in "
                             "place, which nestir cannot follow. Fix: compute the new value (torch.where, torch.cat, "
                             "index_put) instead, or make the submodule that does it a leaf: nestir.trace(..., "
                             "leaf_modules=[ThatModule]).")
        self.env[fxn] = ("const", None)

    def reproduces(self, node: Node, fxn: fx.Node) -> bool:
        """Whether ``node`` computes what the module call ``fxn`` recorded (a module recognised by
        its structure, not its class, must prove it)."""
        x, ref = self.values.get(fxn.args[0]), self.values.get(fxn)
        if not isinstance(x, torch.Tensor) or not isinstance(ref, torch.Tensor):
            return False
        try:
            with torch.no_grad():
                y = opdef(node.op).evaluate(node, [x], node.params, False)
        except Exception:
            return False
        return tuple(y.shape) == tuple(ref.shape) and torch.allclose(
            y, ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=1e-4)

    def folds(self, fxn: fx.Node, v: Any) -> bool:
        """A call whose every input is a constant (``gamma.view(1, -1, 1, 1)``, ``pos.flatten()``)
        is itself a constant: the value recorded for it."""
        if not isinstance(v, torch.Tensor) or fxn.op == Fx.CALL_MODULE:
            return False
        args = list(fxn.args)
        fresh = fxn.op == Fx.CALL_METHOD and fxn.target in _NEW_TENSOR  # x.new_zeros(sizes): x's dtype only
        used = [a for a in (*args[fresh:], *fxn.kwargs.values()) for a in cv.flat(a) if isinstance(a, fx.Node)]
        refs = [self.env[a] for a in used]
        return (bool(refs) or fresh) and all(kind == "const" or (kind == "node" and self.graph[r].op == Op.CONST)
                                             for kind, r in refs)

    def build(self, name: str) -> Graph:
        self.graph.name = name
        for fxn in self.gm.graph.nodes:
            v = self.values.get(fxn)
            if fxn in self.env:  # converted with the node before it (a permute into heads)
                continue
            if fxn.op == Fx.PLACEHOLDER and not isinstance(v, torch.Tensor):  # an argument fixed at its default
                self.env[fxn] = ("const", v)
            elif fxn.op == Fx.PLACEHOLDER:
                self.add(Node(fxn.name, "input"), fxn, [])
            elif fxn.op == Fx.OUTPUT:
                refs, structure = _output_refs(self, fxn.args[0])
                self.graph.add(Node(fxn.name, "output", inputs=refs, attrs={"structure": structure}))
            elif fxn.op == Fx.GET_ATTR:
                if isinstance(v, torch.Tensor):
                    trained = {"trained": True} if isinstance(v, nn.Parameter) and v.requires_grad else {}
                    self.add(Node(fxn.name, "const", attrs=trained, params={"value": v.detach().clone()}), fxn, [])
                else:
                    self.env[fxn] = ("const", v)
            elif fxn.target is operator.getitem and isinstance(fxn.args[0], fx.Node) \
                    and self.env[fxn.args[0]][0] == "tuple":
                item = self.env[fxn.args[0]][1][fxn.args[1]]
                self.env[fxn] = ("const", None) if item is None else ("node", item)
            elif _takes_piece(fxn) and isinstance(fxn.args[0], fx.Node) and self.env[fxn.args[0]][0] == "tuple":
                self.env[fxn] = self.env[fxn.args[0]]  # unbind(0) of pieces: the pieces
            elif fxn.op == Fx.CALL_FUNCTION and fxn.target is operator.setitem:
                self.setitem(fxn)
            elif not isinstance(v, torch.Tensor) and not _holds_tensor(v):
                if not self.sizes(fxn, v):
                    self.env[fxn] = ("const", v)
            elif self.folds(fxn, v):
                used = [a for a in cv.flat((*fxn.args, *fxn.kwargs.values())) if isinstance(a, fx.Node)]
                trained = {"trained": True} if any(self.trained(a) for a in used) else {}
                self.add(Node(fxn.name, "const", attrs=trained, params={"value": v.detach().clone()}), fxn, [])
            elif fxn.op == Fx.CALL_FUNCTION:
                self.call_function(fxn)
            elif fxn.op == Fx.CALL_METHOD:
                self.call_method(fxn)
            else:
                self.call_module(fxn)
        self.graph.drop_unused()
        fold_permutations(self.graph)
        _cut_producers(self.graph)
        _take_pieces(self.graph)
        return self.graph


Handler = Callable[[_Builder, fx.Node, "dict | None", "str | None"], bool]
# the walker's table: a function's target -> its handler (a target absent here goes to the op
# definitions, then stays opaque)
_FUNCTIONS: dict[Any, Handler] = {
    operator.neg: _Builder._neg, torch.neg: _Builder._neg,
    operator.matmul: _Builder._matmul, torch.matmul: _Builder._matmul, torch.bmm: _Builder._matmul,
    F.scaled_dot_product_attention: _Builder._sdpa, torch.einsum: _Builder._einsum, F.pad: _Builder._pad,
    torch.roll: _Builder._roll, torch.cat: _Builder._cat, torch.concat: _Builder._cat, torch.stack: _Builder._stack,
    torch.softmax: _Builder._softmax, F.softmax: _Builder._softmax, torch.sum: _Builder._sum,
    torch.mean: _Builder._mean, operator.getitem: _Builder._getitem,
    **{t: _Builder._binary for t in cv.BINARY_FUNCS}, **{t: _Builder._reshape for t in cv.RESHAPE_FUNCS},
    **{t: _Builder._permute for t in cv.PERMUTE_FUNCS}, **{t: _Builder._split for t in cv.SPLIT_FUNCS},
}
