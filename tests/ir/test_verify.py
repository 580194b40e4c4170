import pytest
import torch

import nestir
from nestir.driver.zoo import LeNet300100
from nestir.ir.errors import VerifyError


def graph():
    return nestir.trace(LeNet300100().eval(), torch.randn(2, 1, 28, 28))


def test_bad_mask_shape_names_node():
    g = graph()
    g["fc2"].params["mask"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(VerifyError, match="node 'fc2': mask must be bool"):
        g.verify()


def test_width_mismatch_names_node():
    g = graph()
    g["fc1"].params["weight"] = torch.zeros(301, 784)
    g["fc1"].params["mask"] = torch.ones(301, 784, dtype=torch.bool)
    with pytest.raises(VerifyError, match="fc1"):
        g.verify()


def test_dangling_use_and_order():
    g = graph()
    g["fc2"].inputs = ["nowhere"]
    with pytest.raises(VerifyError, match="'nowhere', which is not in the graph"):
        g.verify()
    g = graph()
    g["act1"].inputs = ["fc2"]
    with pytest.raises(VerifyError, match="before it is defined"):
        g.verify()


def test_nan_weights_rejected():
    g = graph()
    g["fc3"].params["weight"][0, 0] = float("nan")
    with pytest.raises(VerifyError, match="fc3.*NaN"):
        g.verify()
