"""The NeST synthesis flow: a sparse seed grows (connections, neurons, feature maps) until it is
accurate enough or big enough, switches leaky ReLU to ReLU, then is pruned along a chain of ever
smaller networks; a scan of the chain from its most pruned end, judging each step after a trial
refit (pooled with the more pruned steps judged before it), keeps the first network, the smallest,
that passes the acceptance rule. Checkpointed after every step; resumable."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from nestir.backends import dist
from nestir.backends.device import resolve_device
from nestir.backends.train import Trainer, evaluate
from nestir.driver.data import Splits
from nestir.driver.decide import paired, pooled
from nestir.driver.recipe import Recipe, Reporter, SoftTargets, stint
from nestir.driver.rundir import clear_chain
from nestir.ir.edit import set_mask
from nestir.ir.errors import ArgumentError, NestirError
from nestir.ir.graph import Graph
from nestir.ir.serialize import atomic_save, digest_tree, graph_from_state, graph_state
from nestir.ir.stats import stats
from nestir.passes import resolve
from nestir.passinfra.base import MAX_COUNT, PassContext, PassManager

log = logging.getLogger(__name__)

MAX_TEACHERS = 16
MAX_EPOCHS = 100_000  # per stint: anything above is a typo, refused before work starts


# Pruning only runs what practitioners run: unstructured global magnitude pruning, 20% per step.
# NeST's partial-area masks are off by default for both methods (``--partial-area F`` turns them on):
# measured on LeNet-5 (benchmarks/results/pareto.md and lenet5_partial_area_off.md), 10% per step cost
# enough accuracy that the selection stopped at 2-3x, against 12-15x without them.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"prune": {"partial_area": 0.0, "prune_neurons": 0.0}}


@dataclass
class SynthConfig:
    """Every knob of a synthesis run (all have defaults that work for the MNIST LeNets)."""

    method: str = "nest"  # "nest": grow, shift, prune; "prune": pruning only, from the dense reference
    max_params: int = 0  # S; 0: the dense architecture's size (zoo) or 2x the model's
    max_flops: int = 0  # growth's FLOPs budget; 0: the dense reference's FLOPs (none without a reference)
    target_accuracy: float = 0.0  # A on the validation split; 0: decide by paired comparison with the dense reference
    initial_epochs: int = 3
    epochs: int = 2  # training after each growth step
    shift_epochs: int = 20  # training after the leaky ReLU -> ReLU shift (the grown network converges)
    prune_epochs: int = 3  # retraining after each pruning step of the chain
    trial_epochs: int = 20  # the trial refit (on train) of a chain network before it is judged
    max_trials: int = 10  # selection scan: one chain step at a time for this many, then striding 2, 4, ...
    final_epochs: int = 80  # the final training of the chosen network (on train)
    max_growth_steps: int = 20
    growth_patience: int = 2  # stop growing when this many steps in a row did not improve validation error
    max_prune_steps: int = 40  # the longest pruning chain
    max_compression: float = 400.0  # the chain stops at this many times fewer parameters than its start
    chain_slack: float = 0.015  # ... or after 2 networks in a row this much less accurate (before refit)
    scan_slack: float = 0.01  # the selection scan starts at the most pruned step at most this much less
    # accurate than the reference before its refit (measured: a trial refit recovers 0-0.6 pts)
    grow_connections: float = 1.0  # grow-connection fraction (of live connections) per growth step
    grow_neurons: int = 30  # bridge-neuron count per FC layer per growth step
    grow_maps: int = 4  # add-feature-map count per conv layer per growth step
    grow_scope: str = "layer"  # grow-connection: top fraction per layer, or "global" across layers
    prune_fraction: float = 0.2  # magnitude-prune fraction per pruning step
    prune_neurons: float = 0.0  # magnitude-prune neuron_fraction per pruning step
    prune_flops: float = 0.2  # magnitude-prune flops_fraction: FLOPs fall at least this much per step (convs)
    prune_scope: str = "global"  # magnitude-prune: across layers, or "layer" (the same fraction of each)
    partial_area: float = 0.0  # partial-area-mask fraction per pruning step (convs; 0: off, the default)
    batch_size: int = 64
    epoch_samples: int = Recipe.epoch_samples  # an epoch: a pass over train, or a random draw of this many when it
    # holds more (0: always a full pass); every budget in epochs is then one in samples on large data
    lr: float = 2e-3
    prune_lr: float = 1e-3
    augment: bool = False
    seed: int = 0
    score_batches: int = 4
    recover_epochs: int = 4  # extra epochs after the shift while it is not accepted
    weight_decay: float = 5e-5  # L2 (through Adam): unused weights fade, so pruning finds them
    anneal: bool = True  # cosine learning-rate decay within the shift and pruning stints
    distill: float = 0.7  # weight of the dense reference's soft targets in the loss (0: labels only)
    temperature: float = 4.0  # distillation temperature
    teachers: int = 1  # dense networks (seeds) whose averaged soft targets every stint distils from;
    # the first is the reference every decision compares with and the report's baseline
    confidence: float = 1.0  # z of the one-sided bound in the paired acceptance rule
    tolerance: float = 0.0025  # accepted error above the dense reference (fraction), at that bound
    fallback_dense: bool = True  # grown network worse than dense beyond the tolerance: prune the dense reference
    # a size target (0: none): the chain prunes until a network has at most this many parameters /
    # FLOPs, and the selection keeps the least pruned one within it (its accuracy is reported, not judged)
    target_params: int = 0
    target_flops: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_method(cls, method: str, **kw: Any) -> SynthConfig:
        """The defaults of ``method`` ("nest" or "prune"), overridden by ``kw``."""
        return cls(**{**METHOD_DEFAULTS.get(method, {}), "method": method, **kw})

    def recipe(self) -> Recipe:
        return Recipe(batch_size=self.batch_size, epoch_samples=self.epoch_samples, augment=self.augment,
                      anneal=self.anneal, alpha=self.distill,
                      temperature=self.temperature)

    def check(self) -> None:
        """Refuse options that cannot work before any work starts."""
        if self.method not in ("nest", "prune"):
            raise ArgumentError(f"method must be 'nest' or 'prune', got {self.method!r}")
        for name in ("prune_fraction", "prune_neurons", "prune_flops", "partial_area", "distill"):
            v = getattr(self, name)
            if not (0 <= v < 1):
                raise ArgumentError(f"{name.replace('_', '-')} must be in [0, 1), got {v}")
        for name in ("lr", "prune_lr", "temperature"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ArgumentError(f"{name.replace('_', '-')} must be a positive number, got {v}")
        for name in ("initial_epochs", "epochs", "shift_epochs", "prune_epochs", "final_epochs", "trial_epochs",
                     "max_growth_steps", "max_prune_steps", "recover_epochs", "grow_neurons", "grow_maps",
                     "max_flops", "target_params", "target_flops"):
            if getattr(self, name) < 0:
                raise ArgumentError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("initial_epochs", "epochs", "shift_epochs", "prune_epochs", "final_epochs", "trial_epochs",
                     "recover_epochs"):
            if getattr(self, name) > MAX_EPOCHS:
                raise ArgumentError(f"{name.replace('_', '-')} {getattr(self, name)} is out of range "
                                  f"(at most {MAX_EPOCHS:,})")
        for name in ("grow_neurons", "grow_maps"):  # else refused only after the dense reference trained
            if getattr(self, name) > MAX_COUNT:
                raise ArgumentError(f"{name.replace('_', '-')} {getattr(self, name)} is out of range (at most "
                                  f"{MAX_COUNT:,} per layer and step)")
        ta = self.target_accuracy
        if ta != 0 and not (math.isfinite(ta) and 0 < ta <= 1):
            raise ArgumentError(f"target-accuracy must be in (0, 1] (default 0: the paired rule), got {ta}")
        if self.epoch_samples < 0:
            raise ArgumentError(f"epoch-samples must be >= 0 (0: every epoch a full pass), got {self.epoch_samples}")
        if self.batch_size < 1:
            raise ArgumentError(f"batch-size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.confidence) and self.confidence >= 0):
            raise ArgumentError(f"confidence must be a z-value >= 0, got {self.confidence}")
        if not (math.isfinite(self.tolerance) and 0 <= self.tolerance < 1):
            raise ArgumentError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not (math.isfinite(self.max_compression) and self.max_compression >= 1):
            raise ArgumentError(f"max-compression must be >= 1, got {self.max_compression}")
        if not (math.isfinite(self.chain_slack) and 0 < self.chain_slack <= 1):
            raise ArgumentError(f"chain-slack must be in (0, 1], got {self.chain_slack}")
        if not (math.isfinite(self.scan_slack) and 0 < self.scan_slack <= 1):
            raise ArgumentError(f"scan-slack must be in (0, 1], got {self.scan_slack}")
        if not 1 <= self.teachers <= MAX_TEACHERS:
            raise ArgumentError(f"teachers must be between 1 and {MAX_TEACHERS}, got {self.teachers}")
        if self.max_trials < 1:
            raise ArgumentError(f"max-trials must be >= 1, got {self.max_trials}")
        if self.prune_scope not in ("layer", "global"):
            raise ArgumentError(f"prune-scope must be 'layer' or 'global', got {self.prune_scope!r}")


class _Silent:
    def phase(self, name: str, total: int | None = None) -> None:
        log.info("phase %s", name)

    def epoch(self, done: int, total: int, loss: float) -> None:
        pass

    def step(self, row: dict[str, Any]) -> None:
        log.info("step %s", row)

    def message(self, text: str) -> None:
        (log.warning if dist.is_main() else log.info)("%s", text)  # once per run, not once per rank


@dataclass
class RunState:
    phase: str = "start"  # start, grow, shift, prune, select, refit, done
    step: int = 0
    epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = 0.0
    best_row: int = -1  # the history row of the network kept (the last one accepted)
    target: float = 0.0
    target_reached: bool = True
    chain: list[dict[str, Any]] = field(default_factory=list)  # the pruning chain's snapshots (file, digest)
    lo: int = 0  # selection: the chain index accepted (0: none smaller than the chain's start)
    cursor: int = 0  # selection: the chain index the scan judges next (it goes down from the end)
    scan: list[dict[str, Any]] = field(default_factory=list)  # judged chain indices, their rows and errors
    pending: int = 0  # selection: a chain index that passed, awaiting confirmation by the next one judged
    growth_stopped: str = ""
    rule: str = ""  # how steps are accepted, in words
    asked: float | None = None  # the target as asked (target may only fall below it with --no-fallback-dense)
    wall: float = 0.0


class Synthesizer:
    """Runs NeST (or pruning only) on ``graph`` with ``splits``; writes ``out/checkpoint.pt``
    after every step. ``resume`` continues from that checkpoint.

    With a dense ``teacher`` (trained on ``splits.train``) every keep-or-reject decision is a
    paired comparison with it on the validation images (:func:`nestir.driver.decide.paired`), and every
    stint of training distils from it. At the end the kept network trains ``final_epochs`` more
    on train (the final training), distilling from ``final_teacher`` (by default the teacher).
    Nothing trains on the validation images: what the decisions compared is what ships."""

    def __init__(self, graph: Graph, splits: Splits, cfg: SynthConfig, out: str, device: str | None = None,
                 reporter: Reporter | None = None, teacher: Graph | None = None,
                 final_teacher: Graph | None = None, ensemble: list[Graph] | None = None,
                 resuming: bool = False,
                 meta: dict[str, Any] | None = None, loss: Any = None, metric: Any = None,
                 metric_target: float | None = None) -> None:
        cfg.check()
        self.loss, self.metric = loss, metric  # None: cross-entropy and accuracy (classification)
        self.meta = meta or {}  # what the caller needs back on resume (run spec, baseline): checksummed
        self.cfg = cfg
        self.out = out
        self.dev = resolve_device(device)
        self.data = splits.to(self.dev)
        self.rep = reporter or _Silent()
        self.state = RunState(target=cfg.target_accuracy)
        self.trainer = self._trainer(graph, cfg.lr)
        self.best: Graph | None = None
        self.candidate: Graph | None = None  # the pending selection step's trial-refit network
        self._wrong = torch.zeros(0, dtype=torch.bool)  # per-image errors of the last network judged
        self._se = 0.0  # the standard error of the last paired verdict
        self._dense_size: tuple[int, int] | None = None  # the dense reference's (params, flops)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.teacher = teacher.to(self.dev) if teacher is not None else None
        self.final_teacher = ((final_teacher.to(self.dev) if final_teacher is not None else self.teacher)
                              if teacher is not None else None)
        # the other dense networks the soft targets average over (the teacher is the first)
        self.ensemble = [g.to(self.dev) for g in ensemble or []] if teacher is not None else []
        classify = loss is None and metric is None  # distillation's KL is defined for class logits only
        self.soft = (SoftTargets([self.teacher, *self.ensemble], self.data.train, self.dev)
                     if self.teacher is not None and classify and cfg.distill > 0 else None)
        self.reference: torch.Tensor | None = None  # per-image 0/1 errors of the reference on val
        if metric is not None:
            if metric_target is None or not math.isfinite(metric_target):
                raise NestirError(f"a custom metric needs a finite target (the metric value to keep), got "
                                  f"{metric_target}")
            self.state.target = float(metric_target)
            self.state.rule = f"validation metric >= {metric_target:.6g}"
        elif self.teacher is not None and not cfg.target_accuracy:  # accuracy: paired with the reference
            self.reference = evaluate(self.teacher, self.data.val.x, self.data.val.y, device=self.dev).wrong
            self.state.rule = (f"paired with the dense reference on {len(self.data.val)} validation images: "
                               f"accept when error difference + {cfg.confidence:g} SE <= {100 * cfg.tolerance:g} pts")
        else:
            if not 0 < cfg.target_accuracy <= 1:
                raise NestirError(f"target accuracy must be in (0, 1], got {cfg.target_accuracy}")
            self.state.rule = f"validation accuracy >= {cfg.target_accuracy:.2%}"
        if self.reference is None:
            self.state.asked = self.state.target  # a value to keep: it is never lowered silently
        if cfg.method == "prune" and self.teacher is None:
            raise NestirError("pruning only needs the trained dense reference as its starting point")
        if cfg.max_params and stats(graph)["params"] > cfg.max_params and cfg.method == "nest" and not resuming:
            # (a resumed run may sit above it: the last growth step may overshoot S)
            raise NestirError(f"the budget --max-params {cfg.max_params} is smaller than the seed "
                              f"({stats(graph)['params']} params): raise it or start from a smaller seed")

    @property
    def graph(self) -> Graph:
        return self.trainer.graph

    # -- training and measuring ------------------------------------------------------------
    def _train(self, epochs: int, label: str, anneal: bool = False) -> None:
        stint(self.trainer, self.data.train, epochs, self.cfg.recipe(), self.gen, soft=self.soft, anneal=anneal,
              label=label, reporter=self.rep)
        self.state.epochs += epochs

    def _trainer(self, graph: Graph, lr: float) -> Trainer:
        return Trainer(graph, device=self.dev, lr=lr, weight_decay=self.cfg.weight_decay, loss=self.loss)

    def score(self, graph: Graph, data: Any) -> float:
        """The run's metric (higher is better) of ``graph`` on ``data``."""
        return score(graph, data, metric=self.metric, loss=self.loss, device=self.dev)

    def _judge(self) -> tuple[float, bool, bool, str]:
        """(validation error, accepted?, point estimate within the target?, how) of the current
        network under the run's rule. With a custom metric, "error" is 1 - metric."""
        if self.metric is not None:
            m = self.score(self.graph, self.data.val)
            ok = m >= self.state.target
            return 1 - m, ok, ok, f"metric {m:.6g} (target {self.state.target:.6g})"
        ev = evaluate(self.graph, self.data.val.x, self.data.val.y, device=self.dev, loss=self.loss)
        self._wrong = ev.wrong  # the per-image errors just judged (the selection pools them)
        if self.reference is not None:
            v = paired(ev.wrong, self.reference, z=self.cfg.confidence, tolerance=self.cfg.tolerance)
            self._se = v.se
            return ev.error, v.accept, v.point_ok, v.describe()
        ok = 1 - ev.error >= self.state.target
        return ev.error, ok, ok, ""

    def _record(self, phase: str, note: str = "", report: bool = True) -> dict[str, Any]:
        s = stats(self.graph)
        err, ok, point_ok, how = self._judge()
        row = {"step": len(self.state.history), "phase": phase, "params": s["params"], "flops": s["flops"],
               "val_error": err, "accepted": ok, "point_ok": point_ok, "epochs": self.state.epochs,
               "seconds": round(self.state.wall + self._lap(), 2), "note": "; ".join(x for x in (note, how) if x)}
        if self.metric is not None:  # val_error is 1 - metric: the metric itself, for plots and reports
            row["val_metric"] = 1 - err
        self.state.history.append(row)
        if report:
            self.rep.step(row)
        return row

    def _lap(self) -> float:
        return time.perf_counter() - self._t0

    def _ctx(self) -> PassContext:
        k = self.cfg.score_batches * self.cfg.batch_size * 2
        tr = self.data.train
        idx = torch.randperm(tr.x.shape[0], generator=self.gen)[:k].to(self.dev)
        x, y = tr.x[idx], tr.y[idx]
        bs = self.cfg.batch_size * 2
        data = [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]
        if dist.active():  # each rank scores its share of every batch; the passes sum over the ranks
            data = [(xb[dist.shard(xb.shape[0])], yb[dist.shard(xb.shape[0])]) for xb, yb in data]
        return PassContext(data=data, loss=self.loss, device=self.dev, seed=self.cfg.seed + len(self.state.history))

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
        c = self.cfg
        prune = f"magnitude-prune:fraction={c.prune_fraction:.4f},scope={c.prune_scope}"
        if c.prune_neurons:
            prune += f",neuron_fraction={c.prune_neurons:.4f}"
        if c.prune_flops:
            prune += f",flops_fraction={c.prune_flops:.4f}"
        pipe = [prune]
        if c.partial_area and any(n.op == "conv" and n.attrs["groups"] == 1 for n in self.graph.parametric()):
            pipe.append(f"partial-area-mask:fraction={c.partial_area:.4f}")
        pipe.append("eliminate-dead-neurons")
        return pipe

    def run(self) -> RunState:
        self._t0 = time.perf_counter()
        st, c = self.state, self.cfg
        if st.phase == "start":
            if c.method == "prune":
                row = self._record("dense", "the trained dense reference")
                self._keep_best(row)
                st.phase = "prune"
                self.trainer.set_lr(c.prune_lr)
            else:
                self._train(c.initial_epochs, "seed training")
                st.phase = "grow"
                self._record("seed")
            self.checkpoint()
        flops_budget = self._flops_budget() if st.phase == "grow" else 0
        while st.phase == "grow":
            row = st.history[-1]
            if row.get("point_ok", row["accepted"]):  # the point estimate meets the target
                st.growth_stopped = "target accuracy reached"
            elif row["params"] >= c.max_params:
                st.growth_stopped = "size budget reached"
            elif flops_budget and row["flops"] >= flops_budget:
                # a convnet's growth adds feature maps, cheap in parameters and dear in FLOPs: past the
                # dense reference's FLOPs it builds what the selection may not keep (measured: LeNet-5
                # grew to 2.5x the dense FLOPs at 0.9x its parameters)
                st.growth_stopped = "FLOPs budget reached"
            elif c.growth_patience and self._plateau(c.growth_patience):
                st.growth_stopped = f"validation error has not improved for {c.growth_patience} growth steps"
            elif st.step >= c.max_growth_steps:
                st.growth_stopped = "growth step limit reached"
            if st.growth_stopped:
                if st.step == 0 and st.growth_stopped in ("FLOPs budget reached", "size budget reached"):
                    self.rep.message(f"growth stopped before its first step ({st.growth_stopped}): the seed is already "
                                     "as large as the budget, so NeST only prunes it. To grow, start from a sparse "
                                     "seed (--seed-density 0.1, or seed_density=0.1 in nestir.synthesize)")
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
            extra = self._recover()
            row = self._record("shift", "leaky ReLU -> ReLU" + (f", {extra} recovery epochs" if extra else ""))
            got = (f"validation metric {1 - row['val_error']:.6g}" if self.metric is not None
                   else f"validation error {row['val_error']:.2%}")
            short = not row["accepted"]
            if short and self.teacher is not None and c.fallback_dense:
                # growth fell short of the target: pruning starts from the dense reference, under the
                # same rule and the same target, for any rule (paired, target accuracy, custom metric).
                # (Before 2026-12-06 a network within the tolerance at the point estimate, only short
                # of the bound, was pruned itself and became the reference: the bar fell by up to the
                # tolerance; with a custom metric or target the target itself was lowered.)
                st.target_reached = False
                row["note"] += "; not accepted: pruning starts from the dense reference instead"
                self.rep.message(f"growth fell short of the target ({st.growth_stopped}; {got}): "
                                 "pruning starts from the dense reference instead (--no-fallback-dense: "
                                 "prune the grown network)")
                self.trainer = self._trainer(self.teacher.copy(), c.lr)
                row = self._record("dense", "the trained dense reference: the pruning chain starts here")
                if not row["accepted"]:
                    self.rep.message(f"the dense reference itself does not reach the target ({self.state.rule}): "
                                     "no network can be kept for it; the target is kept as asked")
            elif not row["accepted"]:
                st.target_reached = False
                row["note"] += "; not accepted: this network becomes the reference"
                self.rep.message(f"the target was not reached after growth ({st.growth_stopped}; {got}): "
                                 "pruning keeps this network's accuracy instead (--no-fallback-dense); the "
                                 "report's target says to what")
                # the reference becomes this network: pruning must not get worse than it
                if self.reference is not None:
                    self.reference = evaluate(self.graph, self.data.val.x, self.data.val.y, device=self.dev).wrong
                st.target = 1 - row["val_error"]
            self._keep_best(row)
            st.phase, st.step = "prune", 0
            self.trainer.set_lr(c.prune_lr)
            self.checkpoint()
        while st.phase == "prune":
            if not st.chain:  # chain index 0: the network pruning starts from (already judged)
                self._snapshot(st.best_row)
            stop = self._chain_stop()
            if stop:
                st.phase, st.lo, st.cursor = "select", 0, self._scan_start()
                self.rep.message(f"pruning chain of {len(st.chain) - 1} steps ended ({stop}); " + (
                    "keeping the least pruned network within the size target" if self._size_target() else
                    "selecting the smallest network that passes after a trial refit"))
                self.checkpoint()
                break
            infos = self._apply(self.pruning_pipeline())
            self._train(c.prune_epochs, f"pruning step {st.step + 1}", anneal=True)
            st.step += 1
            row = self._record("prune", _summary(infos) or "nothing left to prune")
            row["accepted"] = False  # a chain step decides nothing: the selection judges it after a refit
            row["note"] = "chain (before refit): " + row["note"]
            self._snapshot(row["step"], removed=_removed(infos) > 0)
            self.checkpoint()
        if st.phase == "select" and self._size_target():
            self._select_for_size()
        while st.phase == "select":
            if st.lo or st.cursor < 1:
                res = self.resolution
                if res is not None:
                    self.rep.message(
                        f"the selection judged {res['judged']} chain steps on {res['val_images']:,} validation images: "
                        f"a decision's standard error was {100 * res['median_se']:.2f} pts (median), so a step passed "
                        f"only when measured at most {100 * res['passes_at_most']:+.2f} pts from the dense reference; "
                        "more validation images (--val-fraction) narrow this")
                self._no_bigger_than_dense()
                st.phase = "refit"
                self.checkpoint()
                break
            k = st.cursor
            small = self._smaller_than_dense(st.history[st.chain[k]["row"]])
            if not small and not st.pending:  # this step and every less pruned one: nothing to keep
                st.cursor = 0
                self.rep.message(f"chain step {k} and every less pruned one are not smaller than the dense "
                                 "reference (no fewer parameters, or more FLOPs): the scan ends")
                continue
            self.trainer = self._trainer(self._load_snapshot(k), c.lr)
            self._train(c.trial_epochs, f"trial refit of chain step {k}", anneal=True)
            row = self._record("select", f"chain step {k} after a {c.trial_epochs}-epoch trial refit", report=False)
            self._pool(k, row)
            if st.pending:
                self._confirm(row)
                if st.lo:  # the pending step is kept; this one only confirmed it
                    row["accepted"] = False
            if not small:  # judged only to confirm the pending step; never kept itself
                row["accepted"] = False
                row["note"] += "; never kept: not smaller than the dense reference (parameters or FLOPs)"
            if not st.lo and row["accepted"]:
                if k == 1 or self.reference is None:  # nothing less pruned left to confirm it (or no pairing)
                    st.lo = k
                    self._keep_best(row)
                else:
                    st.pending, self.candidate = k, self.graph.copy()
                    row["accepted"] = False
                    row["note"] += "; passes, to be confirmed by the next step judged"
            self.rep.step(row)
            trials = len(st.scan)  # past the budget the scan strides down faster (1, 2, 4, ...)
            stride = 1 if trials < c.max_trials else 2 ** (trials - c.max_trials + 1)
            # step 1 is always judged before the scan ends (unless it is no smaller than the dense reference)
            st.cursor = max(1, k - stride) if k > 1 and small else 0
            self.checkpoint()
        if st.phase == "refit":
            self.trainer = self._trainer(self.best.copy(), c.lr)  # type: ignore[union-attr]
            if c.final_epochs:
                soft = self.soft
                if self.final_teacher is not None and self.soft is not None and self.final_teacher is not self.teacher:
                    soft = SoftTargets(self.final_teacher, self.data.train, self.dev)
                stint(self.trainer, self.data.train, c.final_epochs, c.recipe(), self.gen, soft=soft, anneal=True,
                      label="final training", reporter=self.rep)
                st.epochs += c.final_epochs
            st.phase = "done"
            self.checkpoint()
            clear_chain(self.out)  # the chain is no longer needed once the run is done
        return st

    def _select_for_size(self) -> None:
        """A size target: keep the least pruned chain network within it (after its trial refit),
        the most accurate one a monotone error curve allows; the row notes how it compares with
        the dense reference under the run's rule, which does not decide here."""
        st, c = self.state, self.cfg
        fits = [i for i, e in enumerate(st.chain) if self._fits(st.history[e["row"]])]
        k = fits[0] if fits else len(st.chain) - 1
        if not fits:
            self.rep.message("the pruning chain ended before any network met the size target: its smallest network "
                             "is kept")
        self.trainer = self._trainer(self._load_snapshot(k), c.lr)
        self._train(c.trial_epochs, f"trial refit of chain step {k}", anneal=True)
        row = self._record("select", f"chain step {k}: the least pruned network within the size target, after a "
                                     f"{c.trial_epochs}-epoch trial refit")
        row["point_ok"], row["accepted"] = row.get("point_ok", row["accepted"]), bool(fits)
        self._keep_best(row)
        st.lo, st.target_reached = k, bool(fits)
        st.phase = "refit"
        self.checkpoint()

    def _confirm(self, row: dict[str, Any]) -> None:
        """The pending step passed on its own (or pooled with more pruned steps); keep it only when
        its pair with the less pruned step just judged passes too. A more pruned network is no more
        accurate, so the pair's mean error is at most the pending step's: a pending step that
        passed by luck on the validation images rarely has a neighbour that is lucky as well."""
        st = self.state
        p = next(e for e in st.scan if e["index"] == st.pending)
        v = pooled([st.scan[-1]["wrong"], p["wrong"]], self.reference, z=self.cfg.confidence,
                   tolerance=self.cfg.tolerance)
        prow = st.history[p["row"]]
        if v.accept:
            st.lo = st.pending
            prow["accepted"] = True
            prow["note"] = prow["note"].replace("to be confirmed by the next step judged",
                                                f"confirmed with chain step {st.scan[-1]['index']}")
            self.best, st.best_val, st.best_row = self.candidate, 1 - prow["val_error"], prow["step"]
        else:
            prow["note"] = prow["note"].replace("to be confirmed by the next step judged",
                                                f"not confirmed with chain step {st.scan[-1]['index']}")
        row["note"] += (f"; with chain step {st.pending}: error {100 * v.delta:+.2f} pts, bound "
                        f"{100 * v.bound:+.2f} ({'confirms' if v.accept else 'does not confirm'} it)")
        st.pending, self.candidate = 0, None

    def _pool(self, k: int, row: dict[str, Any]) -> None:
        """Judge chain step ``k`` with the networks judged before it (all more pruned): under a
        monotone error curve their mean error bounds step ``k``'s from above, so ``k`` passes when
        the pooled paired bound of some block of steps ``k..m`` is within the tolerance
        (:func:`nestir.driver.decide.pooled`). Without a paired reference each step is judged alone."""
        if self.reference is None:
            return
        self.state.scan.append({"index": k, "row": row["step"], "wrong": self._wrong.cpu(), "se": self._se})
        judged = [e["wrong"] for e in reversed(self.state.scan)]  # k first, then k+1, ...
        best, size = None, 0
        for j in range(1, len(judged) + 1):
            v = pooled(judged[:j], self.reference, z=self.cfg.confidence, tolerance=self.cfg.tolerance)
            if best is None or v.bound < best.bound:
                best, size = v, j
        assert best is not None
        if size > 1:
            row["accepted"] = best.accept
            row["note"] += (f"; pooled with the {size - 1} more pruned step(s) judged before: error "
                            f"{100 * best.delta:+.2f} pts, bound {100 * best.bound:+.2f}")

    def _recover(self) -> int:
        """Train one epoch at a time, at most ``recover_epochs``, while the current network is not
        accepted; returns the epochs spent."""
        extra = 0
        while extra < self.cfg.recover_epochs and not self._judge()[1]:
            self._train(1, "recovery")
            extra += 1
        return extra

    def _plateau(self, patience: int) -> bool:
        """The last ``patience`` growth steps did not lower the validation error below its best
        before them: growing further buys nothing the validation images can see."""
        errs = [r["val_error"] for r in self.state.history if r["phase"] in ("seed", "grow")]
        return len(errs) > patience and min(errs[-patience:]) >= min(errs[:-patience])

    def _keep_best(self, row: dict[str, Any]) -> None:
        self.best = self.graph.copy()
        self.state.best_val = 1 - row["val_error"]
        self.state.best_row = row["step"]

    def _smaller_than_dense(self, row: dict[str, Any]) -> bool:
        """A network (its history row) with fewer parameters than the dense reference and no more
        FLOPs: smaller and not slower. A grown network can have more FLOPs than the dense model
        (more feature maps, fewer weights); the selection never keeps such a network. Without a
        dense reference every network counts as smaller."""
        if self.teacher is None:
            return True
        params, flops = self._dense_stats()
        return row["params"] < params and row["flops"] <= flops

    def _dense_stats(self) -> tuple[int, int]:
        """The dense reference's (params, flops); the reference never changes: measured once."""
        assert self.teacher is not None
        if self._dense_size is None:
            d = stats(self.teacher)
            self._dense_size = (d["params"], d["flops"])
        return self._dense_size

    def _flops_budget(self) -> int:
        """Growth stops once a network has this many FLOPs (0: no budget): ``max_flops``, or by
        default the dense reference's FLOPs, the most the selection may keep."""
        if self.cfg.max_flops:
            return self.cfg.max_flops
        return self._dense_stats()[1] if self.teacher is not None else 0

    def _no_bigger_than_dense(self) -> None:
        """Nothing smaller passed, and the network kept is not smaller than the dense reference
        (no fewer parameters, or more FLOPs): ship the dense reference instead (same accuracy by
        definition, no more parameters, no more FLOPs)."""
        if self.teacher is None or self.best is None or self.state.lo != 0:
            return
        if not self._smaller_than_dense(stats(self.best)):
            self.trainer = self._trainer(self.teacher.copy(), self.cfg.lr)
            row = self._record("select", "the dense reference: no smaller network passed the rule")
            self._keep_best(row)
            self.state.target_reached = False
            self.rep.message("no network smaller than the dense reference passed the rule: "
                             "the dense reference is kept")

    def _size_target(self) -> bool:
        return bool(self.cfg.target_params or self.cfg.target_flops)

    def _fits(self, row: dict[str, Any]) -> bool:
        """Within the size target (``target_params`` / ``target_flops``)."""
        c = self.cfg
        return ((not c.target_params or row["params"] <= c.target_params)
                and (not c.target_flops or row["flops"] <= c.target_flops))

    def _chain_stop(self) -> str:
        """Why the pruning chain ends now ("" while it goes on)."""
        st, c = self.state, self.cfg
        rows = [st.history[e["row"]] for e in st.chain]
        if st.step >= c.max_prune_steps:
            return f"{c.max_prune_steps} steps"
        if self._size_target():  # prune until the size target is met, whatever the accuracy
            if len(st.chain) > 1 and not st.chain[-1]["removed"]:
                return "nothing left to prune"
            return "the size target is met" if self._fits(rows[-1]) else ""
        if rows[0]["params"] >= c.max_compression * rows[-1]["params"]:
            return f"{c.max_compression:g}x fewer parameters than its start"
        if len(st.chain) > 1 and not st.chain[-1]["removed"]:
            return "nothing left to prune"
        ref = float(self.reference.float().mean()) if self.reference is not None else 1 - st.target
        far = [r["val_error"] > ref + c.chain_slack for r in rows[-2:]]
        if len(rows) > 2 and all(far):
            return f"two networks in a row more than {100 * c.chain_slack:g} pts less accurate before refit"
        return ""

    def _scan_start(self) -> int:
        """The most pruned chain step whose error before its refit is within ``scan_slack`` of the
        reference (steps beyond it do not recover enough in a trial refit to be worth judging)."""
        st = self.state
        ref = float(self.reference.float().mean()) if self.reference is not None else 1 - st.target
        ok = [i for i, e in enumerate(st.chain) if st.history[e["row"]]["val_error"] <= ref + self.cfg.scan_slack]
        return max(ok, default=0)

    def _snapshot(self, row: int, removed: bool = True) -> None:
        """Save the current network as the next chain element (its own file, digest in the state)."""
        i = len(self.state.chain)
        state = graph_state(self.graph)
        name = os.path.join("chain", f"{i:03d}.pt")
        if dist.is_main():  # one writer; the other ranks read it after the barrier
            os.makedirs(os.path.join(self.out, "chain"), exist_ok=True)
            atomic_save(state, os.path.join(self.out, name))
        dist.barrier()
        self.state.chain.append({"row": row, "file": name, "sha256": digest_tree(state), "removed": removed})

    def _load_snapshot(self, i: int) -> Graph:
        e = self.state.chain[i]
        path = os.path.join(self.out, e["file"])
        state = _read(path, f"the pruning chain's '{path}' is missing; start a new run", "the pruning chain's")
        if digest_tree(state) != e["sha256"]:
            raise NestirError(f"the pruning chain's '{path}' failed its integrity check (SHA-256 mismatch); "
                              "start a new run")
        try:
            g = graph_from_state(state)
            g.verify()
        except NestirError:
            raise
        except Exception as ex:
            raise NestirError(f"the pruning chain's '{path}' does not hold a valid network ({ex})") from None
        return g

    @property
    def resolution(self) -> dict[str, Any] | None:
        """What the validation images could resolve in the selection's paired decisions (None
        without a paired reference or before any chain step was judged): the median standard
        error and the largest measured difference from the reference that still passed the bound."""
        ses = sorted(e["se"] for e in self.state.scan if e.get("se") is not None)
        if self.reference is None or not ses:
            return None
        se = ses[len(ses) // 2]
        c = self.cfg
        return {"judged": len(ses), "val_images": int(self.reference.numel()), "median_se": se,
                "z": c.confidence, "tolerance": c.tolerance, "passes_at_most": c.tolerance - c.confidence * se,
                "how": "each chain step the selection judged was compared with the dense reference on the same "
                       "validation images; it passed when its error difference plus z standard errors was within "
                       "the tolerance, i.e. when the measured difference was at most passes_at_most. The standard "
                       "error falls as 1/sqrt(validation images)"}

    def target_report(self) -> dict[str, Any]:
        """What was asked, what the kept network reached on the validation split (its selection
        estimate), and why the two differ when they do: the report's ``target``."""
        st = self.state
        kept = 1 - float(self.selection.get("val_error", 1.0))
        out: dict[str, Any] = {"rule": st.rule, "asked": st.asked, "used": st.target if st.asked is not None else None,
                               "kept": kept, "met": bool(self.selection.get("accepted", False)), "why": ""}
        dense = self.score(self.teacher, self.data.val) if self.teacher is not None else None
        out["dense_reference"] = dense
        c = self.cfg
        if self._size_target():  # the size decides; the accuracy is what it costs
            kept_row = self.selection
            out["asked"] = {"params": c.target_params or None, "flops": c.target_flops or None}
            out["size"] = {"params": kept_row.get("params"), "flops": kept_row.get("flops")}
            out["met"] = self._fits(kept_row) if kept_row else False
            out["accuracy_vs_dense"] = (None if dense is None else kept - dense)
            out["why"] = "" if out["met"] else "the pruning chain ended before a network met the size target"
            return out
        if st.asked is None:  # the paired rule: no value, a comparison with the dense reference
            out["asked"] = "no less accurate than the dense reference (paired comparison on the validation images)"
            if not st.target_reached:
                out["why"] = "no network smaller than the dense reference passed the rule: the dense reference is kept"
            return out
        out["met"] = kept >= st.asked
        if st.target < st.asked:
            out["why"] = (f"lowered to {st.target:.6g} because growth fell short and --no-fallback-dense kept the "
                          "grown network")
        elif not out["met"] and dense is not None and dense < st.asked:
            out["why"] = f"the dense reference itself reaches only {dense:.6g} on the validation split"
        elif not out["met"]:
            out["why"] = "no network passed the rule"
        return out

    @property
    def selection(self) -> dict[str, Any]:
        """The history row of the kept network: its validation error is the selection estimate."""
        st = self.state
        return st.history[st.best_row] if 0 <= st.best_row < len(st.history) else (st.history or [{}])[-1]

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        st = self.state
        st.wall += self._lap()
        self._t0 = time.perf_counter()
        opt = {k: {sk: sv.cpu() if isinstance(sv, torch.Tensor) else sv
                   for sk, sv in self.trainer.optimizer.state.get(p, {}).items()}
               for k, p in self.trainer.module.params.items()}

        def gs(g: Graph | None) -> Any:
            return graph_state(g) if g is not None else None

        ck = {"format": "nestir-checkpoint", "config": self.cfg.to_dict(), "state": dataclasses.asdict(st),
              "graph": graph_state(self.graph), "best": gs(self.best), "candidate": gs(self.candidate),
              "teacher": gs(self.teacher),
              "final_teacher": gs(self.final_teacher) if self.final_teacher is not self.teacher else None,
              "ensemble": [graph_state(g) for g in self.ensemble],
              "reference": self.reference.cpu() if self.reference is not None else None,
              "optimizer": opt, "lr": self.trainer.lr, "rng": self.gen.get_state(), "meta": self.meta}
        ck["sha256"] = digest_tree({k: v for k, v in ck.items() if k != "sha256"})
        if dist.is_main():
            atomic_save(ck, os.path.join(self.out, "checkpoint.pt"))
        dist.barrier()

    @classmethod
    def resume(cls, out: str, splits: Splits, device: str | None = None, reporter: Reporter | None = None,
               loss: Any = None, metric: Any = None) -> Synthesizer:
        """Continue the run in ``out``; ``loss`` and ``metric`` are the run's own (code is not
        stored in a checkpoint): the caller passes them again."""
        path = os.path.join(out, "checkpoint.pt")
        ck = _read(path, f"nothing to resume: '{path}' does not exist", "checkpoint")
        if not isinstance(ck, dict) or ck.get("format") != "nestir-checkpoint":
            raise NestirError(f"'{path}' is not a nestir checkpoint")
        if ck.get("sha256") != digest_tree({k: v for k, v in ck.items() if k != "sha256"}):
            raise NestirError(f"checkpoint '{path}' failed its integrity check (SHA-256 mismatch); start a new run")
        try:
            cfg = SynthConfig(**{"epoch_samples": 0, **ck["config"]})  # older runs: full passes
            g = graph_from_state(ck["graph"])
            g.verify()
            teacher = graph_from_state(ck["teacher"]) if ck.get("teacher") is not None else None
            final_teacher = graph_from_state(ck["final_teacher"]) if ck.get("final_teacher") is not None else None
            ensemble = [graph_from_state(e) for e in ck.get("ensemble") or []]
        except NestirError:
            raise
        except Exception as e:
            raise NestirError(f"checkpoint '{path}' does not hold a valid run ({type(e).__name__}: {e})") from None
        target = (ck.get("state") or {}).get("target")
        if metric is not None and not isinstance(target, (int, float)):
            raise NestirError(f"checkpoint '{path}' holds no metric target; start a new run")
        self = cls(g, splits, cfg, out, device, reporter, teacher=teacher, final_teacher=final_teacher,
                   ensemble=ensemble, resuming=True, meta=ck.get("meta") or {}, loss=loss, metric=metric,
                   metric_target=float(target) if metric is not None else None)
        known = {f.name for f in dataclasses.fields(RunState)}
        state = {k: v for k, v in ck["state"].items() if k in known}
        if state.get("phase") == "select" and "cursor" not in ck["state"]:  # an older run's binary search
            state["lo"], state["cursor"] = 0, len(state.get("chain", [])) - 1  # starts the scan over
        self.state = RunState(**state)
        self.best = graph_from_state(ck["best"]) if ck["best"] is not None else None
        self.candidate = graph_from_state(ck["candidate"]) if ck.get("candidate") is not None else None
        if ck.get("reference") is not None:
            self.reference = ck["reference"]
        self.trainer.set_lr(ck["lr"])
        for k, p in self.trainer.module.params.items():
            s = ck["optimizer"].get(k)
            if s:
                self.trainer.optimizer.state[p] = {sk: sv.to(self.dev) if isinstance(sv, torch.Tensor) and sv.dim()
                                                   else sv for sk, sv in s.items()}
        self.gen.set_state(ck["rng"])
        return self


def _read(path: str, missing: str, what: str) -> Any:
    """A run file loaded without executing code; ``missing`` or a corrupt-file error otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NestirError(missing) from None
    except Exception as e:
        raise NestirError(f"{what} '{path}' is corrupt or truncated ({type(e).__name__}); start a new run") from None


def score(graph: Graph, data: Any, *, metric: Any = None, loss: Any = None, device: Any = None) -> float:
    """The metric (higher is better) of ``graph`` on ``data`` (a Dataset): accuracy by default,
    else ``metric(outputs, targets)`` averaged over batches weighted by their size."""
    dev = resolve_device(device)
    if metric is None:
        return 1 - evaluate(graph, data.x, data.y, device=dev, loss=loss).error
    from nestir.backends.train import batches
    from nestir.ir.interpreter import IRModule

    mod = IRModule(graph.copy(), dev).eval()
    total, n = 0.0, 0
    part = dist.shard(data.x.shape[0])  # under torch.distributed each rank scores its share
    with torch.no_grad():
        for xb, yb in batches(data.x[part].to(dev), data.y[part].to(dev), 1024):
            total += float(metric(mod(xb), yb)) * xb.shape[0]
            n += xb.shape[0]
    total, n = dist.sum_float(total, n)
    return total / max(1, n)


def _removed(infos: dict[str, Any]) -> int:
    """How many connections, neurons and positions a pruning pipeline removed (a step that reports
    ``magnitude-prune(connections=0, neurons=0)`` removed nothing: the chain ends there)."""
    return sum(v for info in infos.values() for v in info.values() if isinstance(v, int) and not isinstance(v, bool))


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
        set_mask(graph, n.name, keep.contiguous())
