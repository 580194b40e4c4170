"""The pass pipelines of the synthesis flow, built from its configuration: one growth step
(connections, bridging neurons, feature maps) and one pruning step of the chain."""

from __future__ import annotations

import math
from typing import Any

from nestir.driver.config import SynthConfig
from nestir.ir.graph import Graph
from nestir.ir.stats import stats


def growth_pipeline(c: SynthConfig, graph: Graph) -> list[str]:
    ops = {n.op for n in graph.parametric()}
    params = stats(graph)["params"]
    # do not overshoot the budget S by much: the last step grows only what is left of it
    frac = min(c.grow_connections, max(0.0, (c.max_params - params) / max(1, params)))
    pipe = [f"grow-connection:fraction={frac:.4f},scope={c.grow_scope}"]
    if c.grow_neurons and "linear" in ops:
        pipe.append(f"bridge-neuron:count={c.grow_neurons},alpha=0.3,beta=0.01")
    if c.grow_maps and "conv" in ops:
        pipe.append(f"add-feature-map:count={c.grow_maps},candidates=8")
    return pipe


def flops_fraction(c: SynthConfig, start: tuple[int, int], now: tuple[int, int],
                   dense: tuple[int, int] | None) -> float:
    """The least fraction of its FLOPs the next pruning step cuts, given the (params, FLOPs) of the
    chain's start, of the current network and of the dense reference (None: none).

    ``prune_flops`` against ``prune_fraction`` sets a pace: FLOPs fall at log(1 - prune_flops) /
    log(1 - prune_fraction) (0.79) times the parameters' log-rate, counted from the dense
    reference. A chain that starts from the dense reference is on that pace at every step. A chain
    that starts from a grown network starts behind it (a grown LeNet-5 had 2.9x fewer parameters
    than dense and as many FLOPs, so a chain at 8% a step reached 231x fewer parameters with only
    20x fewer FLOPs): its steps cut twice ``prune_flops`` until the network is back on the pace."""
    f = c.prune_flops
    step = math.log1p(-c.prune_fraction) if 0 <= c.prune_fraction < 1 else 0.0  # the parameters' log-rate
    if not f or dense is None or step == 0 or min(*dense, *start, *now) <= 0:
        return f
    rho = math.log1p(-f) / step
    if not math.isfinite(rho):
        return f

    def behind(size: tuple[int, int]) -> float:  # log of FLOPs over what the pace allows at these parameters
        return math.log(size[1] / dense[1]) - rho * math.log(size[0] / dense[0])

    return min(2 * f, 0.5) if behind(start) > math.log(1.05) and behind(now) > 0 else f


def pruning_pipeline(c: SynthConfig, graph: Graph, flops: float | None = None) -> list[str]:
    """One step of the pruning chain. ``flops``: the step's FLOPs fraction (default
    ``c.prune_flops``; :func:`flops_fraction` says how much a chain behind its pace needs)."""
    prune = f"magnitude-prune:fraction={c.prune_fraction:.4f},scope={c.prune_scope}"
    if c.prune_neurons:
        prune += f",neuron_fraction={c.prune_neurons:.4f}"
    flops = c.prune_flops if flops is None else flops
    if flops:
        prune += f",flops_fraction={flops:.4f}"
    pipe = [prune]
    if c.partial_area and any(n.is_plain_conv for n in graph.parametric()):
        pipe.append(f"partial-area-mask:fraction={c.partial_area:.4f}")
    pipe.append("eliminate-dead-neurons")
    return pipe


def removed(infos: dict[str, Any]) -> int:
    """How many connections, neurons and positions a pruning pipeline removed (a step that reports
    ``magnitude-prune(connections=0, neurons=0)`` removed nothing: the chain ends there)."""
    return sum(v for info in infos.values() for v in info.values() if isinstance(v, int) and not isinstance(v, bool))


def summary(infos: dict[str, Any]) -> str:
    parts = []
    for name, info in infos.items():
        vals = ", ".join(f"{k}={v}" for k, v in info.items() if isinstance(v, int))
        if vals:
            parts.append(f"{name}({vals})")
    return "; ".join(parts)
