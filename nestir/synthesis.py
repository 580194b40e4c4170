"""The NeST synthesis flow: a sparse seed grows (connections, neurons, feature maps) until it is
accurate enough or big enough, switches leaky ReLU to ReLU, then is pruned while it stays accurate.
Checkpointed after every step; resumable."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .backends.device import resolve_device
from .backends.train import Trainer, evaluate
from .data import Dataset, affine_augment
from .errors import NestirError
from .graph import Graph
from .passinfra import PassContext, PassManager, resolve
from .serialize import atomic_save, digest, graph_from_state, graph_state
from .stats import stats

log = logging.getLogger(__name__)


@dataclass
class SynthConfig:
    """Every knob of a synthesis run (all have defaults that work for the MNIST LeNets)."""

    max_params: int = 0  # S; 0: the dense architecture's size (zoo) or 2x the model's
    target_accuracy: float = 0.0  # A on the validation split; 0: the zoo default
    initial_epochs: int = 3
    epochs: int = 2  # training after each growth step
    shift_epochs: int = 3  # training after the leaky ReLU -> ReLU shift
    prune_epochs: int = 3  # retraining after each pruning step
    max_growth_steps: int = 20
    max_prune_steps: int = 60
    grow_connections: float = 1.0  # grow-connection fraction (of live connections) per growth step
    grow_neurons: int = 30  # bridge-neuron count per FC layer per growth step
    grow_maps: int = 4  # add-feature-map count per conv layer per growth step
    grow_scope: str = "layer"  # grow-connection: top fraction per layer, or "global" across layers
    prune_fraction: float = 0.15  # magnitude-prune fraction per pruning step
    prune_neurons: float = 0.05  # magnitude-prune neuron_fraction per pruning step
    partial_area: float = 0.1  # partial-area-mask fraction per pruning step (convs; 0: off)
    batch_size: int = 64
    lr: float = 2e-3
    prune_lr: float = 1e-3
    augment: bool = False
    seed: int = 0
    score_batches: int = 4
    recover_epochs: int = 4  # extra epochs (after the shift or a pruning step) while below the target
    min_prune_scale: float = 0.1  # stop pruning when steps have been halved below this
    weight_decay: float = 5e-5  # L2 (through Adam): unused weights fade, so pruning finds them
    anneal: bool = True  # cosine learning-rate decay within the shift and pruning stints

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Reporter(Protocol):
    def phase(self, name: str, total: int | None = None) -> None: ...
    def epoch(self, done: int, total: int, loss: float) -> None: ...
    def step(self, row: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...


class _Silent:
    def phase(self, name: str, total: int | None = None) -> None:
        log.info("phase %s", name)

    def epoch(self, done: int, total: int, loss: float) -> None:
        pass

    def step(self, row: dict[str, Any]) -> None:
        log.info("step %s", row)

    def message(self, text: str) -> None:
        log.warning("%s", text)


@dataclass
class RunState:
    phase: str = "start"  # start, grow, shift, prune, done
    step: int = 0
    epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = 0.0
    target: float = 0.0
    target_reached: bool = True
    prune_scale: float = 1.0  # halved when a pruning step misses the target, x1.5 when one meets it
    growth_stopped: str = ""
    wall: float = 0.0


class Synthesizer:
    """Runs NeST on ``graph`` with ``train``/``val`` data; writes ``out/checkpoint.pt`` after
    every step. ``resume`` continues from that checkpoint."""

    def __init__(self, graph: Graph, train: Dataset, val: Dataset, cfg: SynthConfig, out: str,
                 device: str | None = None, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.out = out
        self.dev = resolve_device(device)
        self.train_d = train.to(self.dev)
        self.val_d = val.to(self.dev)
        self.rep = reporter or _Silent()
        self.state = RunState(target=cfg.target_accuracy)
        self.trainer = Trainer(graph, device=self.dev, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.best: Graph | None = None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.max_params and stats(graph)["params"] > cfg.max_params:
            raise NestirError(f"the budget --max-params {cfg.max_params} is smaller than the seed "
                              f"({stats(graph)['params']} params): raise it or start from a smaller seed")
        if not 0 < cfg.target_accuracy <= 1:
            raise NestirError(f"target accuracy must be in (0, 1], got {cfg.target_accuracy}")

    @property
    def graph(self) -> Graph:
        return self.trainer.graph

    # -- training and measuring ------------------------------------------------------------
    def _train(self, epochs: int, label: str, anneal: bool = False) -> None:
        """``epochs`` of training; with ``anneal`` the learning rate follows a cosine from its
        value down to a tenth of it over the stint (and is restored afterwards)."""
        self.rep.phase(label, epochs)
        base = self.trainer.lr
        for e in range(epochs):
            if anneal and self.cfg.anneal:
                self.trainer.set_lr(base * (0.1 + 0.45 * (1 + math.cos(math.pi * e / max(1, epochs)))))
            x, y = self.train_d.x, self.train_d.y
            if self.cfg.augment:
                x = affine_augment(x, self.gen)
            loss = self.trainer.epoch(x, y, self.cfg.batch_size, generator=self.gen)
            self.state.epochs += 1
            self.rep.epoch(e + 1, epochs, loss)
        self.trainer.set_lr(base)

    def _val(self) -> float:
        return evaluate(self.graph, self.val_d.x, self.val_d.y, device=self.dev).error

    def _record(self, phase: str, note: str = "") -> dict[str, Any]:
        s = stats(self.graph)
        err = self._val()
        row = {"step": len(self.state.history), "phase": phase, "params": s["params"], "flops": s["flops"],
               "val_error": err, "epochs": self.state.epochs, "seconds": round(self.state.wall + self._lap(), 2),
               "note": note}
        self.state.history.append(row)
        self.rep.step(row)
        return row

    def _lap(self) -> float:
        return time.perf_counter() - self._t0

    def _ctx(self) -> PassContext:
        k = self.cfg.score_batches * self.cfg.batch_size * 2
        idx = torch.randperm(self.train_d.x.shape[0], generator=self.gen)[:k].to(self.dev)
        x, y = self.train_d.x[idx], self.train_d.y[idx]
        bs = self.cfg.batch_size * 2
        data = [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]
        return PassContext(data=data, device=self.dev, seed=self.cfg.seed + len(self.state.history))

    def _apply(self, pipeline: list[str]) -> dict[str, Any]:
        passes = resolve(pipeline)
        infos: dict[str, Any] = {}
        PassManager(passes, on_result=lambda p, r: infos.__setitem__(p.name, r.info)).run(self.graph, self._ctx())
        self.trainer.rebuild()
        return infos

    # -- the flow --------------------------------------------------------------------------------
    def growth_pipeline(self) -> list[str]:
        c = self.cfg
        ops = {n.op for n in self.graph.parametric()}
        params = stats(self.graph)["params"]
        # do not overshoot the budget S by much: the last step grows only what is left of it
        frac = min(c.grow_connections, max(0.0, (c.max_params - params) / max(1, params)))
        pipe = [f"grow-connection:fraction={frac:.4f},scope={c.grow_scope}"]
        if c.grow_neurons and "linear" in ops:
            pipe.append(f"bridge-neuron:count={c.grow_neurons},alpha=0.3,beta=0.01")
        if c.grow_maps and "conv" in ops:
            pipe.append(f"add-feature-map:count={c.grow_maps},candidates=8")
        return pipe

    def pruning_pipeline(self) -> list[str]:
        c, k = self.cfg, self.state.prune_scale
        pipe = [f"magnitude-prune:fraction={c.prune_fraction * k:.4f},neuron_fraction={c.prune_neurons * k:.4f}"]
        if c.partial_area and any(n.op == "conv" and n.attrs["groups"] == 1 for n in self.graph.parametric()):
            pipe.append(f"partial-area-mask:fraction={c.partial_area * k:.4f}")
        pipe.append("eliminate-dead-neurons")
        return pipe

    def run(self) -> RunState:
        self._t0 = time.perf_counter()
        st, c = self.state, self.cfg
        if st.phase == "start":
            self._train(c.initial_epochs, "seed training")
            st.phase = "grow"
            self._record("seed")
            self.checkpoint()
        while st.phase == "grow":
            row = st.history[-1]
            if 1 - row["val_error"] >= st.target:
                st.growth_stopped = "target accuracy reached"
            elif row["params"] >= c.max_params:
                st.growth_stopped = "size budget reached"
            elif st.step >= c.max_growth_steps:
                st.growth_stopped = "growth step limit reached"
            if st.growth_stopped:
                st.phase = "shift"
                self.checkpoint()
                break
            infos = self._apply(self.growth_pipeline())
            self._train(c.epochs, f"growth step {st.step + 1}", anneal=True)
            st.step += 1
            self._record("grow", _summary(infos))
            self.checkpoint()
        if st.phase == "shift":
            self._apply(["shift-activation:to=relu"])
            self._train(c.shift_epochs, "activation shift", anneal=True)
            extra = self._recover(st.target)
            row = self._record("shift", "leaky ReLU -> ReLU" + (f", {extra} recovery epochs" if extra else ""))
            acc = 1 - row["val_error"]
            if acc < st.target:
                st.target_reached = False
                self.rep.message(f"target accuracy {st.target:.2%} was not reached (best after growth "
                                 f"{acc:.2%}; {st.growth_stopped}); pruning keeps {acc:.2%} instead")
                st.target = acc
            self._keep_best(acc)
            st.phase, st.step = "prune", 0
            self.trainer.set_lr(c.prune_lr)
            self.checkpoint()
        while st.phase == "prune":
            if st.step >= c.max_prune_steps or st.prune_scale < c.min_prune_scale:
                st.phase = "done"
                break
            infos = self._apply(self.pruning_pipeline())
            self._train(c.prune_epochs, f"pruning step {st.step + 1}", anneal=True)
            extra = self._recover(st.target)
            st.step += 1
            row = self._record("prune", _summary(infos) + (f"; {extra} recovery epochs" if extra else ""))
            if 1 - row["val_error"] >= st.target:
                self._keep_best(1 - row["val_error"])
                st.prune_scale = min(1.0, st.prune_scale * 1.5)  # it worked: take bigger steps again
            else:
                # too much at once: go back to the last network that met A and prune less
                st.prune_scale /= 2
                if self.best is not None:
                    self.trainer = Trainer(self.best.copy(), device=self.dev, lr=c.prune_lr,
                                           weight_decay=c.weight_decay)
                self.rep.message(f"validation accuracy {1 - row['val_error']:.2%} < target {st.target:.2%}: "
                                 f"back to the last network that met it, step size x{st.prune_scale:g}")
            self.checkpoint()
        if self.best is not None:
            self.trainer = Trainer(self.best.copy(), device=self.dev, lr=c.prune_lr, weight_decay=c.weight_decay)
        st.phase = "done"
        self.checkpoint()
        return st

    def _recover(self, target: float) -> int:
        """Train one epoch at a time, at most ``recover_epochs``, while validation accuracy is
        below ``target``; returns the epochs spent."""
        extra = 0
        while extra < self.cfg.recover_epochs and 1 - self._val() < target:
            self._train(1, "recovery")
            extra += 1
        return extra

    def _keep_best(self, acc: float) -> None:
        self.best = self.graph.copy()
        self.state.best_val = acc

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        st = self.state
        st.wall += self._lap()
        self._t0 = time.perf_counter()
        opt = {k: {sk: sv.cpu() if isinstance(sv, torch.Tensor) else sv
                   for sk, sv in self.trainer.optimizer.state.get(p, {}).items()}
               for k, p in self.trainer.module.params.items()}
        ck = {"format": "nestir-checkpoint", "config": self.cfg.to_dict(), "state": dataclasses.asdict(st),
              "graph": graph_state(self.graph), "best": graph_state(self.best) if self.best is not None else None,
              "optimizer": opt, "lr": self.trainer.lr, "rng": self.gen.get_state()}
        ck["sha256"] = _checksum(ck)
        atomic_save(ck, os.path.join(self.out, "checkpoint.pt"))

    @classmethod
    def resume(cls, out: str, train: Dataset, val: Dataset, device: str | None = None,
               reporter: Reporter | None = None) -> Synthesizer:
        path = os.path.join(out, "checkpoint.pt")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise NestirError(f"nothing to resume: '{path}' does not exist") from None
        except Exception as e:
            raise NestirError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}); "
                              "start a new run") from None
        if not isinstance(ck, dict) or ck.get("format") != "nestir-checkpoint":
            raise NestirError(f"'{path}' is not a nestir checkpoint")
        if ck.get("sha256") != _checksum(ck):
            raise NestirError(f"checkpoint '{path}' failed its integrity check (SHA-256 mismatch); start a new run")
        cfg = SynthConfig(**ck["config"])
        g = graph_from_state(ck["graph"])
        g.verify()
        self = cls(g, train, val, cfg, out, device, reporter)
        self.state = RunState(**ck["state"])
        self.best = graph_from_state(ck["best"]) if ck["best"] is not None else None
        self.trainer.set_lr(ck["lr"])
        for k, p in self.trainer.module.params.items():
            s = ck["optimizer"].get(k)
            if s:
                self.trainer.optimizer.state[p] = {sk: sv.to(self.dev) if isinstance(sv, torch.Tensor) and sv.dim()
                                                   else sv for sk, sv in s.items()}
        self.gen.set_state(ck["rng"])
        return self


def _checksum(ck: dict[str, Any]) -> str:
    nodes = ck["graph"]["nodes"] + (ck["best"]["nodes"] if ck["best"] is not None else [])
    return digest(nodes, {"config": ck["config"], "state": ck["state"]})


def _summary(infos: dict[str, Any]) -> str:
    parts = []
    for name, info in infos.items():
        vals = ", ".join(f"{k}={v}" for k, v in info.items() if isinstance(v, int))
        if vals:
            parts.append(f"{name}({vals})")
    return "; ".join(parts)


def sparsify_seed(graph: Graph, density: float, seed: int) -> None:
    """Random sparse masks at ``density`` where every neuron keeps at least one input and one
    output connection (no islands, as NeST requires of its seeds)."""
    if not 0 < density <= 1:
        raise NestirError(f"--seed-density must be in (0, 1], got {density}")
    if density == 1:
        return
    gen = torch.Generator().manual_seed(seed)
    for n in graph.parametric():
        m = n.params["mask"]
        keep = torch.rand(m.shape, generator=gen) < density
        rows = keep.flatten(1)
        dead_rows = ~rows.any(1)
        if dead_rows.any():
            pick = torch.randint(0, rows.shape[1], (int(dead_rows.sum()),), generator=gen)
            rows[dead_rows.nonzero().flatten(), pick] = True
        keep = rows.view_as(m)
        cols = keep.transpose(0, 1).flatten(1)
        dead_cols = ~cols.any(1)
        if dead_cols.any():
            pick = torch.randint(0, cols.shape[1], (int(dead_cols.sum()),), generator=gen)
            cols[dead_cols.nonzero().flatten(), pick] = True
            keep = cols.view(m.shape[1], m.shape[0], *m.shape[2:]).transpose(0, 1)
        n.params["mask"] = keep.contiguous().to(m.device)
        n.params["weight"] = n.params["weight"] * n.params["mask"]
