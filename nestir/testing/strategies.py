"""Hypothesis strategies for random small traceable models, and inputs that fit a graph.

:func:`models` draws ``(module, example_batch)`` pairs: multi-layer perceptrons (optionally with
BatchNorm and residual connections) and CNNs built from plain, residual, concat, depthwise and
pooling blocks with a flatten or global-mean head, a LayerNorm and every activation nestir knows.
Weights are random, BatchNorm statistics non-trivial, and the module is in eval mode.
:func:`graphs` draws the same models already traced (optionally with dormant connections)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from nestir.ir.edit import set_mask
from nestir.ir.graph import Graph

ACTS = ["relu", "leaky_relu", "tanh", "gelu", "silu", "relu6", "sigmoid", "hardswish"]


def act_fn(name: str, x: torch.Tensor) -> torch.Tensor:
    return {"relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.1), "tanh": torch.tanh, "gelu": F.gelu,
            "silu": F.silu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "hardswish": F.hardswish}[name](x)


class SpecModel(nn.Module):
    """A CNN built from a spec drawn by :func:`cnn_specs`; forward branches on the spec only, so
    it is traceable."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList()
        ch = spec["in_ch"]
        size = spec["size"]
        for b in spec["blocks"]:
            m = nn.ModuleDict()
            kind = b["kind"]
            if kind == "conv":
                m["conv"] = nn.Conv2d(ch, b["out"], b["k"], padding=b["k"] // 2, bias=not b["bn"])
                if b["bn"]:
                    m["bn"] = nn.BatchNorm2d(b["out"])
                ch = b["out"]
            elif kind == "res":
                m["c1"] = nn.Conv2d(ch, b["out"], 3, padding=1, bias=False)
                m["b1"] = nn.BatchNorm2d(b["out"])
                m["c2"] = nn.Conv2d(b["out"], b["out"], 3, padding=1, bias=False)
                m["b2"] = nn.BatchNorm2d(b["out"])
                if b["out"] != ch:
                    m["sc"] = nn.Conv2d(ch, b["out"], 1, bias=False)
                ch = b["out"]
            elif kind == "cat":
                m["a"] = nn.Conv2d(ch, b["out"], 1)
                m["b"] = nn.Conv2d(ch, b["out2"], 3, padding=1)
                ch = b["out"] + b["out2"]
            elif kind == "dw":
                m["dw"] = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)
                m["bn"] = nn.BatchNorm2d(ch)
                m["pw"] = nn.Conv2d(ch, b["out"], 1)
                ch = b["out"]
            elif kind == "pool":
                size = size // 2
            self.blocks.append(m)
        self.head_kind = spec["head"]
        feat = ch * size * size if spec["head"] in ("flatten", "Flatten") else ch
        self.flatten = nn.Flatten() if spec["head"] == "Flatten" else None
        self.fc1 = nn.Linear(feat, spec["hidden"])
        self.ln = nn.LayerNorm(spec["hidden"]) if spec["ln"] else None
        self.fc2 = nn.Linear(spec["hidden"], spec["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.spec["act"]
        for b, m in zip(self.spec["blocks"], self.blocks, strict=True):
            kind = b["kind"]
            if kind == "conv":
                y = m["conv"](x)
                x = act_fn(act, m["bn"](y) if "bn" in m else y)
            elif kind == "res":
                y = F.relu(m["b1"](m["c1"](x)))
                y = m["b2"](m["c2"](y))
                x = F.relu(y + (m["sc"](x) if "sc" in m else x))
            elif kind == "cat":
                x = torch.cat([act_fn(act, m["a"](x)), m["b"](x)], dim=1)
            elif kind == "dw":
                x = m["pw"](F.relu(m["bn"](m["dw"](x))))
            elif kind == "pool":
                x = F.max_pool2d(x, 2) if b["max"] else F.avg_pool2d(x, 2)
        if self.head_kind == "flatten":
            x = x.view(x.size(0), -1)
        elif self.flatten is not None:
            x = self.flatten(x)
        else:
            x = x.mean((2, 3))
        h = self.fc1(x)
        if self.ln is not None:
            h = self.ln(h)
        return self.fc2(act_fn(act, h))


class MLP(nn.Module):
    """A multi-layer perceptron built from a spec drawn by :func:`mlp_specs`. With ``residual``,
    a layer whose input and output widths agree adds its input back (``x + act(bn(lin(x)))``),
    so that layer both reads and writes one neuron group."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        dims = [spec["in"], *spec["widths"]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.bns = nn.ModuleList(nn.BatchNorm1d(w) if spec["bn"] else nn.Identity() for w in spec["widths"])
        self.out = nn.Linear(dims[-1], spec["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [self.spec["in"], *self.spec["widths"]]
        for i, (lin, bn) in enumerate(zip(self.layers, self.bns, strict=True)):
            y = act_fn(self.spec["act"], bn(lin(x)))
            x = x + y if self.spec["residual"] and i > 0 and dims[i] == dims[i + 1] else y
        return self.out(x)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, deterministic in
    ``seed``; returns ``model`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


@st.composite
def mlp_specs(draw: Any) -> dict[str, Any]:
    """A spec for :class:`MLP`: 1-3 hidden layers of width 2-8, optional BatchNorm and residuals."""
    n = draw(st.integers(1, 3))
    width = draw(st.integers(2, 8))
    same = draw(st.booleans())
    widths = [width if same else draw(st.integers(2, 8)) for _ in range(n)]
    return {"in": draw(st.integers(2, 10)), "widths": widths, "classes": draw(st.integers(2, 5)),
            "bn": draw(st.booleans()), "act": draw(st.sampled_from(ACTS)), "residual": draw(st.booleans())}


@st.composite
def cnn_specs(draw: Any) -> dict[str, Any]:
    """A spec for :class:`SpecModel`: 1-3 blocks on a 6x6 or 8x8 input with 1-3 channels; the head
    flattens with ``x.view(x.size(0), -1)`` or ``nn.Flatten()``, or takes the spatial mean."""
    blocks = []
    size = draw(st.sampled_from([6, 8]))
    pools = 0
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "res", "cat", "dw", "pool"]))
        if kind == "pool" and (size >> (pools + 1)) < 2:
            kind = "conv"
        b: dict[str, Any] = {"kind": kind, "out": draw(st.integers(1, 5))}
        if kind == "conv":
            b.update(k=draw(st.sampled_from([1, 3])), bn=draw(st.booleans()))
        elif kind == "cat":
            b["out2"] = draw(st.integers(1, 4))
        elif kind == "pool":
            b["max"] = draw(st.booleans())
            pools += 1
        blocks.append(b)
    return {"in_ch": draw(st.integers(1, 3)), "size": size, "blocks": blocks,
            "head": draw(st.sampled_from(["flatten", "mean", "Flatten"])), "hidden": draw(st.integers(2, 6)),
            "ln": draw(st.booleans()), "act": draw(st.sampled_from(ACTS)), "classes": draw(st.integers(2, 4))}


@st.composite
def models(draw: Any, mlp: bool = True, cnn: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """A random small traceable model (eval mode, random weights and BatchNorm statistics) and an
    example batch of 3 inputs for it: an :class:`MLP` or a :class:`SpecModel` CNN (``mlp`` /
    ``cnn`` choose which kinds may be drawn).

    >>> @given(models())
    ... def test_traces(mx):
    ...     model, x = mx
    ...     nestir.trace(model, x)
    """
    if not (mlp or cnn):
        raise ValueError("models(): at least one of mlp and cnn must be true")
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if mlp and (not cnn or draw(st.booleans())):
        spec = draw(mlp_specs())
        model: nn.Module = MLP(spec)
        x = torch.randn(3, spec["in"], generator=torch.Generator().manual_seed(seed))
    else:
        spec = draw(cnn_specs())
        model = SpecModel(spec)
        x = torch.randn(3, spec["in_ch"], spec["size"], spec["size"], generator=torch.Generator().manual_seed(seed))
    return randomize(model, seed), x


def sparsify(graph: Graph, density: float = 0.6, seed: int = 0) -> Graph:
    """Make about ``1 - density`` of every layer's live connections dormant (mask off, weight
    zeroed), in place, deterministic in ``seed``; returns ``graph``. Growth passes need dormant
    connections to have something to grow."""
    gen = torch.Generator().manual_seed(seed)
    for n in graph.parametric():
        keep = torch.rand(n.params["mask"].shape, generator=gen) < density
        set_mask(graph, n.name, n.params["mask"] & keep.to(n.params["mask"].device))
    return graph


@st.composite
def graphs(draw: Any, mlp: bool = True, cnn: bool = True, sparse: bool | None = None) -> Graph:
    """A model from :func:`models`, traced into a verified :class:`~nestir.Graph`. With
    ``sparse`` true about 40% of each layer's connections are dormant (:func:`sparsify`); with
    ``sparse=None`` that is drawn too. :func:`batch_for` gives inputs and labels that fit it."""
    import nestir

    model, x = draw(models(mlp=mlp, cnn=cnn))
    g = nestir.trace(model, x)
    if sparse if sparse is not None else draw(st.booleans()):
        sparsify(g, 0.6, draw(st.integers(0, 2**16)))
    return g


def batch_for(graph: Graph, n: int = 8, seed: int = 0) -> tuple[Any, torch.Tensor]:
    """A batch ``(inputs, targets)`` that fits ``graph``, deterministic in ``seed``: standard
    normal float32 inputs of the graph's per-sample input shape (a tuple of tensors when the graph
    has several inputs), and integer class labels in ``[0, C)`` for its first output of shape
    (N, C, ...) (the default cross-entropy loss takes them), of shape (n, ...)."""
    from nestir.ir.checks import require_graph

    require_graph(graph, "nestir.testing.batch_for")
    if n < 1:
        raise ValueError(f"batch_for: n must be positive, got {n}")
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for node in graph.inputs:
        if node.shape is None:
            raise ValueError(f"batch_for: input '{node.name}' has no recorded shape")
        xs.append(torch.randn((n, *node.shape[1:]), generator=gen))
    out = graph[graph.output.inputs[0]].shape if graph.output.inputs else None
    if out is not None and len(out) >= 2:
        y = torch.randint(0, out[1], (n, *out[2:]), generator=gen)
    else:
        y = torch.zeros(n, dtype=torch.long)
    return (xs[0] if len(xs) == 1 else tuple(xs)), y
