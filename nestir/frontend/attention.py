"""Attention patterns: ``nn.MultiheadAttention``, head splits and merges written out with
reshape/permute, and ``scaled_dot_product_attention``, made into IR attention and head nodes."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from nestir.frontend.rewrites import _takes_piece
from nestir.frontend.values import _source, _Values
from nestir.ir import convert as cv
from nestir.ir.graph import Node
from nestir.ir.kinds import Fx, Op
from nestir.ir.opdefs import OPS, evaluate


class _AttentionOps(_Values):
    def attention(self, fxn: fx.Node, mod: nn.Module) -> bool:
        """A self-attention module call as q, k, v linears, an ``attention`` node (heads are the
        units it prunes in) and the output projection, kept only where it reproduces the
        module's recorded output."""
        x = self.ref(fxn.args[0]) if fxn.args else None
        if x is None or len(self.in_shape(x)) != 3:
            return False
        same = all(self.ref(a) == x for a in fxn.args)
        kwargs = {k: self.const(v) for k, v in fxn.kwargs.items()}
        parts = cv.attention_parts(mod, fxn.args, kwargs, same)
        out = self.values[fxn]
        tuple_out = isinstance(out, tuple)
        if parts is None or (tuple_out and any(u.target is operator.getitem and u.args[1] != 0 and u.users
                                                for u in fxn.users)):
            return False  # masks or cross-attention; or the attention weights are used
        qkv, (wo, bo), heads, scale, pre = parts
        if any(w.shape[0] % heads for w, _ in qkv) or qkv[0][0].shape[0] != qkv[1][0].shape[0]:
            return False
        src = self.values[fxn.args[0]]
        norm = None
        if pre is not None:  # a LayerNorm the module applies first (lucidrains-style attention)
            norm = OPS["layernorm"].from_module(self.graph.fresh_name(f"{fxn.name}__norm"), pre)
            if norm is None:
                return False
        names = [self.graph.fresh_name(f"{fxn.name}__{s}") for s in ("q", "k", "v")]
        nodes = [cv.linear_node(nm, w, bias) for nm, (w, bias) in zip(names, qkv, strict=True)]
        att = Node(self.graph.fresh_name(fxn.name), "attention", inputs=names, attrs={"heads": heads, "scale": scale})
        proj = cv.linear_node(self.graph.fresh_name(f"{fxn.name}__proj"), wo, bo)
        ref = out[0] if tuple_out else out
        if not isinstance(ref, torch.Tensor):
            return False
        tokens = self.in_shape(x)[-2]
        for bias in [None, *cv.attention_biases(mod, heads, tokens)]:  # plain, then with a position bias
            att.params = {} if bias is None else {"bias": bias}
            try:
                with torch.no_grad():  # the rebuilt computation must reproduce the module's
                    normed = evaluate(norm, [src], norm.params) if norm is not None else src
                    vals = [evaluate(n, [normed], n.params) for n in nodes]
                    a = evaluate(att, vals, att.params)
                    y = evaluate(proj, [a], proj.params)
            except Exception:  # another layout of q, k, v (EfficientFormer's)
                continue
            if ref.shape == y.shape and torch.allclose(y, ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=1e-4):
                break
        else:
            return False
        if norm is not None:
            self.put(norm, [x], normed)
            x = norm.name
        for n, v in zip(nodes, vals, strict=True):
            self.put(n, [x], v)
        self.put(att, names, a)
        self.put(proj, [att.name], y)
        self.env[fxn] = ("tuple", [proj.name, None]) if tuple_out else ("node", proj.name)
        return True

    def channels_first_heads(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """Attention on a channels-first map (Visformer: ``qkv(x).reshape(B, 3, H, D, -1)`` of a
        ``(B, 3C, h, w)`` conv output, permuted with the 3 first): written as the channels-last
        form the heads are read in, ``flatten(2)``, channels last, ``reshape(B, N, 3, H, D)``, and
        the same permute on those dims (:meth:`heads`)."""
        if self.graph[x].axis != 1 or len(src) < 3 or len(out) != 5 or out[0] != src[0] or out[1] < 2 or \
                math.prod(out[1:4]) != src[1] or out[4] != math.prod(src[2:]):
            return False
        p, dims = self.only_permute(fxn, 5)
        if p is None or dims is None or dims[0] != 1:
            return False
        to_last = {0: 0, 1: 2, 2: 3, 3: 4, 4: 1}  # (B, K, H, D, N) -> (B, N, K, H, D)
        dims = tuple(to_last[d] for d in dims)
        if dims[0] != 2 or not p.users or not all(_takes_piece(u) for u in p.users):
            return False
        b, n, (k_n, h_n, d_n) = src[0], out[4], out[1:4]
        c = h_n * d_n

        def to_last(piece: str, k: int) -> str:  # (B, c, h, w) -> (B, c, N) -> (B, N, c)
            flat = self.made(Node(f"{fxn.name}__{k}f", "reshape", attrs={"rest": (c, n), "keep": [1, 1]}), [piece],
                             (b, c, n), fxn)
            return self.made(Node(f"{fxn.name}__{k}t", "permute", attrs={"dims": [0, 2, 1]}), [flat], (b, n, c), fxn)

        rest = [d - (d > 2) for d in dims[1:]]  # the permute on (B, N, H, D), K taken out
        return self.into_heads(fxn, p, x, 1, (b, c, *src[2:]), (k_n, h_n, d_n), rest, (b, n, h_n, d_n), to_last)

    def channels_first_merge(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """Attention's output ``(B, H, D, N)`` (a permute of what it computed) reshaped into a
        channels-first map ``(B, H*D, h, w)`` (Visformer): written as the channels-last merge the
        heads are read in, ``(B, N, H, D) -> (B, N, H*D)``, channels first again, then the map."""
        n = self.graph[x]
        if n.op != Op.PERMUTE or list(n.attrs["dims"]) != [0, 1, 3, 2] or \
                self.graph[n.inputs[0]].op not in (Op.SDPA, Op.MATMUL, Op.EINSUM, Op.ATTENTION) or \
                len(src) != 4 or len(out) < 3 or out[0] != src[0] or out[1] != src[1] * src[2] or \
                math.prod(out[2:]) != src[3]:
            return False
        b, h, d, t = src
        last = self.made(Node(f"{fxn.name}__last", "permute", attrs={"dims": [0, 3, 1, 2]}), [x], (b, t, h, d), fxn)
        merged = self.made(Node(f"{fxn.name}__merge", "reshape", attrs={"rest": (t, h * d), "merge": True}), [last],
                           (b, t, h * d), fxn)
        first = self.made(Node(f"{fxn.name}__first", "permute", attrs={"dims": [0, 2, 1]}), [merged], (b, h * d, t),
                          fxn)
        self.add(Node(fxn.name, "reshape", attrs={"rest": out[1:], "keep": [1, 1]}), fxn, [first])
        return True

    def only_permute(self, fxn: fx.Node, rank: int) -> tuple[fx.Node | None, tuple[int, ...] | None]:
        """The call's only user when it is a permute or transpose, with its dims on a value of
        ``rank`` dims; (None, None) otherwise."""
        users = list(fxn.users)
        p = users[0] if len(users) == 1 else None
        if p is None or not ((p.op == Fx.CALL_METHOD and p.target in cv.PERMUTE_METHODS and not p.kwargs)
                             or (p.op == Fx.CALL_FUNCTION and p.target in cv.PERMUTE_FUNCS)):
            return None, None
        method = str(p.target) if p.op == Fx.CALL_METHOD else ("permute" if p.target is torch.permute else "transpose")
        return p, cv.permute_dims(method, rank, tuple(self.const(v) for v in p.args[1:]), batch_first=False)

    def heads(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """A reshape that splits the neuron axis (the last) into (heads, per head): attention's
        reshape into heads, a ``heads`` node (:mod:`nestir.ir.opdefs.heads`). Into (K, heads, per
        head) with a permute that brings K first and only pieces taken of it (``q, k, v =
        qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``): K channel ranges, each
        split into heads and permuted alike (the producer is cut into K pieces)."""
        a = self.graph[x].axis
        if a is None or len(src) < 3 or a != len(src) - 1:
            return False
        permuted = any((u.op == Fx.CALL_METHOD and u.target in cv.PERMUTE_METHODS) or
                       (u.op == Fx.CALL_FUNCTION and u.target in cv.PERMUTE_FUNCS) for u in fxn.users)
        if len(out) == len(src) + 1 and out[:-2] == src[:-1] and out[-2] * out[-1] == src[-1] and \
                (out[-2] > 1 or permuted):  # (one head, as PVT's first stage: where a permute follows)
            self.add(Node(fxn.name, "heads", attrs={"heads": out[-2]}), fxn, [x])
            return True
        if len(out) != len(src) + 2 or out[:-3] != src[:-1] or math.prod(out[-3:]) != src[-1] or out[-3] < 2:
            return False
        p, dims = self.only_permute(fxn, len(out))
        if p is None:
            return False
        kpos = len(out) - 3
        if dims is None or dims[0] != kpos or not p.users or not all(_takes_piece(u) for u in p.users):
            return False
        k_n, h_n, d_n = out[-3:]
        rest = [d - (d > kpos) for d in dims[1:]]
        return self.into_heads(fxn, p, x, a, (*src[:-1], h_n * d_n), (k_n, h_n, d_n), rest, (*src[:-1], h_n, d_n))

    def into_heads(self, fxn: fx.Node, p: fx.Node, x: str, axis: int, piece: tuple[int, ...],
                   khd: tuple[int, int, int], rest: list[int], split: tuple[int, ...],
                   to_last: Any = None) -> bool:
        """K channel ranges of ``x`` along ``axis`` (the producer is cut into K pieces), each of
        shape ``piece``, made channels-last by ``to_last(name, k)`` where given, split into heads
        (``split``) and permuted by ``rest`` like the permute ``p`` did: the pieces ``p`` gives."""
        k_n, h_n, d_n = khd
        names = []
        for k in range(k_n):
            items: list[Any] = [None] * len(piece)
            items[axis] = (k * h_n * d_n, (k + 1) * h_n * d_n, 1)
            last = self.made(Node(f"{fxn.name}__{k}", "index", attrs={"items": items}), [x], piece, fxn)
            if to_last is not None:
                last = to_last(last, k)
            last = self.made(Node(f"{fxn.name}__{k}h", "heads", attrs={"heads": h_n}), [last], split, fxn)
            if rest != sorted(rest):
                last = self.made(Node(f"{p.name}__{k}", "permute", attrs={"dims": rest}), [last],
                                 tuple(split[d] for d in rest), p)
            names.append(last)
        self.env[fxn] = self.env[p] = ("tuple", names)  # the permute is done: its pieces are these
        return True

    def split_axis(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """A reshape that splits the neuron axis into (R, C), the rest unchanged (SKNet's attention
        ``view(B, paths, C, 1, 1)``): R channel ranges stacked along a new dim, so the R pieces
        become the same C neurons (the producer is cut into R pieces)."""
        a = self.graph[x].axis
        if a is None or a == 0 or len(out) != len(src) + 1 or out[:a] != src[:a] or out[a + 2:] != src[a + 1:]:
            return False
        r, c = out[a], out[a + 1]
        if r < 2 or r * c != src[a]:
            return False
        if any((u.op == Fx.CALL_METHOD and u.target in cv.PERMUTE_METHODS) or
               (u.op == Fx.CALL_FUNCTION and u.target in cv.PERMUTE_FUNCS) for u in fxn.users):
            return False  # a channel shuffle (view, transpose, view): nestir.ir.permutations folds it
        pieces = []
        for k in range(r):
            items: list[Any] = [None] * len(src)
            items[a] = (k * c, (k + 1) * c, 1)
            shape = list(src)
            shape[a] = c
            name = self.graph.fresh_name(f"{fxn.name}__{k}")
            self.graph.add(Node(name, "index", [x], {"items": items}, {}, tuple(shape), a, _source(fxn)))
            pieces.append(name)
        self.add(Node(fxn.name, "stack", attrs={"dim": a}), fxn, pieces)
        return True

    def sdpa(self, fxn: fx.Node) -> bool:
        """``F.scaled_dot_product_attention`` with constant options: an ``sdpa`` node."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        if len(fxn.args) > len(names) or any(k not in names for k in fxn.kwargs):
            return False
        a = {**dict(zip(names, fxn.args, strict=False)), **fxn.kwargs}
        refs = [self.ref(a.get(k)) for k in names[:3]]
        mask = a.get("attn_mask")
        opts = [self.const(a.get(k)) for k in ("dropout_p", "is_causal", "scale", "enable_gqa")]
        if any(r is None for r in refs) or (mask is not None and self.ref(mask) is None) or opts[3] or \
                not isinstance(opts[0] or 0.0, (int, float)) or not isinstance(opts[2] or 1.0, (int, float)):
            return False
        attrs: dict[str, Any] = {"p": float(opts[0] or 0.0), "causal": bool(opts[1]),
                                 "scale": None if opts[2] is None else float(opts[2])}
        if mask is not None:
            refs.append(self.ref(mask))
            attrs["bool_mask"] = self.values[mask].dtype == torch.bool
        self.add(Node(fxn.name, "sdpa", attrs=attrs), fxn, refs)  # type: ignore[arg-type]
        return True
