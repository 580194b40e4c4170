import blocks
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nestir
from nestir.driver.zoo import LeNet5, LeNet300100
from nestir.passes import resolve
from nestir.passinfra.base import PassContext
from nestir.testing import batch_for, graphs


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


def _check_pure_count(g):
    """stats() counts what eliminate-dead-neurons (without constant folding) leaves, without
    copying or changing the graph."""
    from nestir.ir.compact import eliminate_dead_neurons

    before = {n.name: {k: v.clone() for k, v in n.params.items()} for n in g}
    version = g.version
    s = nestir.stats(g)
    assert g.version == version
    for n in g:
        assert all(torch.equal(v, before[n.name][k]) for k, v in n.params.items())
    c = g.copy()
    eliminate_dead_neurons(c, fold_constants=False)
    ref = nestir.stats(c, compact=False)
    for key in ("params", "flops", "connections"):
        assert s[key] == ref[key], (key, s[key], ref[key])
    assert s["params"] <= nestir.stats(g, compact=False)["params"]


@given(graphs(sparse=True), st.integers(6, 19), st.integers(0, 10))
def test_counting_is_pure_and_matches_dead_neuron_elimination(g, twentieths, neuron_twentieths):
    fraction, neurons = twentieths / 20, neuron_twentieths / 20  # no float strategy: runs flush denormals
    prune = resolve([f"magnitude-prune:fraction={fraction:.3f},neuron_fraction={neurons:.3f}"])[0]
    prune.run(g, PassContext(data=[batch_for(g)]))
    _check_pure_count(g)


@pytest.mark.parametrize("block", [blocks.GroupedBlock, blocks.ChannelsLastBlock, blocks.TinyViT,
                                   blocks.ChannelSplitBlock, blocks.MixedGateBlock, blocks.ShuffleBlock,
                                   blocks.SelectiveKernelBlock, blocks.SplitAttnBlock])
def test_counting_is_pure_on_coupled_blocks(block):
    torch.manual_seed(0)
    m = block().eval()
    g = nestir.trace(m, torch.rand(2, 3, 8, 8))
    for n in g.parametric():  # kill the rows of a few neurons and the columns of others
        mask = n.params["mask"]
        mask.view(mask.shape[0], -1)[: max(1, mask.shape[0] // 4)] = False
        if mask.shape[1] > 2:
            mask[:, -1] = False
    _check_pure_count(g)
