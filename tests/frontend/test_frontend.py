
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nestir
from nestir.ir.errors import ShapeError, TraceError
from nestir.testing import run_ir, run_onnx


class Functional(nn.Module):
    """Functional-style code: F.* calls, get_attr weights, view(size(0), -1), methods, scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 2, 3, 3))
        self.b1 = nn.Parameter(torch.randn(4))
        self.w2 = nn.Parameter(torch.randn(5, 4 * 4 * 4))

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        y = F.leaky_relu(y, 0.2)
        y = F.avg_pool2d(y, 2)
        y = y.view(y.size(0), -1)
        y = F.linear(y, self.w2)
        return 2.0 * torch.sigmoid(y) - 1 + y.relu()


def test_functional_forms_become_ir_ops():
    m = Functional().eval()
    x = torch.randn(2, 2, 8, 8)
    g = nestir.trace(m, x)
    ops = [n.op for n in g]
    assert "opaque" not in ops
    assert ops.count("conv") == 1 and ops.count("linear") == 1 and "flatten" in ops
    assert g["leaky_relu"].attrs["slope"] == 0.2
    torch.testing.assert_close(g.to_torch()(x), m(x))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value
            return self.fc(x)
        return x


def test_untraceable_model_names_the_line_and_the_fix():
    with pytest.raises(TraceError) as e:
        nestir.trace(Untraceable(), torch.randn(2, 4))
    msg = str(e.value)
    assert "test_frontend.py" in msg and "if x.sum() > 0" in msg
    assert "leaf_modules" in msg and "concrete_args" in msg


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Untraceable()
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.inner(x))


def test_leaf_module_makes_untraceable_code_opaque():
    m = Wrapper().eval()
    x = torch.randn(2, 4)
    g = nestir.trace(m, x, leaf_modules=[Untraceable])
    assert [n.op for n in g].count("opaque") == 1
    assert nestir.opaque_nodes(g)[0].startswith("inner = Untraceable")
    torch.testing.assert_close(g.to_torch()(x), m(x))
    # the opaque node freezes the widths it touches
    info = g.groups()
    assert all(not grp.resizable for grp in info.groups.values())


def test_untraceable_submodule_becomes_a_leaf_automatically():
    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.block = Wrapper()  # its inner Untraceable is the code fx cannot trace

        def forward(self, x):
            return self.block(torch.relu(self.first(x)))

    m = Deep().eval()
    x = torch.randn(2, 4)
    import logging

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("nestir.frontend.tracer")
    level = logger.level  # the CLI quiets this logger when it runs in-process (tests do)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        g = nestir.trace(m, x)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (line,) = nestir.opaque_nodes(g)
    assert line.startswith("block_inner = Untraceable") and "not traceable, kept whole" in line
    assert "if x.sum() > 0" in line
    assert any("'block.inner'" in msg for msg in seen)
    assert {n.op for n in g} >= {"linear"} and g["block_out"].op == "linear"  # the rest is understood
    torch.testing.assert_close(g.to_torch()(x), m(x))


def test_unsupported_op_stays_opaque_and_runs():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=-1)

    g = nestir.trace(M().eval(), torch.randn(2, 4))
    (line,) = nestir.opaque_nodes(g)
    assert "cumsum" in line and "test_frontend.py" in line


def test_wrong_shape_and_not_a_module():
    with pytest.raises(ShapeError, match=r"rejects example input of shape \(2, 5\)"):
        nestir.trace(nn.Linear(4, 2), torch.randn(2, 5))
    with pytest.raises(TraceError, match="needs a torch.nn.Module"):
        nestir.trace(lambda x: x, torch.randn(2, 4))  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="tensor or a tuple"):
        nestir.trace(nn.Linear(4, 2), [1, 2])


def test_training_flag_restored():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    nestir.trace(m, torch.randn(3, 4))
    assert m.training


class ZeroGradClamp(torch.autograd.Function):
    """A custom Function whose backward differs from its forward's ops (clamp's gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(-1, 1)

    @staticmethod
    def backward(ctx, g):
        return g * 0


class WithFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return ZeroGradClamp.apply(self.fc(x))


def test_an_opaque_view_runs_whatever_the_strides_of_its_input():
    """An opaque ``view`` (here: one that folds the batch into another dim) runs as ``reshape``:
    nestir's ops may lay out a value with other strides than the model's did, and a view of a
    non-contiguous tensor would fail where the model's did not."""
    from nestir.ir.ops import run_opaque

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x).cumsum(1).view(2, x.shape[0] * 2, 6).sum(1)

    m = M().eval()
    x = torch.rand(2, 4, 6)
    g = nestir.trace(m, x)
    view = g["view"]
    assert view.op == "opaque" and view.attrs["fn"] == "reshape" and "Tensor.view" in view.attrs["label"]
    strided = torch.rand(2, 6, 4).transpose(1, 2)  # same shape, not contiguous
    torch.testing.assert_close(run_opaque(view, [strided, x]), strided.reshape(2, 4, 6))  # (x: batch size)
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-6)


def test_branches_on_shapes_are_taken_as_traced():
    """Python control flow on values computed from shapes only (``if H % 2``, ``int(math.sqrt(
    H * W))``: MobileViT, NesT, CrossViT) follows the example input's shape, as the IR does; a
    branch on a tensor's values or on the batch size still cannot be traced."""
    import math

    class Shapes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            h = self.conv(x)
            if h.shape[-1] % 2 == 1:
                h = h[:, :, :-1, :-1]
            b, c, hh, ww = h.shape
            g = int(math.sqrt(hh * ww))
            return self.fc(h.flatten(2).transpose(1, 2).reshape(b, g, g, c).mean((1, 2)))

    class Values(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    class Batch(nn.Module):
        def forward(self, x):
            return x * 2 if x.shape[0] > 1 else x

    torch.manual_seed(0)
    m = Shapes().eval()
    g = nestir.trace(m, torch.rand(2, 3, 7, 7))
    assert not nestir.opaque_nodes(g)
    x = torch.rand(5, 3, 7, 7)  # another batch size: nothing was specialised to it
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    with pytest.raises(TraceError, match="control flow"):
        nestir.trace(Values(), torch.rand(2, 3))
    with pytest.raises(TraceError, match="batch size"):
        nestir.trace(Batch(), torch.rand(2, 3))
    inner = nestir.trace(nn.Sequential(nn.Linear(3, 3), Batch()).eval(), torch.rand(2, 3))
    assert any("batch size" in op for op in nestir.opaque_nodes(inner))  # a submodule: kept whole


def test_custom_autograd_function_stays_whole_with_its_backward():
    from nestir.ir.interpreter import IRModule

    m = WithFunction()
    original = torch.autograd.Function.__dict__["apply"]
    g = nestir.trace(m, torch.randn(2, 4))
    assert torch.autograd.Function.__dict__["apply"] is original  # tracing restored it
    ops = nestir.opaque_nodes(g)
    assert len(ops) == 1 and "ZeroGradClamp.apply (custom torch.autograd.Function)" in ops[0]
    assert "test_frontend.py" in ops[0] and not any(n.attrs.get("label") == "Tensor.clamp" for n in g)
    x = torch.randn(5, 4) * 3
    torch.testing.assert_close(g.to_torch()(x), m(x))
    for module in (IRModule(g), g.to_torch()):  # the IR and its lowering both run the custom backward
        module.zero_grad()
        module(x).sum().backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(float(gr.abs().sum()) == 0.0 for gr in grads)
    y = torch.randn(3, 4, requires_grad=True)
    ZeroGradClamp.apply(y).sum().backward()
    assert float(y.grad.abs().sum()) == 0.0


class _BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: functional batch_norm on the module's own buffers."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
        return F.relu(x)


class _LN(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def test_functional_batch_norm_and_layer_norm_are_understood_and_prune():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.bn, self.c2, self.bn2 = nn.Conv2d(3, 8, 3), _BNAct(8), nn.Conv2d(8, 8, 3), _BNAct(8)
            self.fc, self.ln, self.out = nn.Linear(8, 16), _LN(16), nn.Linear(16, 10)

        def forward(self, x):
            return self.out(self.ln(self.fc(self.bn2(self.c2(self.bn(self.c1(x)))).mean((2, 3)))))

    torch.manual_seed(0)
    m = M().eval()
    for b in (m.bn, m.bn2):
        b.running_mean.uniform_(-1, 1)
        b.running_var.uniform_(0.5, 2)
        b.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 12, 12)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert [n.op for n in g].count("batchnorm") == 2 and [n.op for n in g].count("layernorm") == 1
    with torch.no_grad():
        torch.testing.assert_close(g.to_torch()(x), m(x))
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.25", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2]))])
    assert p["c1"].params["weight"].shape[0] == 6 and p["c2"].params["weight"].shape[0] == 6
    # normalized by a LayerNorm: prunes too, the LayerNorm with it
    ln = next(n for n in p if n.op == "layernorm")
    assert p["fc"].params["weight"].shape[0] == 12 and ln.params["weight"].shape[0] == 12


def stochastic_depth(input, p: float, mode: str, training: bool = True):  # torchvision.ops' signature
    if not training or p == 0.0:
        return input
    keep = torch.empty([input.shape[0]] + [1] * (input.dim() - 1)).bernoulli_(1 - p)
    return input * keep / (1 - p)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"  # as torchvision defines it
torch.fx.wrap("stochastic_depth")


def test_stochastic_depth_in_eval_is_the_identity():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return self.out(h + stochastic_depth(self.fc2(h), 0.2, "row", self.training))

    m = Block().eval()
    x = torch.randn(2, 4)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert g.groups().of("fc1").resizable
class FlattenHead(nn.Module):
    """The usual classifier head in user code: convs, then nn.Sequential(nn.Flatten(), nn.Linear)."""

    def __init__(self, conv1d: bool = False) -> None:
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if conv1d else (nn.Conv2d, nn.BatchNorm2d)
        self.features = nn.Sequential(conv(2, 6, 3, padding=1), bn(6), nn.ReLU(), conv(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * (6 if conv1d else 36), 5))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("conv1d", [False, True])
def test_flatten_module_is_the_flatten_op_and_channels_prune_through_it(conv1d):
    from nestir.passes import get
    from nestir.passinfra.base import PassContext
    from nestir.testing import batch_for, check_pass, randomize, run_ir, run_onnx

    m = randomize(FlattenHead(conv1d), 0)
    x = torch.randn(4, 2, 6) if conv1d else torch.randn(4, 2, 6, 6)
    g = nestir.trace(m, x)
    assert nestir.opaque_nodes(g) == [] and [n.op for n in g].count("flatten") == 1
    last = "features_3"
    grp = g.groups().of(last)
    assert grp.resizable and "head_1" in grp.consumers
    ref = m(x).detach().numpy()
    torch.testing.assert_close(g.to_torch()(x), m(x))
    np.testing.assert_allclose(run_onnx(g, x), ref, atol=1e-4, rtol=1e-4)
    _, y = batch_for(g, n=4)
    res = check_pass(get("magnitude-prune", fraction=0.2, neuron_fraction=0.25), g, PassContext(data=[(x, y)]), x)
    out = res.graph
    assert out[last].params["weight"].shape[0] == 6 and out["features_0"].params["weight"].shape[0] == 5
    assert out["head_1"].params["weight"].shape[1] == 6 * (6 if conv1d else 36)
    np.testing.assert_allclose(out.to_torch()(x).detach().numpy(), run_ir(out, x), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(run_onnx(out, x), run_ir(out, x), atol=1e-4, rtol=1e-4)


def test_other_flatten_ranges_reshape_or_stay_opaque_with_the_reason():
    x = torch.randn(2, 3, 4, 4)
    g = nestir.trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2)), x)
    assert nestir.opaque_nodes(g) == [] and g["_1"].op == "reshape"
    assert g.groups().of("_0").frozen
    g = nestir.trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2, 3), nn.Flatten()), x)
    assert [g[n].op for n in ("_1", "_2")] == ["reshape", "flatten"]
    g = nestir.trace(nn.Sequential(nn.Linear(4, 3), nn.Flatten()), torch.randn(2, 4))
    assert nestir.opaque_nodes(g) == [] and g["_1"].op == "identity"
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(0))
    g = nestir.trace(m, x)
    (line,) = nestir.opaque_nodes(g)
    assert "Flatten(start_dim=0, end_dim=-1): flattens the batch dimension" in line
    torch.testing.assert_close(g.to_torch()(x), m(x))


def test_optional_forward_arguments_not_given_are_fixed_at_their_defaults():
    """A forward with optional arguments the example inputs do not fill (timm's attn_mask=None,
    is_causal=False) traces to a graph with one input, and its lowering takes one input too."""
    import numpy as np

    from nestir.testing import run_onnx, run_torch

    class WithOptions(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x, attn_mask=None, is_causal=False, *, scale=2.0):
            y = self.fc(x) * scale
            return y + 1.0 if is_causal else y

    m = WithOptions().eval()
    x = torch.randn(4, 6)
    g = nestir.trace(m, x)
    assert len(g.inputs) == 1
    np.testing.assert_allclose(run_torch(g, x), m(x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-4)


def test_channels_last_blocks_layer_scales_and_group_norms_are_understood():
    """ConvNeXt / PoolFormer idioms: permute to channels-last and back, LayerNorm over the last
    axis, layer scales (a parameter, or one read through ``view``), GroupNorm with one group
    and with a group per channel, a per-channel shift: no opaque node, one residual group that
    the depthwise conv, norms and scales follow, and pruning narrows every layer but the head."""
    from blocks import ChannelsLastBlock

    torch.manual_seed(0)
    m = ChannelsLastBlock().eval()
    x = torch.rand(2, 3, 8, 8)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    ops = [n.op for n in g]
    assert ops.count("permute") == 2 and ops.count("scale") == 3 and ops.count("groupnorm") == 2
    info = g.groups()
    stream = info.of("stem")
    assert stream.resizable and stream.mixing and set(stream.producers) == {"stem", "fc2", "mix"}
    y = torch.rand(3, 3, 8, 8)
    np.testing.assert_allclose(run_onnx(g, y), m(y).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.25", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2]))])
    assert [p[n].params["weight"].shape[0] for n in ("stem", "fc1", "fc2", "mix")] == [6, 12, 6, 6]
    assert p["dw"].attrs["groups"] == 6 and p["inorm"].attrs["groups"] == 6
    assert all(n.params["value"].shape[0] == 6 for n in p if n.op == "scale")
    np.testing.assert_allclose(run_onnx(p, y), run_ir(p, y), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), run_ir(p, y), atol=1e-5)


def test_indexing_that_keeps_the_neuron_axis_whole_is_understood():
    """``h[:, 0]`` (a class token), ``h[:, 1:4:2]``, ``h[..., :]``, a full-range channel slice:
    index nodes (or identities) that leave the groups resizable; the example's batch size is not
    baked in; a partial channel slice cuts its conv into pieces, and only the piece that reaches
    the model's output is frozen."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.c, self.out = nn.Linear(6, 5), nn.Conv2d(3, 4, 1), nn.Linear(5 + 4, 3)

        def forward(self, x, y):
            h = self.fc(x)
            t = h[:, 0] + h[:, -1] + h[:, 1:4:2].mean(1) + h[..., :][:, 1:][:, 2]
            z = self.c(y)
            return self.out(torch.cat([t, z[:, :4, 1:, ::2].mean((2, 3))], 1)), z[:, 1:3].mean((2, 3))

    m = M().eval()
    g = nestir.trace(m, (torch.rand(1, 5, 6), torch.rand(1, 3, 6, 6)))
    assert not nestir.opaque_nodes(g) and [n.op for n in g].count("index") == 6  # z[:, 1:3]: the piece itself
    info = g.groups()
    assert g["c"].op == "cat" and [g[i].params["weight"].shape[0] for i in g["c"].inputs] == [1, 2, 1]
    assert info.of("fc").resizable and [info.of(i).resizable for i in g["c"].inputs] == [True, False, True]
    xb = (torch.rand(3, 5, 6), torch.rand(3, 3, 6, 6))
    for got in (run_onnx(g, xb), run_ir(g, xb)):
        for a, b in zip(got, m(*xb), strict=True):
            np.testing.assert_allclose(a, b.detach().numpy(), atol=1e-5)


def test_vit_parts_are_understood_and_attention_prunes_in_whole_heads():
    """Patch tokens (``flatten(2).transpose(1, 2)``), a class token expanded to the batch, a
    position embedding, ``nn.MultiheadAttention`` and timm-style attention (q, k, v linears, an
    attention node, the projection), ``x[:, 0]``: no opaque node; one residual stream; each
    attention ties q/k and v in units of heads; pruning removes whole heads and narrows the
    stream, the MLP and every projection, and the lowerings agree at another batch size."""
    from blocks import TinyViT

    torch.manual_seed(0)
    m = TinyViT().eval()
    g = nestir.trace(m, torch.rand(1, 3, 8, 8))
    assert not nestir.opaque_nodes(g)
    assert [n.op for n in g].count("attention") == 2 and [n.op for n in g].count("prepend") == 1
    info = g.groups()
    stream = info.of("patch")
    assert stream.prunable and set(stream.producers) == {"patch", "mha__proj", "attn__proj", "fc2"}
    ties = {t.conv: t for t in info.ties()}
    assert set(ties) == {"mha", "attn"} and all(t.groups == 2 and t.src_unit == t.dst_unit == 4 for t in ties.values())
    x = torch.rand(3, 3, 8, 8)
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 3]))])
    assert all(p[a].attrs["heads"] == 1 for a in ("mha", "attn"))
    rows = {n.name: n.params["weight"].shape[0] for n in p.parametric()}
    assert rows == {"patch": 4, "mha__q": 4, "mha__k": 4, "mha__v": 4, "mha__proj": 4, "attn__q": 4, "attn__k": 4,
                    "attn__v": 4, "attn__proj": 4, "fc1": 8, "fc2": 4, "head": 10}
    np.testing.assert_allclose(run_onnx(p, x), run_ir(p, x), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(x).detach().numpy(), run_ir(p, x), atol=1e-5)


def test_attention_that_is_not_plain_self_attention_is_not_rebuilt():
    """Cross-attention (key from another value) stays one opaque node; a module that looks like
    attention but whose rebuilt computation would differ from its recorded output is traced
    through."""

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            q, kv = self.a(x), self.b(x)
            return self.mha(q, kv, kv)[0]

    class Odd(nn.Module):  # looks like timm's Attention, splits q/k/v differently
        def __init__(self) -> None:
            super().__init__()
            self.num_heads, self.qkv, self.proj = 2, nn.Linear(8, 24), nn.Linear(8, 8)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 2, 3, 4).permute(3, 0, 2, 1, 4).unbind(0)
            return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))

    x = torch.rand(2, 5, 4)
    g = nestir.trace(Cross().eval(), x)
    assert [n.name for n in g if n.op == "opaque"] == ["mha", "getitem"]
    m = nn.Sequential(nn.Linear(4, 8), Odd()).eval()
    g = nestir.trace(m, x)  # not rebuilt as attention: traced through, its projections plain layers
    assert not [n for n in g if n.op == "attention"] and {"_1_qkv", "_1_proj"} <= {n.name for n in g.parametric()}
    assert any("test_frontend.py" in op for op in nestir.opaque_nodes(g))  # the line that wrote the call
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-6)


class _LucidAttention(nn.Module):
    """Attention as user code often writes it: a LayerNorm first, a fused ``to_qkv`` without
    bias, ``to_out = Sequential(Linear, Dropout)``, ``heads`` and ``scale``."""

    def __init__(self, dim: int = 8, heads: int = 2, dim_head: int = 4) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.1))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, -1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class _SeparateAttention(nn.Module):
    """Separate ``query`` / ``key`` / ``value`` projections, ``out_proj`` and
    ``num_attention_heads`` (the Hugging Face naming), through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int = 8, heads: int = 4) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).reshape(b, n, self.num_attention_heads, -1).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_attention_modules_written_other_ways_are_understood():
    """Recognised by their attributes and proven on their recorded output: a lucidrains-style
    block (its LayerNorm becomes a node before the projections) and separate q/k/v projections;
    heads prune whole and the lowerings agree."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.a, self.b, self.head = nn.Linear(4, 8), _LucidAttention(), _SeparateAttention(), \
                nn.Linear(8, 3)

        def forward(self, x):
            h = self.embed(x)
            h = h + self.a(h)
            h = h + self.b(h)
            return self.head(h.mean(1))

    torch.manual_seed(0)
    m = Net().eval()
    x = torch.rand(2, 5, 4)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert {n.name: n.attrs["heads"] for n in g if n.op == "attention"} == {"a": 2, "b": 4}
    assert g["a__norm"].op == "layernorm" and g["a__q"].inputs == ["a__norm"]
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2]))])
    assert (p["a"].attrs["heads"], p["b"].attrs["heads"]) == (1, 2)
    np.testing.assert_allclose(run_onnx(p, x), run_ir(p, x), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(x).detach().numpy(), run_ir(p, x), atol=1e-5)


class _RelPosAttention(nn.Module):
    """BEiT-style attention: a bias-free fused ``qkv`` with separate ``q_bias`` / ``v_bias`` and a
    learned relative position bias per head (``_get_rel_pos_bias()``) added to the logits."""

    def __init__(self, dim: int = 8, heads: int = 2, tokens: int = 5) -> None:
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.relative_position_bias_table = nn.Parameter(torch.randn(2 * tokens - 1, heads))
        idx = torch.arange(tokens)
        self.register_buffer("relative_position_index", idx[:, None] - idx[None, :] + tokens - 1)
        self.proj = nn.Linear(dim, dim)

    def _get_rel_pos_bias(self):
        n = self.relative_position_index.shape[0]
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1) \
            .permute(2, 0, 1).unsqueeze(0)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4) \
            .unbind(0)
        attn = (q * self.scale @ k.transpose(-2, -1) + self._get_rel_pos_bias()).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_attention_with_a_relative_position_bias_prunes_and_grows_whole_heads():
    """The bias the module's method returns becomes the attention node's per-head ``bias``
    parameter (kept only because it reproduces the module): pruning a head drops its bias,
    adding one appends a zero bias, and the lowerings stay exact."""
    from nestir.ir.edit import add_units

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), _RelPosAttention(), nn.Linear(8, 3)).eval()
    x = torch.rand(3, 5, 4)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    (att,) = [n for n in g if n.op == "attention"]
    b = m[1]._get_rel_pos_bias()[0].detach()
    assert torch.equal(att.params["bias"], b) and "bias" not in g[att.name + "__k"].params
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 0]))])
    (pa,) = [n for n in p if n.op == "attention"]
    assert pa.attrs["heads"] == 1 and any(torch.equal(pa.params["bias"][0], b[h]) for h in range(2))
    np.testing.assert_allclose(run_onnx(p, x), run_ir(p, x), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(x).detach().numpy(), run_ir(p, x), atol=1e-5)
    before = run_ir(p, x)
    add_units(p, pa.name, 1)
    p.verify()
    assert p[pa.name].params["bias"].shape == (2, 5, 5) and not p[pa.name].params["bias"][1].any()
    np.testing.assert_allclose(run_ir(p, x), before, atol=1e-6)  # a new head with zero v changes nothing
    np.testing.assert_allclose(run_onnx(p, x), before, atol=1e-5)


def test_a_look_alike_attention_that_computes_something_else_is_traced_through():
    """A module with attention's attributes whose rebuilt computation differs from its recorded
    output is not kept whole: tracing goes through it, so its projections are ordinary layers
    and the residual stream around it stays resizable."""

    class Odd(_LucidAttention):
        def forward(self, x):
            return super().forward(x).relu()

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), Odd()).eval()
    x = torch.rand(2, 5, 4)
    g = nestir.trace(m, x)
    assert not [n for n in g if n.op == "attention"]
    names = {n.name for n in g.parametric()}
    assert "_1_to_out_0" in names and any(n.startswith("_1_to_qkv") for n in names)  # (cut by its chunk)
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-6)


def test_channel_slices_and_splits_cut_their_producer_into_resizable_pieces():
    """``split`` / ``chunk`` / channel slices that cut a conv's output: the conv becomes pieces
    joined by a ``cat`` (same function), each piece its own resizable group; pruning moves the
    slices' channel ranges with the widths, and the lowerings agree."""
    from blocks import ChannelSplitBlock

    torch.manual_seed(0)
    m = ChannelSplitBlock().eval()
    x = torch.rand(3, 3, 6, 6)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert g["c1"].op == "cat" and [g[i].params["weight"].shape[0] for i in g["c1"].inputs] == [6, 6]
    info = g.groups()
    assert all(info.of(n.name).resizable for n in g.parametric() if n.name != "fc")
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-6)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 3]))])
    assert [p[i].params["weight"].shape[0] for i in p["c1"].inputs] == [3, 3]
    assert p["split__1"].attrs["items"][1] == (3, 6, 1)
    y = torch.rand(2, 3, 6, 6)
    np.testing.assert_allclose(run_onnx(p, y), run_ir(p, y), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), run_ir(p, y), atol=1e-5)


@pytest.mark.parametrize("how", ["module", "size", "bilinear", "align_corners", "shape"])
def test_upsampling_is_understood(how):
    """``nn.Upsample`` and ``F.interpolate`` (nearest, bilinear, by scale or size; HRNet's fusion):
    a ``resize`` node that passes channels through, exact in torch and ONNX."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.up, self.fc = nn.Upsample(scale_factor=2, mode="nearest"), nn.Linear(4, 3)

        def forward(self, x):
            a = torch.relu(self.c1(x))
            b = self.c2(a)
            up = {"module": lambda: self.up(b), "size": lambda: F.interpolate(b, size=(8, 8)),
                  "bilinear": lambda: F.interpolate(b, size=(8, 8), mode="bilinear", align_corners=False),
                  "align_corners": lambda: F.interpolate(b, scale_factor=2.0, mode="bilinear", align_corners=True),
                  "shape": lambda: F.interpolate(b, size=(a.shape[-2], a.shape[-1]))}  # GhostNetV2
            return self.fc((a + up[how]()).mean((2, 3)))

    m = M().eval()
    g = nestir.trace(m, torch.rand(1, 3, 8, 8))
    assert not nestir.opaque_nodes(g) and [n.op for n in g].count("resize") == 1
    assert g.groups().of("c2").resizable
    x = torch.rand(3, 3, 8, 8)
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), m(x).detach().numpy(), atol=1e-6)


class _Conv2dSame(nn.Conv2d):
    """TensorFlow 'same' padding computed from the input size at run time (timm's Conv2dSame):
    not traceable by torch.fx."""

    def forward(self, x):
        pads = []
        for i, k, s, d in reversed(list(zip(x.shape[2:], self.kernel_size, self.stride, self.dilation, strict=True))):
            total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
            if int(total) > 0:
                pads += [total // 2, total - total // 2]
            else:
                pads += [0, 0]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def test_a_conv_subclass_with_same_padding_becomes_pad_and_conv():
    """timm's ``Conv2dSame`` (EfficientNet-TF ports): kept whole by the tracer, then recognised
    by its recorded output as an asymmetric zero pad and a plain conv, so its channels resize."""
    m = nn.Sequential(_Conv2dSame(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(64, 3))
    m.eval()
    g = nestir.trace(m, torch.rand(1, 3, 8, 8))
    assert not nestir.opaque_nodes(g)
    assert [n.op for n in g][:3] == ["input", "pad", "conv"] and g["_0__pad"].attrs["pads"] == [0, 1, 0, 1]
    assert g.groups().of("_0").resizable
    x = torch.rand(3, 3, 8, 8)
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), m(x).detach().numpy(), atol=1e-6)


def test_a_conv_subclass_that_is_not_a_plain_conv_is_traced_through():
    """A conv subclass whose output is not a plain conv of its input (weight standardisation, as
    timm's StdConv2d) is traced through, not kept whole: its weight arithmetic becomes constants
    and ops, the model stays exact."""

    class StdConv(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True)
                                                                             + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    torch.manual_seed(0)
    m = nn.Sequential(StdConv(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3)).eval()
    x = torch.rand(2, 3, 4, 4)
    g = nestir.trace(m, x)
    assert not any("StdConv" in op for op in nestir.opaque_nodes(g))
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-5)


def test_add_and_mul_of_differently_split_groups_cut_the_single_producer_side():
    """A cat of pieces from different convs times a gate from one conv, plus a shortcut conv
    (MixNet, GhostNet): the gate's and the shortcut's convs are cut at the pieces' boundaries, so
    every group resizes instead of freezing; a neuron prune keeps torch and ONNX exact."""
    from blocks import MixedGateBlock

    torch.manual_seed(0)
    m = MixedGateBlock().eval()
    x = torch.rand(3, 3, 6, 6)
    g = nestir.trace(m, x)
    assert g["se2"].op == "cat" and g["short"].op == "cat"
    pieces = sorted(n.params["weight"].shape[0] for n in g.parametric() if n.name.startswith("se2__"))
    assert pieces == sorted([2, 3, 1, 2]), pieces  # cut at 5 (a | b) and at 2 and 6 (the slice)
    info = g.groups()
    assert all(info.of(n.name).resizable for n in g.parametric() if n.name != "fc")
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-6)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 3]))])
    widths = {n.name: n.params["weight"].shape[0] for n in p.parametric()}
    assert sum(w for k, w in widths.items() if k.startswith("short__")) < 8
    y = torch.rand(2, 3, 6, 6)
    np.testing.assert_allclose(run_onnx(p, y), run_ir(p, y), atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), run_ir(p, y), atol=1e-5)
    assert sum(isinstance(q, nn.Conv2d) for q in p.to_torch().modules()) == 5  # the pieces fused back


def test_channel_shuffle_folds_into_the_layers_that_read_it():
    """ShuffleNet's channel shuffle (view, transpose, view) is a permutation of channels: it
    becomes a gather that the convs reading it take into their weight columns, so no gather is
    left, every group resizes, and a neuron prune keeps torch and ONNX exact."""
    from blocks import ShuffleBlock

    torch.manual_seed(0)
    m = ShuffleBlock().eval()
    for p in m.parameters():
        p.data.uniform_(-1, 1)
    _random_bn_stats(m)
    x = torch.rand(3, 3, 8, 8)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert not [n.name for n in g if n.op in ("gather", "reshape", "permute")]
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    info = g.groups()
    assert all(info.of(n.name).resizable for n in g.parametric() if n.name != "head")
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 3]))])
    assert sum(n.params["weight"].shape[0] for n in p.parametric()) < sum(
        n.params["weight"].shape[0] for n in g.parametric())
    y = torch.rand(2, 3, 8, 8)
    np.testing.assert_allclose(run_onnx(p, y), run_ir(p, y), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), run_ir(p, y), rtol=1e-5, atol=1e-5)
    # lowering fuses the pieces of each cut conv back into one: as many convs as the model has
    assert sum(isinstance(q, nn.Conv2d) for q in p.to_torch().modules()) == sum(
        isinstance(q, nn.Conv2d) for q in m.modules())


def test_global_response_norm_is_understood():
    """ConvNeXt-V2's GlobalResponseNorm (recognised by name and attributes, checked against its
    recorded output) becomes a `grn` node: nothing opaque, its groups prune (it mixes the
    neurons like a LayerNorm), and torch and ONNX stay exact."""
    from blocks import GRNBlock

    torch.manual_seed(0)
    m = GRNBlock().eval()
    x = torch.rand(3, 3, 5, 5)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert [n.name for n in g if n.op == "grn"] == ["g1", "g2"]
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    p = _halved_and_exact(g, x, (2, 3, 5, 5))
    assert p["g1"].params["weight"].shape[0] < 12 and p["g2"].params["weight"].shape[0] < 10


def test_a_look_alike_module_that_computes_something_else_is_not_replaced():
    """Recognised by structure, a module must reproduce its recorded output, else it is traced
    through like any module instead of silently changing the model."""
    from blocks import GlobalResponseNorm

    class Other(GlobalResponseNorm):
        def forward(self, x):
            return super().forward(x) * 2.0

    Other.__name__ = "GlobalResponseNorm"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 1), Other(4, channels_last=False)).eval()
    x = torch.rand(2, 3, 4, 4)
    g = nestir.trace(m, x)
    assert not [n for n in g if n.op == "grn"]
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_selective_kernel_attention_is_understood():
    """SKNet: stack of paths, sum over them, a view that splits the neuron axis into (paths, C)
    and a softmax over the paths: nothing opaque, every group resizes (the select conv is cut
    into one piece per path), and a prune keeps torch and ONNX exact."""
    from blocks import SelectiveKernelBlock

    torch.manual_seed(0)
    m = SelectiveKernelBlock().eval()
    _random_bn_stats(m)
    x = torch.rand(3, 3, 6, 6)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not _frozen_layers(g, "fc")
    p = _halved_and_exact(g, x, (2, 3, 6, 6))
    assert p["p1_0"].params["weight"].shape[0] < 8


def test_resnest_split_attention_is_understood():
    """ResNeSt: the grouped conv is cut between its conv groups into one conv per radix piece
    (each reading its own input range), the radix softmax ties the pieces' neurons, and a prune
    keeps torch and ONNX exact."""
    from blocks import SplitAttnBlock

    torch.manual_seed(0)
    m = SplitAttnBlock().eval()
    m.bn0.running_mean.uniform_(-1, 1)
    m.bn0.running_var.uniform_(0.5, 2)
    x = torch.rand(3, 3, 6, 6)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g) and [n.op for n in g if n.name == "rsoftmax"] == ["radix_softmax"]
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not _frozen_layers(g, "fc")
    p = _halved_and_exact(g, x, (2, 3, 6, 6))
    assert p["fc"].params["weight"].shape[1] < 6


def _random_bn_stats(m: nn.Module) -> None:
    """BatchNorm statistics that are not the identity, so a mistake in folding them shows."""
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)


def _frozen_layers(g, *allowed: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Parametric layers, other than ``allowed``, whose neurons cannot be pruned."""
    info = g.groups()
    return [n.name for n in g.parametric() if n.name not in allowed and not info.of(n.name).prunable]


def _halved_and_exact(g, x, shape):  # type: ignore[no-untyped-def]
    """Half the neurons pruned (and the dead ones eliminated); torch and ONNX agree with the IR on
    a fresh input of ``shape``."""
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 3]))])
    y = torch.rand(shape)
    np.testing.assert_allclose(run_onnx(p, y), run_ir(p, y), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), run_ir(p, y), rtol=1e-5, atol=1e-5)
    return p


def test_functions_torchvision_wraps_are_traced_through():
    """torchvision marks functions with ``torch.fx.wrap`` to keep them whole (Swin's
    ``shifted_window_attention`` takes its layers' weights as arguments); nestir traces through
    them, so the weights they take become layers. (A stand-in module named like torchvision's.)"""
    import sys
    import types

    mod = types.ModuleType("torchvision.models._nestir_stand_in")
    exec("import torch, torch.nn.functional as F\n"
         "def project(x, w, b):\n    return F.linear(x, w, b).relu()\n"
         "torch.fx.wrap('project')\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        class M(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner, self.out = nn.Linear(4, 6), nn.Linear(6, 2)

            def forward(self, x):
                return self.out(mod.project(x, self.inner.weight, self.inner.bias))

        m, x = M().eval(), torch.rand(3, 4)
        g = nestir.trace(m, x)
        assert not nestir.opaque_nodes(g) and [n.op for n in g.parametric()] == ["linear", "linear"]
        assert g.groups().of(g.parametric()[0].name).resizable
        np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-6)
        assert ("project" in {k[1] for k in torch.fx._symbolic_trace._wrapped_fns_to_patch})  # restored
    finally:
        del sys.modules[mod.__name__]


def test_a_mask_built_in_place_is_a_constant_and_assigning_into_a_computed_tensor_is_refused():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            mask = h.new_zeros((h.shape[1],))  # (a size read from a shape is a constant too)
            mask[1:3] = 1.0  # Swin builds its shift mask this way
            return h * mask

    m, x = Masked().eval(), torch.rand(2, 4)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    y = torch.rand(5, 4)
    np.testing.assert_allclose(run_ir(g, y), m(y).detach().numpy(), atol=1e-6)

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            h[:, 0] = 0.0
            return h

    with pytest.raises(TraceError, match=r"h\[:, 0\] = 0.0 assigns into a computed tensor"):
        nestir.trace(InPlace().eval(), x)

    class Outer(nn.Module):  # in a submodule: that submodule is kept whole, the rest understood
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.out = InPlace(), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.inner(x))

    o = Outer().eval()
    g = nestir.trace(o, x)
    assert [n.split(" = ")[0] for n in nestir.opaque_nodes(g)] == ["inner"]
    np.testing.assert_allclose(run_ir(g, y), o(y).detach().numpy(), atol=1e-6)


def test_channels_folded_into_the_batch_and_back_keep_their_neurons() -> None:
    """MobileViT's unfold: ``(B, C, H, W) -> (B*C*nh, ph, nw, pw)``, a transpose, ``-> (B, C, N, P)``,
    then ``(B*P, N, -1)`` for the transformer and the same way back. The first reshape is written
    with the folded dims kept apart (``(B, C, nh, ph, nw, pw)``), the batch-derived ``-1``
    reshapes are ``reshape(-1, ...)``: no opaque node, every layer but the classifier prunes, and
    the pruned network is exact in both lowerings at another batch size."""
    import numpy as np

    from nestir.testing import run_ir, run_onnx

    class Unfold(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc, self.out = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 8), \
                torch.nn.Conv2d(8, 6, 1)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            x = self.conv(x)
            b, c, h, w = x.shape
            ph = pw = 2
            nh, nw = h // ph, w // pw
            n, p = nh * nw, ph * pw
            y = x.reshape(b * c * nh, ph, nw, pw).transpose(1, 2).reshape(b, c, n, p)
            y = y.transpose(1, 3).reshape(b * p, n, -1)
            y = y + self.fc(torch.relu(y))
            y = y.contiguous().view(b, p, n, -1).transpose(1, 3).reshape(b * c * nh, nw, ph, pw)
            y = y.transpose(1, 2).reshape(b, c, nh * ph, nw * pw)
            return self.head(self.out(y + x).mean((2, 3)))

    torch.manual_seed(0)
    m, x = Unfold().eval(), torch.randn(2, 3, 8, 8)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    info = g.groups()
    assert [n.name for n in g.parametric() if not info.produced(n.name).prunable] == ["head"]
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-5)
    pruned = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                          data=[(x, torch.tensor([0, 1]))])
    assert pruned["conv"].params["weight"].shape[0] == 4 and pruned["fc"].params["weight"].shape == (4, 4)
    y = torch.randn(3, 3, 8, 8)
    ref = run_ir(pruned, y)
    np.testing.assert_allclose(run_onnx(pruned, y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pruned.to_torch()(y).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_torch_aliases_of_known_functions_are_recognised():
    class Aliases(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = torch.max_pool2d(torch.relu_(self.conv(x)), 2)
            z = torch.avg_pool1d(y.flatten(2), 3)
            w = torch.max_pool1d(F.relu_(z), 2, 2)
            return torch.tanh_(w.sigmoid_()).flatten(1)

    torch.manual_seed(0)
    m, x = Aliases(), torch.rand(2, 1, 12, 12)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    assert [n.op for n in g].count("pool") == 3
    with torch.no_grad():
        ref = m(x.clone()).numpy()
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-6)
    np.testing.assert_allclose(run_onnx(g, x), ref, atol=1e-5)
