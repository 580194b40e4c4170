"""Every registered pass, over generated models, through the public pass-contract checker
(:func:`nestir.testing.check_pass`): verifier green, declared effect honoured, ``modified``
honest, function preserved where declared, a clear error without data, deterministic in the
seed, lowered torch and ONNX agree with the IR."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nestir
from nestir.passes import get, registered
from nestir.passinfra.base import PassContext
from nestir.testing import batch_for, check_pass, models, sparsify

OPTIONS = {
    "grow-connection": {"fraction": 0.2},
    "bridge-neuron": {"count": 2},
    "add-feature-map": {"count": 1, "candidates": 3},
    "split-neuron": {"count": 1, "epsilon": 0.05},
    "magnitude-prune": {"fraction": 0.3, "neuron_fraction": 0.3},
    "partial-area-mask": {"fraction": 0.2},
    "eliminate-dead-neurons": {},
    "shift-activation": {"to": "leaky_relu"},
}


def test_every_registered_pass_is_covered():
    assert set(registered()) == set(OPTIONS)


@given(models(), st.sampled_from(sorted(OPTIONS)), st.booleans())
def test_pass_invariants(mx, name, sparse):
    model, x = mx
    g = nestir.trace(model, x)
    if sparse:
        sparsify(g, 0.6, seed=0)
    _, y = batch_for(g, n=x.shape[0])
    check_pass(get(name, **OPTIONS[name]), g, PassContext(data=[(x, y)], seed=1), x)


@pytest.mark.parametrize("block", ["ChannelsLastBlock", "TinyViT", "ChannelSplitBlock"])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_pass_invariants_on_real_model_idioms(name, block):
    """ConvNeXt / PoolFormer idioms (permutes, LayerNorm over the last axis, layer scales,
    GroupNorms) and ViT ones (tokens, class token, attention heads) under every pass: growth
    leaves the LayerNorm-normalized stream alone, pruning narrows it, attention loses whole
    heads, and every lowering agrees with the IR."""
    import blocks

    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    g = nestir.trace(getattr(blocks, block)().eval(), x)
    _, y = batch_for(g, n=x.shape[0])
    check_pass(get(name, **OPTIONS[name]), g, PassContext(data=[(x, y)], seed=1), x)


@pytest.mark.parametrize("name", ["grow-connection", "magnitude-prune", "bridge-neuron", "add-feature-map",
                                  "partial-area-mask", "split-neuron"])
def test_every_layers_option_refuses_a_name_that_is_no_parametric_node(name):
    from nestir.driver.zoo import LeNet5
    from nestir.passinfra.base import PassContext, get

    g = nestir.trace(LeNet5(), torch.rand(2, 1, 28, 28))
    ctx = PassContext(data=[(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))])
    with pytest.raises(nestir.PassError, match=f"{name}: no parametric node named fc9"):
        get(name, layers="fc1+fc9")(g, ctx)
