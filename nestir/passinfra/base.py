"""Pass infrastructure: the pass base class, the registry, option parsing and the pass manager."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from nestir.ir.errors import PassError
from nestir.ir.graph import Graph

log = logging.getLogger(__name__)
Loss = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What scoring passes need: batches on the device (a list, or a :class:`nestir.driver.batches.Stream`
    that reads the user's loader one batch at a time), a loss, a device and a seed. Passes
    iterate over ``data`` (possibly more than once) and never index it; statistics they sum over
    it are summed over the ranks too (:mod:`nestir.backends.dist`) so that every rank edits alike."""

    data: Iterable[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    loss: Loss | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0

    def loss_fn(self) -> Loss:
        return self.loss or torch.nn.functional.cross_entropy

    def require_data(self, name: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self.data is None or (isinstance(self.data, (list, tuple)) and not self.data):
            raise PassError(f"pass '{name}' scores with gradients and needs data: "
                            "pass data=(inputs, targets) or an iterable of such batches")
        return self.data

    def generator(self, salt: str = "") -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + sum(map(ord, salt))) % (2**63))
        return g


@dataclass(frozen=True)
class Pass:
    """A graph transformation. Options are the dataclass fields; ``run`` edits the graph in place
    through :mod:`nestir.ir.edit` and returns ``PassResult(graph, modified)``.

    ``effect`` declares what the pass may do: ``"grow"`` never removes a connection or neuron,
    ``"prune"`` never adds one, ``"neutral"`` does neither; ``preserves_function`` says the
    lowered outputs are unchanged (with its default options)."""

    name: ClassVar[str] = ""
    effect: ClassVar[str] = "neutral"
    preserves_function: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, graph: Graph, ctx: PassContext | None = None) -> PassResult:
        """Run the pass held to its contract, as :class:`PassManager` holds every pass it runs: its
        data, the verifier after it, and its declared ``effect`` against what it did."""
        from nestir.ir.checks import check_batches, require_graph

        require_graph(graph, f"pass '{self.name}'")
        if ctx is not None and not isinstance(ctx, PassContext):
            raise PassError(f"pass '{self.name}': ctx must be a nestir.passes.PassContext, got {type(ctx).__name__}")
        ctx = ctx or PassContext()
        if self.needs_data and isinstance(ctx.data, (list, tuple)):  # a Stream checks batches as it reads them
            check_batches(ctx.data, graph, ctx.loss)
        if isinstance(self, PassManager):  # checks each of its passes itself
            return self.run(graph, ctx)
        return PassManager([self]).run(graph, ctx)

    def spec(self) -> str:
        opts = ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}:{opts}" if opts else self.name


def name_list(text: str) -> list[str]:
    """A list option such as ``layers``: names separated by ``+`` (usable inside a pipeline spec,
    where ``,`` separates options), ``,`` or ``;``."""
    return [s.strip() for s in re.split(r"[+,;]", text) if s.strip()]


def select_layers(pass_name: str, layers: str, graph: Graph) -> list[str] | None:
    """The parametric nodes a pass's ``layers`` option names, in its order (None when it is empty:
    every eligible layer). A name that is no parametric node of ``graph`` is refused, naming it:
    a typo must not silently select nothing."""
    if not layers:
        return None
    wanted = name_list(layers)
    known = {n.name for n in graph.parametric()}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise PassError(f"{pass_name}: no parametric node named {', '.join(missing)} (layers= names parametric "
                        f"nodes, e.g. {', '.join(sorted(known)[:4])})")
    return wanted


_REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    if not cls.name or cls.name in _REGISTRY:
        raise PassError(f"pass name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Pass]]:
    return dict(_REGISTRY)


def _convert(cls: type[Pass], key: str, value: Any) -> Any:
    """An option value from a spec string, converted to the type of the field's default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise PassError(f"pass '{cls.name}' has no option '{key}'; options: {', '.join(fields) or 'none'}")
    default = fields[key].default
    typ = type(default) if default is not dataclasses.MISSING and default is not None else str
    if not isinstance(value, str):
        return _check_value(cls, key, typ, value)
    text = value.strip().lower()
    try:
        if typ is bool:
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return text in ("1", "true", "yes")
        if typ is int:
            v = float(value)
            if not v.is_integer():
                raise ValueError(value)
            return _check_value(cls, key, typ, int(v))
        if typ is float:
            return _check_value(cls, key, typ, float(value))
    except (ValueError, OverflowError):
        raise PassError(f"pass '{cls.name}': option {key}={value!r} is not a valid {typ.__name__}") from None
    return value


MAX_COUNT = 1_000_000  # an integer option beyond this is a typo, not a plan (and would exhaust memory)
UNIT_OPTIONS = ("fraction", "neuron_fraction", "beta")  # fractions of something: in [0, 1]


def _check_value(cls: type[Pass], key: str, typ: type, value: Any) -> Any:
    """Refuse option values a pass cannot run with: wrong numeric type, NaN or infinite, a
    fraction outside [0, 1], a count beyond :data:`MAX_COUNT`."""
    bad = f"pass '{cls.name}': option {key}={value!r}"
    if typ in (int, float) and isinstance(value, bool):
        raise PassError(f"{bad} must be a number, not a bool")
    if typ is int and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise PassError(f"{bad} must be an integer")
        if abs(value) > MAX_COUNT:
            raise PassError(f"{bad} is out of range (at most {MAX_COUNT:,})")
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise PassError(f"{bad} must be a finite number")
        if key in UNIT_OPTIONS and not 0 <= value <= 1:
            raise PassError(f"{bad} must be in [0, 1]")
    return value


def get(name: str, **options: Any) -> Pass:
    """The registered pass ``name`` configured with ``options``."""
    if name not in _REGISTRY:
        hint = "" if _REGISTRY else " (import nestir.passes to register the built-in passes)"
        raise PassError(f"unknown pass '{name}'; registered: {', '.join(sorted(_REGISTRY)) or 'none'}{hint}")
    cls = _REGISTRY[name]
    kwargs = {k.replace("-", "_"): _convert(cls, k.replace("-", "_"), v) for k, v in options.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PassError(f"pass '{name}': {e}") from None


def parse(spec: str) -> Pass:
    """``"name:k=v,k2=v2"`` or ``"name{k=v k2=v2}"`` to a configured pass."""
    if not isinstance(spec, str):
        raise PassError(f"a pass spec must be a string like 'name:key=value', got {type(spec).__name__}")
    spec = spec.strip()
    m = re.fullmatch(r"([\w-]+)\s*(?:\{(.*)\}|:(.*))?", spec)
    if not m:
        raise PassError(f"cannot parse pass spec {spec!r}; expected NAME or NAME:key=value,...")
    name, body = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
    opts: dict[str, str] = {}
    for item in re.split(r"[,\s]+", body or ""):
        if not item:
            continue
        if "=" not in item:
            raise PassError(f"pass spec {spec!r}: option {item!r} is not key=value")
        k, v = item.split("=", 1)
        opts[k.strip()] = v.strip()
    return get(name, **opts)


def resolve(pipeline: Iterable[str | Pass] | str | Pass) -> list[Pass]:
    if isinstance(pipeline, (str, Pass)):
        pipeline = [pipeline]
    if not isinstance(pipeline, Iterable) or isinstance(pipeline, (bytes, dict)):
        raise PassError(f"pipeline must be a pass spec string, a pass, or a list of them; got {pipeline!r:.60}")
    out = []
    for item in pipeline:
        if isinstance(item, Pass):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse(item))
        else:
            raise PassError(f"a pipeline item must be a pass or a spec string, got {type(item).__name__}")
    return out


@dataclass(frozen=True)
class PassManager(Pass):
    """Runs passes in order and holds each to its contract (so managers nest):

    - before any pass runs, a pass that ``needs_data`` without data in the context is refused,
      naming it, so that a pipeline is never left half applied for want of data;
    - after each pass the verifier runs (``verify_each``) and the pass's declared ``effect`` is
      checked against what it did (``check_effects``): a grow pass that removed a connection or
      neuron, or a prune pass that added one, raises :class:`~nestir.ir.errors.PassContractError`;
    - ``check_function``: a pass that declares ``preserves_function`` must leave the outputs on
      the context's first batch unchanged (a forward pass before and after; off by default).

    Every failure names the pass and the passes that ran before it."""

    passes: Sequence[Pass] = ()
    verify_each: bool = True
    on_result: Callable[[Pass, PassResult], None] | None = None
    check_effects: bool = True
    check_function: bool = False
    name: ClassVar[str] = "pipeline"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from nestir.ir.errors import PassContractError, VerifyError
        from nestir.ir.verify import verify
        from nestir.passinfra.contracts import check_effect, live_state, where

        for p in _leaves(self.passes):
            if p.needs_data:
                ctx.require_data(p.name)
        modified, done = False, []
        for p in self.passes:
            at = where(p.spec(), done)
            nested = isinstance(p, PassManager)  # checks its own passes
            before = live_state(graph) if self.check_effects and not nested else None
            ref = self._outputs(graph, ctx) if self.check_function and p.preserves_function and not nested else None
            start = len(graph.journal)
            res = p.run(graph, ctx)
            graph = res.graph
            if self.verify_each:
                try:
                    verify(graph)
                except VerifyError as e:
                    raise VerifyError(e.node, f"{str(e).split(': ', 1)[-1]} (after {at})") from e
            if before is not None:
                check_effect(p.effect, at, before, graph, graph.journal[start:])
            if ref is not None:
                out = self._outputs(graph, ctx)
                scale = max(1.0, float(ref.abs().max()))
                if out.shape != ref.shape or float((out - ref).abs().max()) > 1e-4 * scale:
                    raise PassContractError(at, "declares preserves_function but its outputs on the first batch "
                                                "changed")
            log.info("%s: modified=%s %s", p.spec(), res.modified, res.info or "")
            if self.on_result is not None:
                self.on_result(p, res)
            modified |= res.modified
            done.append(p.spec())
        return PassResult(graph, modified)

    @staticmethod
    def _outputs(graph: Graph, ctx: PassContext) -> torch.Tensor:
        from nestir.ir.interpreter import IRModule

        xb = next(iter(ctx.require_data("pipeline")))[0]
        with torch.no_grad():
            out = IRModule(graph.copy()).eval()(xb)
        return (out[0] if isinstance(out, (tuple, list)) else out).detach().float().cpu()


def _leaves(passes: Sequence[Pass]) -> list[Pass]:
    out: list[Pass] = []
    for p in passes:
        out.extend(_leaves(p.passes) if isinstance(p, PassManager) else [p])
    return out
