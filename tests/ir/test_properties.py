"""Properties of the IR over generated models: trace, verify, lower to torch and ONNX, edit."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nestir
from nestir.ir.edit import add_neurons, remove_neurons
from nestir.ir.errors import EditError
from nestir.testing import models, run_ir, run_onnx


@given(models())
def test_traced_graph_verifies_and_lowers_exactly(mx):
    model, x = mx
    g = nestir.trace(model, x)
    g.verify()
    with torch.no_grad():
        ref = model(x).numpy()
        low = g.to_torch()(x).numpy()
    np.testing.assert_allclose(low, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(run_onnx(g, x), ref, atol=1e-4, rtol=1e-4)


@given(models(), st.integers(1, 3), st.data())
def test_add_then_remove_neurons_keeps_verifier_and_function(mx, count, data):
    model, x = mx
    g = nestir.trace(model, x)
    groups = [grp for grp in g.groups().resizable() if not grp.mixing]
    if not groups:
        return
    grp = data.draw(st.sampled_from(groups))
    ref = run_ir(g, x)
    new = add_neurons(g, grp.id, count)
    g.verify()
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-5, rtol=1e-5)
    gid = g.groups().of(grp.producers[0]).id
    remove_neurons(g, gid, new)
    g.verify()
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-5, rtol=1e-5)


@given(models())
def test_failed_edit_leaves_graph_unchanged(mx):
    model, x = mx
    g = nestir.trace(model, x)
    groups = g.groups().resizable()
    if not groups:
        return
    grp = groups[0]
    snapshot = g.copy()
    bad_rows = {grp.producers[0]: {"weight": torch.zeros(1, 999)}}
    with pytest.raises(EditError):
        add_neurons(g, grp.id, 1, rows=bad_rows)
    with pytest.raises(EditError):
        remove_neurons(g, grp.id, range(grp.width))
    for a, b in zip(g, snapshot, strict=True):
        assert a.shape == b.shape and a.attrs.keys() == b.attrs.keys()
        assert a.params.keys() == b.params.keys()
        for k in a.params:
            assert torch.equal(a.params[k], b.params[k])
