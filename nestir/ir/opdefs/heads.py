"""Attention written out op by op (the reshape-into-heads pattern): ``heads`` splits a value's
neurons into heads, ``matmul`` and ``einsum`` multiply computed values, ``sdpa`` is
``F.scaled_dot_product_attention``.

Head space. ``heads`` turns (B, ..., C) into (B, ..., H, C/H): the C neurons of one group become
H heads of C/H. Values computed from it hold the group in *head space*: one dim (the head axis,
recorded in ``GroupInfo.heads``) indexes its heads, and each op that follows them
(:meth:`OpDef.head_flow`) treats every head alike — permutes, reshapes that keep the head dim,
slices and means of other dims, activations, softmax over another dim, a LayerNorm within a
head, ``q @ k^T`` and ``attn @ v`` (head h with head h), rotary embeddings (products with
tables shared by the heads). Every group that meets another in head space is tied to it in
units of one head (:class:`nestir.ir.groups.Tie`): q, k and v lose and gain whole heads together.
A reshape ``(B, ..., H, D) -> (B, ..., H*D)`` merges the heads back into neurons of the group
of the value it merges (v's, through ``attn @ v``), which the output projection reads. An op
that mixes heads (a softmax over them, talking heads, one bias per head) or that nestir does
not know freezes the groups it reads in head space, saying which op."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from nestir.ir.opdefs.base import OpDef, register

if TYPE_CHECKING:
    from nestir.ir.graph import Graph, Node
    from nestir.ir.groups import Layout, _Analysis


def headed(an: _Analysis, node: Node, *, h: int, tie: Sequence[str] = ()) -> tuple[bool, None]:
    """Record ``node``'s output in head space with head axis ``h``, holding the group of its
    first input in head space; the groups of the inputs ``tie`` join it in whole heads."""
    first = next(i for i in node.inputs if i in an.heads)
    g = an.heads[first][0]
    for i in tie:
        if i != first and not an.tie_heads(node.name, g, an.heads[i][0], (node.shape or ())[h]):
            return False, None
    an.heads[node.name] = (g, h)
    return True, None


def per_head_const(an: _Analysis, node: Node, value: str, h: int) -> tuple[str, int] | None | bool:
    """How a value without heads meets ``node``'s head-space output (head dim ``h``) when
    broadcast against it: ``None`` alike for every head (size 1 or absent on that dim), ``(value,
    dim)`` a constant only ``node`` reads with one entry per head on ``dim`` (a relative position
    bias, a per-head temperature: its entries follow the heads), False otherwise."""
    s, nd = an.graph[value].shape or (), len(node.shape or ())
    k = len(s) - nd + h
    if k < 0 or s[k] == 1:
        return None
    ok = an.graph[value].op == "const" and s[k] == (node.shape or ())[h] and len(an.users(value)) == 1
    return (value, k) if ok else False


def join(an: _Analysis, node: Node, h: int) -> bool:
    """An op combining values in head space (head dim ``h``) with values the same for every head:
    the latter's groups freeze (they are spread over the heads), the former's are tied."""
    for i in node.inputs:
        if i not in an.heads:
            an.freeze(an.layout.get(i), f"'{node.name}' spreads it over attention heads")
    return headed(an, node, h=h, tie=[i for i in node.inputs if i in an.heads])[0]


def through(an: _Analysis, node: Node) -> tuple[bool, None]:
    """A one-input op that treats every head alike and keeps the dims where they are."""
    if len(node.inputs) != 1:
        return False, None
    return headed(an, node, h=an.heads[node.inputs[0]][1])


@register
class Heads(OpDef):
    """``x.unflatten(-1, (heads, -1))`` of a value whose neurons lie on its last dim: one group's
    neurons as ``heads`` equal heads (head-major), the group tied to itself in whole heads."""

    name = "heads"
    unit_attr = "heads"

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return args[0].unflatten(-1, (node.attrs["heads"], -1))

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        src = an.graph[node.inputs[0]]
        lay = an.layout.get(src.name)
        if lay is None or src.shape is None or src.axis != len(src.shape) - 1 or len(lay) != 1 or lay[0][1] != 1:
            an.freeze(lay, f"'{node.name}' splits in heads a value that is not one group on its last dim")
            return None
        g = lay[0][0]
        if an.tie_heads(node.name, g, g, node.attrs["heads"]):
            an.heads[node.name] = (g, len(src.shape) - 1)
        return None

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_method("unflatten", (args[0], -1, (node.attrs["heads"], -1)))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        nd = len(g[node.inputs[0]].shape or ())
        shape = e.const(node.name + "_shape", np.array([0] * (nd - 1) + [node.attrs["heads"], -1]), np.int64)
        return e.op("Reshape", [xs[0], shape], node.name)


@register
class MatMul(OpDef):
    """``a @ b`` of two computed values (``torch.matmul``, ``bmm``, ``@``). In head space, with
    the heads of both on the same batch-like dim, head h of ``a`` meets head h of ``b`` (``q @
    k^T``, ``attn @ v``): their groups are tied; the product holds ``b``'s group. Outside head
    space (single-head attention, EfficientViT's per-head branches) see :meth:`neurons`."""

    name = "matmul"

    @staticmethod
    def _rule(a: int | None, b: int | None, nd: int) -> str:
        """How neurons flow through ``a @ b`` with neuron axes ``a`` and ``b``: "pair" (both on
        the contracted dim: ``q @ k^T`` of single-head attention, their groups unite and the
        product has none), "right" (``attn @ v``: b's columns are the product's), "left" (a's
        rows are), else "none"."""
        if a == nd - 1 and b == nd - 2:
            return "pair"
        if a is None and b == nd - 1:
            return "right"
        if a == nd - 2 and b is None:
            return "left"
        return "none"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        nd = value.dim()
        if any(len(s.shape or ()) != nd for s in srcs):
            return None
        rule = self._rule(srcs[0].axis, srcs[1].axis, nd)
        return {"right": nd - 1, "left": nd - 2}.get(rule)

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.matmul(args[0], args[1])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        """Outside head space: a product that is linear in each neuron (see :meth:`_rule`)."""
        a, b = (an.graph[i] for i in node.inputs)
        la, lb = (an.layout.get(i) for i in node.inputs)
        nd = len(node.shape or ())
        rule = self._rule(a.axis, b.axis, nd) if len(a.shape or ()) == len(b.shape or ()) == nd else "none"
        if rule == "pair":
            lay = an.unify([la, lb], f"matmul '{node.name}' (its operands' neurons meet)")
            an.product.update(g for g, _ in lay or [])
            return None
        if rule == "right":
            return lb
        if rule == "left":
            return la
        return super().neurons(an, node)

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        a, b = (an.heads.get(i) for i in node.inputs)
        nd = len(node.shape or ())
        if a is None or b is None or a[1] != b[1] or a[1] >= nd - 2 or \
                any(len(an.graph[i].shape or ()) != nd for i in node.inputs):
            return False, None
        ok, _ = headed(an, node, h=a[1], tie=node.inputs)
        if ok:
            an.heads[node.name] = (b[0], a[1])
        return ok, None

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.matmul, tuple(args))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.op("MatMul", xs, node.name)


@register
class Einsum(OpDef):
    """``torch.einsum(equation, *values)`` of computed values (``equation`` without spaces or
    ellipsis). In head space the heads of every operand that has them carry one index letter,
    which the output keeps (MaxViT's ``"BGHID,BGHJD->BGHIJ"``): their groups are tied; the
    result holds the last one's group."""

    name = "einsum"

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.einsum(node.attrs["equation"], *args)

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        eq = node.attrs["equation"]
        if "->" not in eq or "." in eq:
            return False, None
        ins, out = eq.split("->")
        terms = ins.split(",")
        letters = set()
        for i, term in zip(node.inputs, terms, strict=True):
            if i in an.heads:
                letters.add(term[an.heads[i][1]] if an.heads[i][1] < len(term) else "")
        if len(letters) != 1 or "" in letters or (h := out.find(next(iter(letters)))) < 1:
            return False, None
        if any(i not in an.heads and next(iter(letters)) in t for i, t in zip(node.inputs, terms, strict=True)):
            return False, None
        ok = join(an, node, h)
        if ok:
            an.heads[node.name] = (an.heads[[i for i in node.inputs if i in an.heads][-1]][0], h)
        return ok, None

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.einsum, (node.attrs["equation"], *args))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        eq = node.attrs["equation"]  # ONNX takes lower-case letters: rename them
        names = {c: chr(ord("a") + k) for k, c in enumerate(sorted({c for c in eq if c.isalpha()}))}
        return e.op("Einsum", xs, node.name, equation="".join(names.get(c, c) for c in eq))


def _sdpa_scale(node: Node, q_dim: int) -> float:
    s = node.attrs.get("scale")
    return 1.0 / math.sqrt(q_dim) if s is None else float(s)


@register
class Sdpa(OpDef):
    """``F.scaled_dot_product_attention(q, k, v, attn_mask)`` with ``scale``, ``causal`` and
    dropout ``p`` (in training); ``bool_mask``: the mask is boolean (True: attend). In head
    space (the heads of q, k and v on one dim before the last two; a mask the same for every
    head, or a constant with one entry per head) the three groups are tied in whole heads; the
    output holds v's."""

    name = "sdpa"

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        a = node.attrs
        mask = args[3] if len(args) > 3 else None
        return F.scaled_dot_product_attention(args[0], args[1], args[2], attn_mask=mask,
                                              dropout_p=a.get("p", 0.0) if training else 0.0,
                                              is_causal=a.get("causal", False), scale=a.get("scale"))

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        nd = len(node.shape or ())
        q, k, v = node.inputs[:3]
        h = an.heads.get(q, (0, -1))[1]
        if h < 0 or h >= nd - 2 or any(an.heads.get(i, (0, -1))[1] != h or len(an.graph[i].shape or ()) != nd
                                       for i in (q, k, v)):
            return False, None
        bias = None
        if len(node.inputs) > 3:
            m = node.inputs[3]
            bias = per_head_const(an, node, m, h) if m not in an.heads else False
            if bias is False:
                return False, None
            an.freeze(an.layout.get(m), f"'{node.name}' reads it as an attention mask")
        ok, _ = headed(an, node, h=h, tie=(q, k, v))
        if ok:
            an.heads[node.name] = (an.heads[v][0], h)
            if isinstance(bias, tuple):
                an.heads[bias[0]] = (an.heads[v][0], bias[1])
        return ok, None

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a = node.attrs
        kw: dict[str, Any] = {"is_causal": a.get("causal", False), "scale": a.get("scale")}
        if len(args) > 3:
            kw["attn_mask"] = args[3]
        if a.get("p", 0.0):
            kw["dropout_p"] = 0.0  # the lowered module is for inference
        return low.fg.call_function(F.scaled_dot_product_attention, tuple(args[:3]), kw)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """softmax(q k^T * scale + mask) v; a boolean mask (or ``causal``) as -inf where False."""
        nm = node.name
        qs, ks = (g[i].shape or () for i in node.inputs[:2])
        perm = list(range(len(ks) - 2)) + [len(ks) - 1, len(ks) - 2]
        kt = e.op("Transpose", [xs[1]], nm + "_kt", perm=perm)
        s = e.op("MatMul", [xs[0], kt], nm + "_qk")
        s = e.op("Mul", [s, e.const(nm + "_scale", np.array(_sdpa_scale(node, qs[-1]), np.float32))], nm + "_s")
        if node.attrs.get("causal"):
            keep = np.tril(np.ones((qs[-2], ks[-2]), dtype=bool))
            s = e.op("Add", [s, e.const(nm + "_causal", np.where(keep, 0.0, -np.inf).astype(np.float32))], nm + "_sc")
        if len(xs) > 3:
            if node.attrs.get("bool_mask"):
                neg = e.const(nm + "_neg", np.array(-np.inf, np.float32))
                s = e.op("Where", [xs[3], s, neg], nm + "_sm")
            else:
                s = e.op("Add", [s, xs[3]], nm + "_sm")
        p = e.op("Softmax", [s], nm + "_p", axis=-1)
        return e.op("MatMul", [p, xs[2]], nm)
