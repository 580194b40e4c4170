import torch
import torch.nn.functional as F

import nestir
from nestir.backends.gradstats import collect
from nestir.driver.zoo import LeNet300100


def test_weight_gradient_and_bridge_matrix_match_autograd():
    torch.manual_seed(0)
    g = nestir.trace(LeNet300100((30, 20)), torch.rand(2, 1, 28, 28))
    g["fc2"].params["mask"][:, :10] = False
    data = [(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]
    st = collect(g, data, bridges=[("fc2", "fc1")])
    ref_w, ref_g = 0, 0
    for x, y in data:
        W1, b1 = g["fc1"].params["weight"], g["fc1"].params["bias"]
        W2 = (g["fc2"].params["weight"] * g["fc2"].params["mask"]).requires_grad_()
        xin = x.flatten(1)
        u2 = F.linear(F.relu(F.linear(xin, W1, b1)), W2, g["fc2"].params["bias"])
        u2.retain_grad()
        out = F.linear(F.relu(u2), g["fc3"].params["weight"], g["fc3"].params["bias"])
        F.cross_entropy(out, y).backward()
        ref_w = ref_w + W2.grad
        ref_g = ref_g + u2.grad.T @ xin
    torch.testing.assert_close(st.weight_grad["fc2"], ref_w / 3)
    torch.testing.assert_close(st.bridge[("fc2", "fc1")], ref_g / 3)
    assert bool((st.weight_grad["fc2"][:, :10] != 0).any())  # dormant connections are scored
