"""Lowering to PyTorch: a compact torch.fx GraphModule of standard layers, masks baked in. Each
node lowers as its op definition says (:meth:`nestir.ir.opdefs.OpDef.to_torch`); this module walks
the graph and supplies the layers it chooses (dense or CSR linear, partial-area conv)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from nestir.backends.modules import CSRLinear, PartialAreaConv
from nestir.ir.errors import LoweringError
from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Op
from nestir.ir.opdefs import TorchLowering, opdef

# CSR is a candidate only for large, sparse layers; "auto" then times both on this machine.
# benchmarks/latency.py (784x300, batch 256): CSR lost at 50% and 20% density in every run, and
# went from 0.7x to 1.2x at 10% and from 1.05x to 2.25x at 2% between runs on a noisy machine.
CSR_MAX_DENSITY = 0.2
CSR_MIN_WEIGHTS = 50_000


def csr_is_faster(w: torch.Tensor, b: torch.Tensor | None, batch: int = 256, repeats: int = 7) -> bool:
    """Time a dense and a CSR version of the layer on a random batch; True when CSR wins."""
    import time

    dense = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        dense.weight.copy_(w)
    sparse = CSRLinear(w, b)
    x = torch.rand(batch, w.shape[1])
    times: dict[str, list[float]] = {"dense": [], "csr": []}
    with torch.no_grad():
        for i in range(repeats + 1):
            for k, m in (("dense", dense), ("csr", sparse)):
                t0 = time.perf_counter()
                m(x)
                if i:  # the first round warms up
                    times[k].append(time.perf_counter() - t0)
    return sorted(times["csr"])[repeats // 2] < sorted(times["dense"])[repeats // 2]


def prepare(graph: Graph, compact: bool) -> Graph:
    """A CPU copy of ``graph``; with ``compact``, dead neurons removed, layers the frontend cut into
    pieces fused back, and linear layers narrowed to the input columns they read (e.g. a crop to
    the live pixels)."""
    g = graph.copy().to("cpu")
    if compact:
        from nestir.ir.compact import eliminate_dead_neurons, fuse_pieces, narrow_dead_inputs

        eliminate_dead_neurons(g)
        while fuse_pieces(g):  # nested cuts fuse from the inside out
            pass
        narrow_dead_inputs(g)
    return g


class _Lowering(TorchLowering):
    def __init__(self, g: Graph, sparse: str, masks: bool = False) -> None:
        self.fg, self.root, self.g, self.sparse, self.masks = fx.Graph(), nn.Module(), g, sparse, masks

    def module(self, node: Node, mod: nn.Module, args: Any, kwargs: dict | None = None) -> Any:
        if self.masks:
            keep_mask(node, mod)
        return super().module(node, mod, args, kwargs)

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> nn.Module:
        """Dense, or CSR where ``sparse`` asks for it (``auto``: large, sparse and timed faster here)."""
        candidate = weight.numel() >= CSR_MIN_WEIGHTS and float(mask.float().mean()) <= CSR_MAX_DENSITY
        if self.sparse == "always" or (self.sparse == "auto" and candidate and csr_is_faster(weight, bias)):
            return CSRLinear(weight, bias)
        m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            m.weight.copy_(weight)
            if bias is not None:
                m.bias.copy_(bias)
        return m

    def partial_area_conv(self, node: Node, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        a = node.attrs
        return PartialAreaConv(weight, bias, node.params["area"], a["stride"], a["padding"], a["dilation"])


def keep_mask(node: Node, mod: nn.Module) -> None:
    """Attach ``node``'s connectivity mask to ``mod``'s weight the way ``torch.nn.utils.prune``
    does (``weight_orig``, ``weight_mask`` and a pre-forward hook): the pruned connections stay
    zero under any optimizer. Layers that store only their live weights (CSR) need none."""
    from torch.nn.utils import prune

    mask = node.params.get("mask")
    weight = getattr(mod, "weight", None)
    if mask is None or not isinstance(weight, nn.Parameter):
        return
    if tuple(mask.shape) != tuple(weight.shape):
        raise LoweringError(f"node '{node.name}' ({node.describe()}): its mask {tuple(mask.shape)} does not match "
                            f"the lowered weight {tuple(weight.shape)}, so masks=True cannot keep it; lower with "
                            "masks=False (pruned weights are zero, but training may make them non-zero)")
    prune.custom_from_mask(mod, "weight", mask.to(weight.device, torch.bool).to(weight.dtype))


def remove_masks(module: nn.Module) -> nn.Module:
    """Make the masks of a ``to_torch(masks=True)`` module permanent: each masked weight becomes a
    plain parameter holding its zeros (``torch.nn.utils.prune.remove``); returns ``module``."""
    from torch.nn.utils import prune

    for m in module.modules():
        for hook in list(getattr(m, "_forward_pre_hooks", {}).values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return module


def _emit(n: Node, low: _Lowering, env: dict[str, Any]) -> Any:
    args = [env[i] for i in n.inputs]
    if n.op == Op.INPUT:
        return low.fg.placeholder("input" if len(low.g.inputs) == 1 else n.name)
    if n.op == Op.OUTPUT:
        return low.fg.output(args[0] if n.attrs.get("structure") == "single" else tuple(args))
    return opdef(n.op).to_torch(low, n, args)


def lower_torch(graph: Graph, *, compact: bool = True, sparse: str = "never", masks: bool = False) -> fx.GraphModule:
    """A plain ``torch.fx.GraphModule`` computing the same function as ``graph`` (eval mode).

    Masks are baked into the weights; with ``compact`` neurons without live inputs/outputs are
    physically removed first. ``sparse``: ``"never"`` (dense layers), ``"auto"`` (for large linear
    layers at density <= 20%, whichever of dense and CSR weights times faster here), ``"always"``.
    ``masks``: also keep each weight's mask on its layer, ``torch.nn.utils.prune``-style
    (``weight_orig`` * ``weight_mask``), so that fine-tuning with any optimizer keeps the pruned
    connections at zero; :func:`remove_masks` makes them permanent."""
    if sparse not in ("never", "auto", "always"):
        raise LoweringError(f"sparse must be 'never', 'auto' or 'always', got {sparse!r}")
    g = prepare(graph, compact)
    low = _Lowering(g, sparse, masks)
    env: dict[str, Any] = {}
    for n in g:
        try:
            env[n.name] = _emit(n, low, env)
        except LoweringError:
            raise
        except Exception as e:
            raise LoweringError(f"node '{n.name}' ({n.describe()}) could not be lowered to torch: {e}") from e
    gm = fx.GraphModule(low.root, low.fg, g.name)
    gm.eval()
    gm.nestir_input_shapes = [tuple(n.shape or ())[1:] for n in g.inputs]  # type: ignore[assignment]
    return gm
