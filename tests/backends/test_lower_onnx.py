import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import nestir
from nestir.driver.zoo import MobileNetTiny, ResNet
from nestir.testing import run_ir, run_onnx


def test_onnx_file_contract(tmp_path):
    g = nestir.trace(ResNet().eval(), torch.rand(2, 3, 32, 32))
    path = tmp_path / "m.onnx"
    g.to_onnx(str(path))
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert m.ir_version <= 10
    assert m.graph.input[0].name == "input"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.rand(5, 3, 32, 32)  # another batch size than traced with
    np.testing.assert_allclose(run_onnx(g, x), run_ir(g, x), atol=1e-4)


def test_depthwise_model_agrees():
    g = nestir.trace(MobileNetTiny().eval(), torch.rand(2, 3, 32, 32))
    x = torch.rand(3, 3, 32, 32)
    np.testing.assert_allclose(run_onnx(g, x), run_ir(g, x), atol=1e-4)


def test_opaque_nodes_export_through_torch():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=-1)

    g = nestir.trace(M().eval(), torch.rand(2, 6))
    assert any(n.op == "opaque" for n in g)
    x = torch.rand(7, 6)
    np.testing.assert_allclose(run_onnx(g, x), run_ir(g, x), atol=1e-5)


def test_batch_size_read_by_an_opaque_call_stays_dynamic():
    """A class token expanded to ``x.shape[0]`` (ViT, DeiT) traced at batch 1: the opaque expand
    reads the batch size at run time, in the IR, the torch lowering and the ONNX file."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.randn(1, 1, 6))
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            n = x.shape[0]
            t = torch.cat([self.cls.expand(n, -1, -1), x], dim=1)
            return self.fc(t[:, 0])

    m = Tokens().eval()
    g = nestir.trace(m, torch.rand(1, 5, 6))
    assert any(n.op == "opaque" and n.attrs["fn"] == "expand" for n in g)
    x = torch.rand(4, 5, 6)
    want = m(x).detach().numpy()
    np.testing.assert_allclose(run_ir(g, x), want, atol=1e-6)
    np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), want, atol=1e-6)
    np.testing.assert_allclose(run_onnx(g, x), want, atol=1e-5)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("shape,out", [((2, 3, 10), (4,)), ((2, 3, 2, 2), (6, 6)), ((2, 3, 13, 9), (5, 3))])
def test_uneven_adaptive_pooling_lowers_exactly(mode, shape, out):
    """Adaptive pooling whose input is not a multiple of its output (AlexNet's and VGG's 6x6/7x7
    pools on small images: windows overlap or differ in size) lowers to ONNX exactly."""
    pools = {("avg", 1): nn.AdaptiveAvgPool1d, ("avg", 2): nn.AdaptiveAvgPool2d,
             ("max", 1): nn.AdaptiveMaxPool1d, ("max", 2): nn.AdaptiveMaxPool2d}
    conv = (nn.Conv1d if len(out) == 1 else nn.Conv2d)(3, 4, 1)
    m = nn.Sequential(conv, pools[mode, len(out)](out if len(out) > 1 else out[0])).eval()
    x = torch.randn(*shape)
    g = nestir.trace(m, x)
    y = torch.randn(5, *shape[1:])  # another batch size than traced with
    np.testing.assert_allclose(run_onnx(g, y), m(y).detach().numpy(), atol=1e-5)


def test_opaque_attention_of_any_rank_exports():
    """An opaque block computing attention over 5-D q, k, v (NesT's blocks of tokens): torch's
    ONNX translation of scaled_dot_product_attention takes 4-D only, so the export falls back to
    the attention's math (MatMul, Softmax) and agrees with the model."""

    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):  # (B, T, N, C): attention within each of T blocks of N tokens
            b, t, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, t, n, 3, 2, c // 2).permute(3, 0, 4, 1, 2, 5).unbind(0)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return o.permute(0, 2, 3, 1, 4).reshape(b, t, n, c)

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), Blocks(), nn.Linear(8, 3)).eval()
    x = torch.rand(2, 4, 5, 8)
    g = nestir.trace(m, x, leaf_modules=[Blocks])  # kept whole: one opaque call
    assert any("Blocks" in op for op in nestir.opaque_nodes(g))
    np.testing.assert_allclose(run_onnx(g, x), m(x).detach().numpy(), atol=1e-5)
    y = torch.rand(3, 4, 5, 8)  # and the batch stays dynamic
    np.testing.assert_allclose(run_onnx(g, y), m(y).detach().numpy(), atol=1e-5)


def test_batch_arithmetic_in_an_opaque_call_stays_dynamic():
    """``x.reshape(b * n // 2, ...)`` after an opaque op: the size is kept as arithmetic on the
    batch size read at run time, not as the example's number, in the IR and both lowerings."""

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            b, n, c = x.shape
            h = self.fc(x).cumsum(1)
            return h.reshape(1, b * n // 2, 2, c).sum(2).reshape(b, n // 2, c)  # (the first stays opaque)

    torch.manual_seed(0)
    m = M().eval()
    g = nestir.trace(m, torch.rand(2, 4, 6))
    assert g["reshape"].op == "opaque" and g["reshape"].attrs["args"][2][0] == "__expr__"
    assert g["reshape_1"].op == "reshape" and g["reshape_1"].attrs["rebatch"]  # batch from (1, b * n // 2)
    for b in (1, 5):
        x = torch.rand(b, 4, 6)
        ref = m(x).detach().numpy()
        np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-6)
        np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), ref, atol=1e-6)
        np.testing.assert_allclose(run_onnx(g, x), ref, atol=1e-5)


def test_pruned_weights_are_stored_sparse_and_the_file_follows_the_non_zero_weights(tmp_path):
    import onnxruntime as ort

    from nestir.driver.zoo import LeNet5

    torch.manual_seed(0)
    g = nestir.trace(LeNet5(), torch.rand(2, 1, 28, 28))
    g = nestir.apply(g, ["magnitude-prune:fraction=0.95,scope=global"])  # 5% of the weights left
    sparse, dense = tmp_path / "s.onnx", tmp_path / "d.onnx"
    g.to_onnx(str(sparse))
    g.to_onnx(str(dense), sparse_storage="never")
    assert sparse.stat().st_size <= dense.stat().st_size / 3
    m = onnx.load(str(sparse))
    onnx.checker.check_model(m)
    assert len(m.graph.sparse_initializer) >= 2
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for p in (sparse, dense)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    np.testing.assert_allclose(outs[0], run_ir(g, torch.from_numpy(x)), atol=1e-5)
    with pytest.raises(nestir.LoweringError, match="sparse_storage"):
        g.to_onnx(str(dense), sparse_storage="csr")
