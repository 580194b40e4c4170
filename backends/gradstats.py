"""Gradient statistics for growth passes, streamed over batches on the device.

The connection score of Policy 1 is the dense gradient of the loss with respect to the
*effective* (masked) weight: autograd computes exactly sum_batch delta^T x for it, dormant entries
included, so scoring costs one backward pass. The bridge matrices of Policy 2 are
G = sum_batch delta_{l+1}^T x_{l-1}, one matmul per (consumer, producer) pair. Accumulators are
fp32 on the device: memory O(parameters), independent of the number of batches.

Under an initialised ``torch.distributed`` process group the sums and the batch count are summed
over the ranks before averaging: every rank gets the statistics of the union of the ranks'
batches (the same as one process reading them all), and so takes the same pass decisions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nestir.backends import dist
from nestir.ir.graph import Graph
from nestir.ir.interpreter import IRModule

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GradStats:
    loss: float = 0.0
    batches: int = 0
    weight_grad: dict[str, torch.Tensor] = field(default_factory=dict)
    bridge: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def collect(
    graph: Graph,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss: Loss | None = None,
    *,
    weights: Iterable[str] | None = None,
    bridges: Iterable[tuple[str, str]] = (),
    module: IRModule | None = None,
) -> GradStats:
    """Average over ``data`` of the dense weight gradients of ``weights`` (default: every
    parametric node) and of the bridge matrices for each ``(consumer, producer)`` pair of linear
    nodes. Runs in eval mode: no dropout, and BatchNorm statistics are not updated."""
    loss_fn = loss or F.cross_entropy
    mod = module or IRModule(graph)
    was_training = mod.training
    mod.eval()
    names = set(weights) if weights is not None else {n.name for n in graph.parametric()}
    pairs = list(bridges)
    values = {graph[p].inputs[0] for _, p in pairs} | {c for c, _ in pairs}
    st = GradStats()
    try:
        for xb, yb in data:
            cap = mod.start_capture(values, names)
            lv = loss_fn(mod(xb), yb)
            lv.backward()
            with torch.no_grad():
                for name, leaf in cap.weight_leaves.items():
                    g = leaf.grad.float()
                    st.weight_grad[name] = st.weight_grad[name] + g if name in st.weight_grad else g.clone()
                for c, p in pairs:
                    delta = cap.value_tensors[c].grad
                    x = cap.value_tensors[graph[p].inputs[0]]
                    gm = _flat(delta).float().T @ _flat(x).float()
                    st.bridge[(c, p)] = st.bridge[(c, p)] + gm if (c, p) in st.bridge else gm
            st.loss += float(lv.detach())
            st.batches += 1
    finally:
        mod.capture = None
        mod.zero_grad(set_to_none=True)
        mod.train(was_training)
    if dist.active():
        # a rank without batches still takes part, with zeros of the right shapes
        for name in sorted(names):
            if name not in st.weight_grad:
                w = graph[name].params["weight"]
                st.weight_grad[name] = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for c, p in pairs:
            if (c, p) not in st.bridge:
                rows, cols = graph[c].shape[-1], graph[graph[p].inputs[0]].shape[-1]  # type: ignore[index]
                st.bridge[(c, p)] = torch.zeros((rows, cols), device=graph[c].params["weight"].device)
        keys = sorted(st.weight_grad)
        bkeys = sorted(st.bridge)
        count = torch.tensor([st.loss, float(st.batches)], dtype=torch.float64)
        dist.all_sum([count])
        dist.all_sum([*(st.weight_grad[k] for k in keys), *(st.bridge[k] for k in bkeys)])  # fp32
        st.loss, st.batches = float(count[0]), int(count[1])
    k = max(1, st.batches)
    st.loss /= k
    for d in (st.weight_grad, st.bridge):
        for key in d:
            d[key] /= k
    return st
