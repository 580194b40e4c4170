"""Every registered pass, over generated models: verifier green, declared effect honoured,
lowered torch and ONNX agree with the IR (and with the input where the pass preserves it)."""

import torch
from harness import check_pass
from hypothesis import given
from hypothesis import strategies as st
from strategies import models

import nestir
from nestir.passes import get, registered
from nestir.passinfra import PassContext

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


def sparsify(g, seed):
    gen = torch.Generator().manual_seed(seed)
    for n in g.parametric():
        keep = torch.rand(n.params["mask"].shape, generator=gen) < 0.6
        n.params["mask"] = n.params["mask"] & keep
        n.params["weight"] = n.params["weight"] * n.params["mask"]


@given(models(), st.sampled_from(sorted(OPTIONS)), st.booleans())
def test_pass_invariants(mx, name, sparse):
    model, x = mx
    g = nestir.trace(model, x)
    if sparse:
        sparsify(g, 0)
    y = torch.randint(0, 2, (x.shape[0],))
    ctx = PassContext(data=[(x, y)], seed=1)
    out, _ = check_pass(get(name, **OPTIONS[name]), g, ctx, x)
    out2, _ = check_pass(get(name, **OPTIONS[name]), g, ctx, x)  # same seed, same result
    for a, b in zip(out, out2, strict=True):
        for k in a.params:
            assert torch.equal(a.params[k], b.params[k])
