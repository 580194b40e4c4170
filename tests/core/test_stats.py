import torch

import nestir
from nestir.zoo import LeNet5, LeNet300100


def test_lenet_sizes_match_the_paper():
    s = nestir.stats(nestir.trace(LeNet300100(), torch.zeros(1, 1, 28, 28)))
    assert s["params"] == 266_610 and s["flops"] == 2 * 266_200
    s = nestir.stats(nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28)))
    assert s["params"] == 431_080 and s["flops"] == 4_586_000


def test_masks_and_partial_areas_are_counted():
    g = nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28))
    g["fc1"].params["mask"][:, :400] = False
    area = torch.ones(20, 50, 8, 8, dtype=torch.bool)
    area[:, :, :4] = False
    g["conv2"].params["area"] = area
    g.verify()
    s = nestir.stats(g, compact=False)
    row = {r["name"]: r for r in s["layers"]}
    assert row["fc1"]["connections"] == 500 * 400
    assert row["conv2"]["flops"] == 3_200_000 // 2


def test_stats_of_a_lowered_module_counts_nonzero_weights():
    g = nestir.trace(LeNet300100(), torch.zeros(1, 1, 28, 28))
    g["fc1"].params["mask"][:, 100:] = False
    s = nestir.stats(g.to_torch())
    assert s["connections"] == nestir.stats(g)["connections"]
