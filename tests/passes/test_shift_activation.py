import pytest
import torch

import nestir
from nestir.driver.zoo import ZOO
from nestir.ir.errors import PassError
from nestir.passes import get
from nestir.passinfra.base import PassContext


def test_shift_both_ways():
    g = nestir.trace(ZOO["lenet-300-100-seed"].factory(), torch.rand(2, 1, 28, 28))
    kinds = lambda: sorted(n.attrs["kind"] for n in g if n.op == "act")
    assert kinds() == ["leaky_relu", "leaky_relu"]
    assert get("shift-activation", to="relu").run(g, PassContext()).modified
    assert kinds() == ["relu", "relu"]
    assert not get("shift-activation", to="relu").run(g, PassContext()).modified
    with pytest.raises(PassError):
        get("shift-activation", to="tanh")
