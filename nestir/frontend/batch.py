"""Batch-size tracking: views and expansions that merge the batch with other dims and split it
again (``x.view(B * T, C)`` and back), kept as IR reshapes that read the batch at run time."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

from nestir.frontend.values import _Values
from nestir.ir.graph import Node
from nestir.ir.kinds import Fx, Op


class _BatchOps(_Values):
    def batch_expanded(self, name: str) -> torch.Tensor | None:
        """The constant that opaque node ``name`` expands to the batch size (``tok.expand(B, -1, -1)``
        with ``tok`` of batch dim 1), else None."""
        n = self.graph[name]
        if n.op != Op.OPAQUE or n.attrs["kind"] != "method" or n.attrs["fn"] != "expand" or n.attrs["kwargs"]:
            return None
        args = n.attrs["args"]
        src = self.graph[n.inputs[0]]
        sizes = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
        if src.op != Op.CONST or args[0] != ("__ref__", 0) or not src.shape or src.shape[0] != 1:
            return None
        if len(sizes) != len(src.shape) or sizes[0] != ("__batch__", 1) or any(s != -1 for s in sizes[1:]):
            return None
        return src.params["value"]

    def prepend(self, fxn: fx.Node, refs: list[str], dim: int) -> bool:
        """``cat([tok.expand(B, -1, -1), ..., x], dim)``: learned tokens (a class token) before the
        tokens of ``x``, one entry per neuron of ``x``: a ``prepend`` node that owns them."""
        *toks, x = refs
        values = [self.batch_expanded(t) for t in toks]
        ax = self.graph[x].axis
        if not toks or any(v is None for v in values) or ax is None or dim in (0, ax):
            return False
        value = torch.cat(values, dim).detach().float()  # type: ignore[arg-type]
        node = Node(fxn.name, "prepend", attrs={"dim": dim, "vdim": ax}, params={"value": value[0].movedim(ax - 1, 0)})
        self.add(node, fxn, [x])
        return True

    def unmerge_batch(self, x: str, out: tuple[int, ...]) -> bool:
        """``x`` comes from a reshape that folded the batch dim together with the neuron axis and
        more (MobileViT's unfold: ``(B, C, H, W) -> (B*C*nh, ph, nw, pw)``), then permutes that
        leave dim 0 alone, and this reshape splits dim 0 back into the batch and the same leading
        dims (``-> (B, C, N, P)``). Written with the folded dims kept apart instead (``(B, C, nh,
        ph, nw, pw)``, the permutes shifted past them), the elements keep their order and the
        neuron axis stays a whole dim: the earlier reshape and permutes are rewritten in place."""
        chain, n = [], self.graph[x]
        while n.op == Op.PERMUTE and n.attrs["dims"][0] == 0:
            chain.append(n)
            n = self.graph[n.inputs[0]]
        first = n
        if first.op != Op.RESHAPE or not first.attrs.get("rebatch") or "keep" in first.attrs:
            return False
        users = self.graph.user_map()  # (only now: it walks the whole graph) nothing else reads the chain:
        if any(len(users.get(m.name, [])) != (i > 0) for i, m in enumerate([*chain, first])):  # x: no user yet
            return False
        src_node = self.graph[first.inputs[0]]
        src, a, rest = src_node.shape, src_node.axis, tuple(first.attrs["rest"])
        if src is None or a is None or a == 0 or math.prod(src[1:]) % math.prod(rest):
            return False
        merged, lead = math.prod(src[1:]) // math.prod(rest), math.prod(src[1:a + 1])
        if merged % lead or len(out) < a + 1 or math.prod(out[1:]) != math.prod(src[1:]) or \
                tuple(out[1:a + 1]) != tuple(src[1:a + 1]):
            return False
        f = merged // lead
        kept = (*src[1:a + 1], f) if f > 1 else tuple(src[1:a + 1])
        first.attrs = {"rest": (*kept, *rest), "keep": [a, a]}
        first.shape, first.axis = (src[0], *kept, *rest), a
        prev, shift = first, len(kept)
        for p in reversed(chain):
            dims = [0, *range(1, shift + 1), *(d + shift for d in p.attrs["dims"][1:])]
            p.attrs = {**p.attrs, "dims": dims}
            p.shape, p.axis = tuple(prev.shape[d] for d in dims), dims.index(a)  # type: ignore[index]
            prev = p
        return True

    def rebatches(self, fxn: fx.Node) -> bool:
        """A reshape that merges the batch dim with others or splits it, with every other size a
        constant: ``view(-1, w, w, C)`` (Swin's windows), ``view(B // n, n, ...)``,
        ``flatten(0, 1)``; it is ``reshape(-1, *rest)`` at any batch size."""
        m = str(fxn.target) if fxn.op == Fx.CALL_METHOD else getattr(fxn.target, "__name__", "")
        if m == "flatten" and fxn.op in (Fx.CALL_METHOD, Fx.CALL_FUNCTION) and fxn.target in ("flatten", torch.flatten):
            return (fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("start_dim", 0)) == 0
        if fxn.op == Fx.CALL_METHOD and m in ("reshape_as", "view_as"):  # the other value's shape: fixed but its batch
            return True
        if not ((fxn.op == Fx.CALL_METHOD and m in ("view", "reshape")) or
                (fxn.op == Fx.CALL_FUNCTION and fxn.target is torch.reshape)):
            return False
        sizes = self.sizes_of(fxn)
        # a -1 after a batch-derived first size (``reshape(B * P, N, -1)``) stands for a size fixed by
        # the example, the channels' where it is their dim (then it follows their width under edits)
        batch_first = bool(sizes) and self.env.get(sizes[0], ("", None))[0] in ("batch", "batchexpr")
        return bool(sizes) and self.fixed_rest(fxn) and all(
            isinstance(v := self.const(a), int) and not isinstance(v, bool) and v >= -1
            and (v != -1 or i == 0 or batch_first)
            for i, a in enumerate(sizes) if i or not batch_first)

    def sizes_of(self, fxn: fx.Node) -> list[Any]:
        """The sizes a ``view``/``reshape`` call asks for, as written ([] for other calls)."""
        if not ((fxn.op == Fx.CALL_METHOD and fxn.target in ("view", "reshape")) or
                (fxn.op == Fx.CALL_FUNCTION and fxn.target is torch.reshape)):
            return []
        sizes = list(fxn.args[1:])
        if len(sizes) == 1 and isinstance(self.const(sizes[0]), (tuple, list, torch.Size)):
            sizes = list(sizes[0]) if isinstance(sizes[0], (tuple, list)) else list(self.const(sizes[0]))
        return sizes

    def fixed_rest(self, fxn: fx.Node) -> bool:
        """No size but the first of a ``view``/``reshape`` is read from the batch size (then the
        example's batch size would be baked into the others)."""
        return not any(isinstance(a, fx.Node) and self.env.get(a, ("", None))[0] in ("batch", "batchexpr")
                       for a in self.sizes_of(fxn)[1:])

    def batch_expand(self, fxn: fx.Node, x: str, method: str) -> bool:
        """``v.repeat(B, 1, ...)`` / ``v.expand(B, -1, ...)`` of a computed value of batch 1, ``B``
        the batch size (XCiT's position encoding, a conv of a constant grid): a ``batch_expand``
        node that reads the batch size from a model input at run time."""
        shape = self.in_shape(x)
        sizes = fxn.args[1] if len(fxn.args) == 2 and isinstance(fxn.args[1], (list, tuple)) else fxn.args[1:]
        if fxn.kwargs or not shape or shape[0] != 1 or len(sizes) != len(shape) or self.graph[x].op == Op.CONST:
            return False
        first = sizes[0]
        if not isinstance(first, fx.Node) or self.env.get(first, ("", None))[0] != "batch":
            return False
        keep = 1 if method == "repeat" else -1
        if any(self.const(a) != keep for a in sizes[1:]):
            return False
        inp = self.batch_input(self.env[first][1][1])
        if inp is None:
            return False
        self.add(Node(fxn.name, "batch_expand"), fxn, [x, inp])
        return True
