"""Attention written out op by op (nestir.ir.opdefs.heads): the reshape into heads is understood,
q, k and v lose and gain whole heads together, and every lowering stays exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import nestir
from nestir.ir.edit import add_units
from nestir.testing import run_ir, run_onnx

VARIANTS = {
    "fused-sdpa": {},
    "q-and-kv": {"fused": False},
    "manual-softmax": {"manual": True},
    "rope-qknorm": {"rope": True, "qknorm": True},
    "kv-rope-manual": {"fused": False, "manual": True, "rope": True},
    "relative-bias": {"bias": True},
    "levit-split": {"levit": True},
    "einsum": {"einsum": True},
}


def _net(**kw):  # type: ignore[no-untyped-def]
    from blocks import HeadsNet

    torch.manual_seed(0)
    return HeadsNet(**kw).eval()


def _exact(g, y):  # type: ignore[no-untyped-def]
    ref = run_ir(g, y)
    np.testing.assert_allclose(run_onnx(g, y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.to_torch()(y).detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    return ref


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_heads_prune_and_grow_whole_across_q_k_and_v(variant: str) -> None:
    m, x = _net(**VARIANTS[variant]), torch.randn(3, 5, 6)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g) and not [n for n in g if n.op == "attention"]
    info = g.groups()
    (tie,) = [t for t in info.ties() if g[t.conv].op in ("heads", "matmul", "einsum", "sdpa", "reshape", "binary")]
    assert tie.groups == 4
    qkv = {p for gid, _ in tie.sides for p in info.groups[gid].producers}
    assert qkv and all(p.startswith("attn_q") or p.startswith("attn_kv") for p in qkv)
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)

    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2, 0]))])
    p.verify()
    assert {n.attrs["heads"] for n in p if n.op == "heads"} == {2}
    assert p["attn_proj"].params["weight"].shape[1] == g["attn_proj"].params["weight"].shape[1] // 2
    y = torch.randn(2, 5, 6)
    before = _exact(p, y)
    t = next(t for t in p.groups().ties() if t.groups == 2)
    add_units(p, t.conv, 1)
    p.verify()
    assert {n.attrs["heads"] for n in p if n.op == "heads"} == {3}
    np.testing.assert_allclose(_exact(p, y), before, atol=1e-6)  # new heads with zero weights change nothing


def test_a_relative_position_bias_keeps_the_entries_of_the_heads_kept() -> None:
    m, x = _net(bias=True), torch.randn(3, 5, 6)
    g = nestir.trace(m, x)
    (c,) = [n for n in g if n.op == "const" and n.shape == (1, 4, 5, 5)]
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5"], data=[(x, torch.tensor([1, 2, 0]))])
    kept = p[c.name].params["value"][0]
    assert kept.shape == (2, 5, 5)
    rows = [h for h in range(4) if any(torch.equal(kept[i], m.attn.rel[h].detach()) for i in range(2))]
    assert len(rows) == 2
    _exact(p, x)


class _TalkingHeads(nn.Module):
    """Heads mixed by a linear map over the head dim (CaiT): no head can go alone."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.mix, self.proj = nn.Linear(8, 24), nn.Linear(2, 2), nn.Linear(8, 8)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        a = self.mix((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


def test_an_op_that_mixes_heads_freezes_them_and_says_which() -> None:
    m = nn.Sequential(nn.Linear(3, 8), _TalkingHeads()).eval()
    x = torch.randn(2, 5, 3)
    g = nestir.trace(m, x)
    info = g.groups()
    q = info.of(next(n.name for n in g.parametric() if n.name.startswith("_1_qkv")))
    assert q is not None and q.frozen
    reasons = " ".join(gr.reason for gr in info.groups.values())
    assert "reads attention heads in a way nestir cannot follow" in reasons and "_1_mix" in reasons
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)


def test_swin_windows_shifts_and_patch_merging_leave_every_layer_prunable() -> None:
    """Windows folded into the batch dim and back (``view(-1, ...)``), cyclic shifts, a zero pad,
    a shift mask the same for every head, a relative position bias and patch merging: no opaque
    node, every layer but the classifier can lose neurons, and pruning half the neurons (and one
    of the two heads) keeps torch and ONNX exact at another batch size; a new head changes nothing."""
    from blocks import SwinLike

    torch.manual_seed(0)
    m, x = SwinLike().eval(), torch.randn(2, 4, 4, 3)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    info = g.groups()
    assert [n.name for n in g.parametric() if not info.of(n.name).prunable] == ["head"]
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2]))])
    p.verify()
    assert {n.attrs["heads"] for n in p if n.op == "heads"} == {1}
    assert p["reduction"].params["weight"].shape == (8, 16)  # 4 copies of the 4 channels kept
    y = torch.randn(3, 4, 4, 3)
    before = _exact(p, y)
    add_units(p, next(t for t in p.groups().ties()).conv, 1)
    p.verify()
    np.testing.assert_allclose(_exact(p, y), before, atol=1e-6)


def test_casts_to_the_same_type_unsqueeze_normalize_and_softmax_modules_are_understood() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.sm, self.out = nn.Linear(4, 6), nn.Softmax(dim=1), nn.Linear(6, 2)

        def forward(self, x):
            h = self.fc(x).float().type_as(x).to(torch.float32)
            h = torch.nn.functional.normalize(self.sm(h.unsqueeze(1)), dim=1)
            return self.out(h.squeeze(1))

    m, x = M().eval(), torch.randn(3, 4)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g) and g.groups().of("fc").resizable
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)


def test_a_branch_on_the_device_goes_the_way_the_model_runs() -> None:
    """Shapes are evaluated on meta tensors, but ``x.device`` reads the example's device."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = self.fc(x)
            return h * 2 if h.device.type != "meta" and not h.is_cuda else h

    m, x = M().eval(), torch.randn(2, 4)
    g = nestir.trace(m, x)
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-6)


class _SingleHead(nn.Module):
    """Single-head attention as user code writes it: no reshape into heads."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.q, self.k, self.v = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(8, 5)
        self.o, self.head = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.emb(x)
        a = (self.q(x) @ self.k(x).transpose(1, 2) * 0.3).softmax(-1)
        x = x + self.o(a @ self.v(x))
        return self.head(x.mean(1))


def test_single_head_attention_pairs_q_with_k_and_passes_v_through() -> None:
    """``q @ k^T``: q's and k's neurons meet in the product, so they are one group (pruning
    neuron j drops row j of both), and no neuron of it is dead for want of a layer reading it;
    ``attn @ v``: v's neurons are the product's. Every growth pass keeps the lowerings exact."""
    torch.manual_seed(0)
    m, x = _SingleHead().eval(), torch.randn(3, 5, 4)
    g = nestir.trace(m, x)
    info = g.groups()
    qk = info.of("q")
    assert qk is info.of("k") and qk.resizable and qk.product and info.of("v").resizable
    assert info.of("o").resizable and not nestir.opaque_nodes(g)
    data = [(x, torch.tensor([1, 2, 0]))]
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5"], data=data)
    before = run_ir(p, x)
    p = nestir.apply(p, ["eliminate-dead-neurons"], data=data)
    np.testing.assert_allclose(run_ir(p, x), before, atol=1e-6)
    assert p["q"].params["weight"].shape[0] == p["k"].params["weight"].shape[0] == 3
    y = torch.randn(2, 5, 4)
    _exact(p, y)
    for spec in ("bridge-neuron", "split-neuron", "add-feature-map", "grow-connection"):
        _exact(nestir.apply(p, [spec], data=data), y)


def test_rotary_tables_are_constants_that_neither_train_nor_count() -> None:
    """A product with a table computed from buffers (a rotary embedding's cos and sin) holds one
    entry per neuron but is not a parameter: ``scale_const`` (a trained layer scale is ``scale``:
    test_frontend's channels-last block)."""
    from nestir.ir.interpreter import IRModule

    m, x = _net(rope=True, qknorm=True), torch.randn(3, 5, 6)  # (after the q/k LayerNorm, as EVA's)
    g = nestir.trace(m, x)
    ops = [n.op for n in g]
    assert ops.count("scale_const") == 4 and "scale" not in ops
    assert nestir.stats(g, compact=False)["params"] == sum(p.numel() for p in m.parameters())
    trained = {k for k, _ in IRModule(g).named_parameters()}
    assert trained and not any(n.op == "scale_const" and any(n.name in k for k in trained) for n in g)
    _exact(g, x)


def test_attention_on_a_channels_first_map_prunes_whole_heads() -> None:
    """Visformer: q, k and v split from a 1x1 conv's channels (``qkv(x).reshape(B, 3, H, D, -1)``,
    permuted with the 3 first) and the output laid back as a map (``permute(0, 1, 3, 2).reshape(B,
    -1, h, w)``): the conv is cut into q, k and v, they lose and gain whole heads together, and both
    lowerings stay exact."""
    import torch.nn.functional as F

    class ConvAttn(nn.Module):
        def __init__(self, c: int = 8, heads: int = 2) -> None:
            super().__init__()
            self.stem, self.qkv = nn.Conv2d(3, c, 1), nn.Conv2d(c, 3 * c, 1, bias=False)
            self.proj, self.head = nn.Conv2d(c, c, 1), nn.Linear(c, 3)
            self.h, self.d = heads, c // heads

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            b, _, h, w = x.shape
            q, k, v = self.qkv(x).reshape(b, 3, self.h, self.d, -1).permute(1, 0, 2, 4, 3).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v).permute(0, 1, 3, 2).reshape(b, -1, h, w)
            return self.head((x + self.proj(y)).mean((2, 3)))

    torch.manual_seed(0)
    m, x = ConvAttn().eval(), torch.randn(2, 3, 4, 4)
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    (tie,) = [t for t in g.groups().ties() if t.groups == 2]
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([1, 2]))])
    p.verify()
    assert {n.attrs["heads"] for n in p if n.op == "heads"} == {1}
    y = torch.randn(3, 3, 4, 4)
    before = _exact(p, y)
    add_units(p, next(t for t in p.groups().ties()).conv, 1)
    p.verify()
    assert {n.attrs["heads"] for n in p if n.op == "heads"} == {2}
    np.testing.assert_allclose(_exact(p, y), before, atol=1e-6)
