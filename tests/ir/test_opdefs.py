"""Op definitions: the registry, and a user-defined op (the README's example) that the frontend,
group analysis, passes and both lowerings pick up from its one definition."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import nestir
from nestir.ir.errors import NestirError
from nestir.ir.graph import Node
from nestir.ir.opdefs import OPS, OpDef, opdef, register
from nestir.testing import run_ir, run_onnx


class Swish2(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(2 * x)


@register
class Swish2Op(OpDef):
    name = "swish2_test"
    modules = (Swish2,)

    def from_module(self, name, mod):
        return Node(name, "swish2_test")

    def axis(self, node, srcs, value):
        return srcs[0].axis

    def evaluate(self, node, args, p, training):
        return args[0] * torch.sigmoid(2 * args[0])

    def neurons(self, an, node):
        return an.layout.get(node.inputs[0])

    def to_torch(self, low, node, args):
        return low.module(node, Swish2(), args)

    def to_onnx(self, e, node, xs, g):
        two = e.const(node.name + "_two", 2.0)
        s = e.op("Sigmoid", [e.op("Mul", [xs[0], two], node.name + "_2x")], node.name + "_s")
        return e.op("Mul", [xs[0], s], node.name)


def test_every_op_the_ir_uses_is_defined_once():
    assert {"linear", "conv", "batchnorm", "layernorm", "groupnorm", "act", "identity", "binary", "scale",
            "flatten", "reshape", "permute", "index", "cat", "mean", "pool", "adaptive_pool", "resize", "pad",
            "attention", "prepend", "slice", "gather", "const", "opaque", "input", "output"} <= set(OPS)
    with pytest.raises(NestirError, match="defined twice"):
        register(type("Again", (OpDef,), {"name": "conv"}))
    with pytest.raises(NestirError, match="unknown op 'nope'"):
        opdef("nope")


def test_a_user_defined_op_is_understood_everywhere_from_its_one_definition():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), Swish2(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    g = nestir.trace(m, x, leaf_modules=[Swish2])
    assert not nestir.opaque_nodes(g) and [n.op for n in g].count("swish2_test") == 1
    assert g.groups().of("_0").resizable
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons", "add-feature-map:count=1"],
                     data=[(x, torch.tensor([0, 1]))])
    assert p["_0"].params["weight"].shape[0] == 5
    np.testing.assert_allclose(run_onnx(p, x), run_ir(p, x), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(x).detach().numpy(), run_ir(p, x), atol=1e-5)


def _half_pruned_exact(g, x, y):  # type: ignore[no-untyped-def]
    """Half the neurons pruned (and dead ones eliminated) on ``x``; both lowerings exact on ``y``
    (another batch size). Returns the pruned graph and its outputs on ``y``."""
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.arange(x.shape[0]) % 3)])
    ref = run_ir(p, y)
    np.testing.assert_allclose(run_onnx(p, y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    return p, ref


def test_expand_as_spreads_a_gate_and_couples_it_with_the_map_it_gates() -> None:
    """``x * gate.expand_as(x)`` (ECA, MobileViTv2): an ``expand_as`` node, not an opaque call; the
    gate's producer and the map's prune together, and both lowerings stay exact."""

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.fc, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.c1(x)
            y = torch.sigmoid(self.fc(h.mean((2, 3), keepdim=True)))
            return self.c2(h * y.expand_as(h)).mean((2, 3))

    torch.manual_seed(0)
    m, x = Gate().eval(), torch.randn(2, 3, 6, 6)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g) and [n.op for n in g].count("expand_as") == 1
    assert g.groups().produced("c1") is g.groups().produced("fc")
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    p, _ = _half_pruned_exact(g, x, torch.randn(3, 3, 6, 6))
    assert p["c1"].params["weight"].shape[0] == 4 and p["fc"].params["weight"].shape[:2] == (4, 4)


def test_a_one_channel_conv1d_over_the_pooled_channels_keeps_them_prunable() -> None:
    """ECA: the pooled channels as a sequence (``view(B, 1, C)``), a 1-channel ``conv1d`` along it,
    a sigmoid gate back on the map: the channels pass through the conv (it has no neurons of its
    own and keeps its 3 weights), prune with the map, and new channels at the end of the sequence
    read zeros where the padding was: the function does not change."""
    from nestir.ir.edit import add_neurons

    class Eca(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv, self.c2 = nn.Conv1d(1, 1, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.bn(self.c1(x)))
            y = torch.sigmoid(self.conv(h.mean((2, 3)).view(x.shape[0], 1, -1))).view(x.shape[0], -1, 1, 1)
            return self.c2(h * y.expand_as(h)).mean((2, 3))

    torch.manual_seed(0)
    m, x = Eca().eval(), torch.randn(2, 3, 6, 6)
    g = nestir.trace(m, x)
    info = g.groups()
    assert info.produced("conv") is None and info.of("conv") is info.produced("c1") and info.produced("c1").prunable
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    y = torch.randn(3, 3, 6, 6)
    p, ref = _half_pruned_exact(g, x, y)
    assert p["c1"].params["weight"].shape[0] == 4 and p["conv"].params["weight"].shape == (1, 1, 3)
    add_neurons(p, p.groups().produced("c1").id, 2)
    p.verify()
    np.testing.assert_allclose(run_ir(p, y), ref, atol=1e-6)


def test_a_position_encoding_computed_at_batch_one_and_repeated_to_the_batch_stays_prunable() -> None:
    """XCiT: a conv of a constant grid, ``repeat(B, 1, 1, 1)`` with ``B = x.shape[0]``, added to the
    tokens: a ``batch_expand`` node (the batch size read from the input at run time, not the
    example's), so the conv's channels prune and grow with the residual, exactly in both lowerings
    at another batch size."""
    from nestir.ir.edit import add_neurons

    class Pos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(4, 8, 1)

        def forward(self, b: int, h: int, w: int) -> torch.Tensor:
            grid = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(1, 4, 1, 1) / (h * w)
            return self.proj(grid).repeat(b, 1, 1, 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.pos = nn.Conv2d(3, 8, 2, stride=2), Pos()
            self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            h = self.emb(x)
            t = h.flatten(2).transpose(1, 2)
            t = t + self.pos(b, h.shape[2], h.shape[3]).reshape(b, -1, t.shape[1]).permute(0, 2, 1)
            t = t + self.fc(t)
            return self.head(t.mean(1))

    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(2, 3, 8, 8)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g) and [n.op for n in g].count("batch_expand") == 1
    assert g.groups().produced("pos_proj") is g.groups().produced("emb") and g.groups().produced("emb").prunable
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    y = torch.randn(3, 3, 8, 8)
    p, ref = _half_pruned_exact(g, x, y)
    assert p["emb"].params["weight"].shape[0] == 4 and p["pos_proj"].params["weight"].shape[0] == 4
    add_neurons(p, p.groups().produced("emb").id, 2)
    p.verify()
    np.testing.assert_allclose(run_onnx(p, y), ref, rtol=1e-4, atol=1e-5)
