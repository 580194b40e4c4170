"""StructureSteps: the user's loop trains, nestir applies the structure steps between."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nestir
from nestir.ir.errors import ArgumentError, PassError


def data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n * 32, 20, generator=g)
    y = (x[:, :5].argmax(1))  # learnable
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n * 32, 32)]


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))


def train(module, batches, epochs=3):
    opt = torch.optim.Adam(module.parameters(), 1e-2)
    for _ in range(epochs):
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(module(x), y).backward()
            opt.step()


def test_user_loop_trains_between_prune_steps_and_the_graph_keeps_the_training():
    d = data()
    steps = nestir.StructureSteps(model(), torch.zeros(1, 20), data=d, schedule=nestir.prune_schedule(3, 0.3))
    seen = 0
    for module in steps:
        before = {k: v.detach().clone() for k, v in module.named_parameters()}
        train(module, d)
        # training the yielded module trained the graph (shared storage)
        assert any(not torch.equal(before[k], v) for k, v in module.named_parameters())
        seen += 1
    assert seen == 4 and steps.done == 3
    params = [r["params"] for r in steps.history]
    assert params == sorted(params, reverse=True) and params[-1] < 0.45 * params[0]
    # dormant connections are zero in the result, and the lowered module matches the graph
    for n in steps.graph.parametric():
        assert not n.params["weight"][~n.params["mask"]].any()
    x = d[0][0]
    torch.testing.assert_close(steps.graph.to_torch()(x), steps.module(x), rtol=1e-5, atol=1e-5)


def test_rewind_restores_the_graph_before_the_last_step_and_stops():
    d = data()
    steps = nestir.StructureSteps(model(), torch.zeros(1, 20), data=d, schedule=nestir.nest_schedule(1, 3))
    modules = iter(steps)
    train(next(modules), d)
    grown = next(modules)  # after the growth step
    size = nestir.stats(steps.graph)["params"]
    next(modules)  # after the first pruning step
    assert nestir.stats(steps.graph)["params"] < size
    steps.rewind()
    assert nestir.stats(steps.graph)["params"] == size and steps.done == 1
    assert list(modules) == []  # rewind stops the iteration
    assert grown is not None


def test_bad_schedules_are_refused_up_front():
    with pytest.raises(ArgumentError, match="schedule"):
        nestir.StructureSteps(model(), torch.zeros(1, 20), data=data(), schedule=[])
    with pytest.raises(PassError):
        nestir.StructureSteps(model(), torch.zeros(1, 20), data=data(), schedule=[["no-such-pass"]])
    with pytest.raises(ArgumentError, match="example_inputs"):
        nestir.StructureSteps(model(), data=data(), schedule=nestir.prune_schedule(1))
