"""The pass pipelines of the synthesis flow: the pruning chain's FLOPs pace."""

import re

import torch

import nestir
from nestir.driver.config import SynthConfig
from nestir.driver.pipelines import flops_fraction, pruning_pipeline
from nestir.driver.zoo import LeNet300100

DENSE = (430_000, 2_300_000)  # a conv network: FLOPs are not proportional to parameters


def test_a_chain_from_the_dense_reference_keeps_the_configured_pace():
    c = SynthConfig()
    assert flops_fraction(c, DENSE, DENSE, DENSE) == c.prune_flops
    # ten steps on: parameters 0.9^10, FLOPs 0.92^10 of dense: on the pace, no extra cut
    now = (int(DENSE[0] * 0.9 ** 10), int(DENSE[1] * 0.92 ** 10))
    assert flops_fraction(c, DENSE, now, DENSE) == c.prune_flops


def test_a_chain_from_a_grown_network_catches_up_with_the_pace_and_then_slows():
    c = SynthConfig()
    grown = (DENSE[0] // 3, DENSE[1])  # fewer parameters, as many FLOPs: behind the pace
    assert flops_fraction(c, grown, grown, DENSE) == 2 * c.prune_flops
    # caught up: FLOPs at the pace for these parameters
    rho = 0.7913
    p = DENSE[0] // 20
    caught = (p, int(0.99 * DENSE[1] * (p / DENSE[0]) ** rho))
    assert flops_fraction(c, grown, caught, DENSE) == c.prune_flops
    # without a dense reference, or with the FLOPs rule off, nothing changes
    assert flops_fraction(c, grown, grown, None) == c.prune_flops
    off = SynthConfig(prune_flops=0.0)
    assert flops_fraction(off, grown, grown, DENSE) == 0.0
    # a pruning fraction too small to move the parameters (found by tests/cli/test_fuzz_run_dir.py): no pace
    assert flops_fraction(SynthConfig(prune_fraction=0.0), grown, grown, DENSE) == c.prune_flops
    assert flops_fraction(SynthConfig(prune_fraction=1.175494351e-38), grown, grown, DENSE) in (0.08, 0.16)


def test_a_fully_connected_network_is_never_behind():
    """FLOPs proportional to parameters: a smaller network is ahead of the pace."""
    c = SynthConfig()
    dense = (266_610, 266_200)
    grown = (100_000, 99_850)
    assert flops_fraction(c, grown, grown, dense) == c.prune_flops


def test_the_pipeline_carries_the_step_fraction():
    g = nestir.trace(LeNet300100(), torch.zeros(2, 1, 28, 28))
    c = SynthConfig()
    assert re.search(r"flops_fraction=0\.0800", pruning_pipeline(c, g)[0])
    assert re.search(r"flops_fraction=0\.1600", pruning_pipeline(c, g, 0.16)[0])
    assert "flops_fraction" not in pruning_pipeline(SynthConfig(prune_flops=0.0), g)[0]
