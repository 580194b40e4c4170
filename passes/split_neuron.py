"""split-neuron: splitting steepest descent (Liu, Wang, Wu 2019), split where lambda_min(S_i) < 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from nestir.backends import dist
from nestir.ir.edit import add_neurons, follow
from nestir.ir.errors import PassError
from nestir.ir.graph import Graph, Node
from nestir.ir.groups import Group, GroupInfo
from nestir.ir.interpreter import IRModule
from nestir.ir.kinds import Op
from nestir.ir.ops import activation
from nestir.passes.split_eigen import min_eigen
from nestir.passinfra.base import Pass, PassContext, PassResult, register, select_layers

_PIECEWISE_LINEAR = {"relu", "leaky_relu", "relu6"}


def site(graph: Graph, info: GroupInfo, grp: Group) -> tuple[Node, Node | None, Node] | None:
    """(producer, optional BatchNorm, activation) when the group is one producer followed by an
    elementwise activation, else None."""
    if len(grp.producers) != 1 or grp.mixing or not grp.consumers:
        return None
    p = graph[grp.producers[0]]
    if p.op == Op.CONV and (p.attrs["groups"] != 1 or "area" in p.params):
        return None
    users = graph.users(p.name)
    bn = None
    if len(users) == 1 and users[0].op == Op.BATCHNORM:
        bn = users[0]
        users = graph.users(bn.name)
    if len(users) != 1 or users[0].op != Op.ACT:
        return None
    return p, bn, users[0]


def second_derivative(kind: str, attrs: dict, z: torch.Tensor, beta: float) -> torch.Tensor:
    """sigma''(z); piecewise-linear activations use the softplus surrogate beta*s*(1-s)."""
    if kind in _PIECEWISE_LINEAR:
        s = torch.sigmoid(beta * z)
        scale = 1.0 - float(attrs.get("slope", 0.0)) if kind == "leaky_relu" else 1.0
        return scale * beta * s * (1 - s)
    f = activation(kind, attrs)
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        (g1,) = torch.autograd.grad(f(zz).sum(), zz, create_graph=True)
        (g2,) = torch.autograd.grad(g1.sum(), zz)
    return g2


@register
@dataclass(frozen=True)
class SplitNeuron(Pass):
    """Split the ``count`` neurons per eligible layer whose splitting matrix
    S_i = E[g_i sigma''(theta_i^T x) x x^T] (g_i = dL/d output of neuron i) has the most negative
    minimum eigenvalue, into theta_i +- epsilon*||theta_i||*v_min, each with half the output
    weight: at epsilon=0 the function is exactly preserved, and for small epsilon the loss drops
    by about epsilon^2/2 * lambda_min. Eigenpairs are matrix-free (batched Lanczos on products
    S_i v computed with two matmuls for all neurons at once) unless d is small. theta includes
    the bias; a BatchNorm between producer and activation enters through its eval-mode scale.
    Eligible: a group with one producer (linear or conv) followed by an activation. Never removes."""

    count: int = 1
    epsilon: float = 0.1
    iterations: int = 8  # on a trained 784->300 layer: lambda_min to 4e-8 relative, vectors cos > 0.9999999
    beta: float = 4.0
    dense_limit: int = 64
    layers: str = ""
    name: ClassVar[str] = "split-neuron"
    effect: ClassVar[str] = "grow"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.count < 0 or self.epsilon < 0 or self.iterations < 1:
            raise PassError("split-neuron: count >= 0, epsilon >= 0 and iterations >= 1 required")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = ctx.require_data(self.name)
        info = graph.groups()
        sites = [s for g in info.resizable() if (s := site(graph, info, g)) is not None]
        wanted = select_layers(self.name, self.layers, graph)
        if wanted is not None:
            sites = [s for s in sites if s[0].name in wanted]
        if not sites or self.count == 0:
            return PassResult(graph, False, {"split": 0})
        scores = self.scores(graph, sites, data, ctx)
        shapes = {p.name: tuple(p.params["weight"].shape[1:]) for p, _, _ in sites}
        start, split = len(graph.journal), 0
        for (p, _bn, _act) in sites:
            lam, vec = scores[p.name]
            k = min(self.count, int((lam < 0).sum()))
            if k == 0:
                continue
            idx = torch.topk(-lam, k).indices
            vec = vec[idx]
            d = int(torch.tensor(shapes[p.name]).prod())
            # earlier splits in this run may have widened this layer's input: follow them
            w = follow(vec[:, :d].reshape(k, *shapes[p.name]), p.name, "weight", graph.journal[start:])
            vec = torch.cat([w.flatten(1), vec[:, d:]], 1)
            self._split(graph, p.name, idx, vec)
            split += k
        return PassResult(graph, split > 0, {"split": split})

    def scores(self, graph: Graph, sites, data, ctx: PassContext) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
        """lambda_min and its unit eigenvector (over [weights, bias]) for every neuron of each site."""
        mod = IRModule(graph).eval()
        values = {p.inputs[0] for p, _, _ in sites} | {a.name for _, _, a in sites} | {p.name for p, _, _ in sites}
        xs: dict[str, list] = {p.name: [] for p, _, _ in sites}
        coef: dict[str, list] = {p.name: [] for p, _, _ in sites}
        for xb, yb in data:
            capture = mod.start_capture(values)
            ctx.loss_fn()(mod(xb), yb).backward()
            cap = capture.value_tensors
            with torch.no_grad():
                for p, bn, act in sites:
                    x = _patches(p, cap[p.inputs[0]].detach())
                    z = cap[p.name].detach()
                    a = torch.ones(z.shape[1] if p.op == Op.CONV else z.shape[-1], device=z.device)
                    if bn is not None:
                        a = bn.params.get("weight", torch.ones_like(a)) / torch.sqrt(
                            bn.params["running_var"] + bn.attrs["eps"])
                        z = z * _bshape(a, p, z) + _bshape(
                            bn.params.get("bias", torch.zeros_like(a)) - bn.params["running_mean"] * a, p, z)
                    g = cap[act.name].grad
                    s2 = second_derivative(act.attrs["kind"], act.attrs, z, self.beta)
                    c = (g * s2) * _bshape(a * a, p, z)
                    coef[p.name].append(_rows(p, c))
                    xs[p.name].append(x)
        mod.capture = None
        mod.zero_grad(set_to_none=True)
        out = {}
        for p, _, _ in sites:
            X = torch.cat(xs[p.name]).float()
            if "bias" in p.params:
                X = torch.cat([X, torch.ones(X.shape[0], 1, device=X.device)], 1)
            C = torch.cat(coef[p.name]).float()
            out[p.name] = min_eigen(X, C, self.iterations, self.dense_limit, ctx.generator(f"split:{p.name}"),
                                    _sum_over_ranks)
        return out

    @torch.no_grad()
    def _split(self, graph: Graph, pname: str, idx: torch.Tensor, vec: torch.Tensor) -> None:
        info = graph.groups()
        grp = info.of(pname)
        p = graph[pname]
        w = p.params["weight"]
        has_b = "bias" in p.params
        theta = w.flatten(1)[idx]
        if has_b:
            theta = torch.cat([theta, p.params["bias"][idx, None]], 1)
        step = self.epsilon * theta.norm(dim=1, keepdim=True) * vec.to(theta.device, theta.dtype)
        plus, minus = theta + step, theta - step
        n = len(idx)
        d = w[0].numel()
        rows = {pname: {"weight": minus[:, :d].reshape(n, *w.shape[1:]), "mask": p.params["mask"][idx].clone()}}
        if has_b:
            rows[pname]["bias"] = minus[:, d]
        for name in grp.per_neuron:
            node = graph[name]
            (off, _r, _w), *_ = info.columns(name, grp.id)
            rows[name] = {k: t[off + idx].clone() for k, t in node.params.items()}
        cols = {}
        for c in grp.consumers:
            node = graph[c]
            (off, r, _w), *_ = info.columns(c, grp.id)
            sel = (off + idx[:, None] * r + torch.arange(r, device=idx.device)[None]).flatten()
            cols[c] = {"weight": node.params["weight"][:, sel] * 0.5, "mask": node.params["mask"][:, sel].clone()}
        add_neurons(graph, grp.id, n, rows=rows, cols=cols, info=info)
        w = p.params["weight"]
        w.view(w.shape[0], -1)[idx] = plus[:, :d].to(w.dtype)
        if has_b:
            p.params["bias"][idx] = plus[:, d]
        for c in grp.consumers:
            node = graph[c]
            (off, r, _w), *_ = info.columns(c, grp.id)
            sel = (off + idx[:, None] * r + torch.arange(r, device=idx.device)[None]).flatten()
            node.params["weight"][:, sel] *= 0.5


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    dist.all_sum([t])
    return t


def _patches(p: Node, x: torch.Tensor) -> torch.Tensor:
    """Rows of inputs each neuron sees: (samples, d); a conv's are its unfolded patches."""
    if p.op == Op.LINEAR:
        return x.reshape(-1, x.shape[-1])
    a = p.attrs
    if x.dim() == 3:
        x = x.unsqueeze(-1)
        k = (*p.params["weight"].shape[2:], 1)
        cols = F.unfold(x, k, (a["dilation"][0], 1), (a["padding"][0], 0), (a["stride"][0], 1))
    else:
        cols = F.unfold(x, tuple(p.params["weight"].shape[2:]), a["dilation"], a["padding"], a["stride"])
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows(p: Node, t: torch.Tensor) -> torch.Tensor:
    """Per-neuron coefficients as (samples, neurons), samples ordered like :func:`_patches`."""
    if p.op == Op.LINEAR:
        return t.reshape(-1, t.shape[-1])
    return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])


def _bshape(v: torch.Tensor, p: Node, z: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (z.dim() - 2))) if p.op == Op.CONV else v
