import torch

import nestir
from nestir.zoo import LeNet5, MobileNetTiny, ResNet


def test_residual_add_couples_producers_and_bn():
    g = nestir.trace(ResNet().eval(), torch.randn(2, 3, 32, 32))
    info = g.groups()
    grp = info.of("layers_1_conv2")
    assert set(grp.producers) == {"layers_1_conv2", "layers_1_short_0"}
    assert {"layers_1_bn2", "layers_1_short_1"} <= set(grp.per_neuron)
    assert grp.resizable


def test_flatten_expands_channels_to_features():
    g = nestir.trace(LeNet5().eval(), torch.randn(2, 1, 28, 28))
    info = g.groups()
    grp = info.of("conv2")
    assert info.columns("fc1", grp.id) == [(0, 16, 50)]


def test_depthwise_ties_in_and_out_channels():
    g = nestir.trace(MobileNetTiny().eval(), torch.randn(2, 3, 32, 32))
    info = g.groups()
    dw = [n for n in g if n.op == "conv" and n.attrs["groups"] > 1]
    assert dw
    for n in dw:
        assert info.of(n.name) is info.of(n.inputs[0])
        assert n.name in info.of(n.name).per_neuron


def test_concat_offsets():
    class Cat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(2, 3, 1)
            self.b = torch.nn.Conv2d(2, 4, 1)
            self.c = torch.nn.Conv2d(7, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    g = nestir.trace(Cat().eval(), torch.randn(1, 2, 4, 4))
    info = g.groups()
    assert info.columns("c", info.of("a").id) == [(0, 1, 3)]
    assert info.columns("c", info.of("b").id) == [(3, 1, 4)]


def test_model_input_and_output_are_frozen():
    g = nestir.trace(LeNet5().eval(), torch.randn(2, 1, 28, 28))
    info = g.groups()
    assert not info.of("x").resizable and "input" in info.of("x").reason
    assert not info.of("fc2").resizable and "output" in info.of("fc2").reason
