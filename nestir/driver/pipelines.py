"""The pass pipelines of the synthesis flow, built from its configuration: one growth step
(connections, bridging neurons, feature maps) and one pruning step of the chain."""

from __future__ import annotations

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


def pruning_pipeline(c: SynthConfig, graph: Graph) -> list[str]:
    prune = f"magnitude-prune:fraction={c.prune_fraction:.4f},scope={c.prune_scope}"
    if c.prune_neurons:
        prune += f",neuron_fraction={c.prune_neurons:.4f}"
    if c.prune_flops:
        prune += f",flops_fraction={c.prune_flops:.4f}"
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
