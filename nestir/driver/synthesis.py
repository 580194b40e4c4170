"""The NeST synthesis flow: a sparse seed grows (connections, neurons, feature maps) until it is
accurate enough or big enough, switches leaky ReLU to ReLU, then is pruned along a chain of ever
smaller networks; a scan of the chain from its most pruned end, judging each step after a trial
refit (pooled with the more pruned steps judged before it), keeps the first network, the smallest,
that passes the acceptance rule. Checkpointed after every step; resumable.

:class:`Synthesizer` holds a run (its networks, data, rule and state) and the operations its
phases share; the phases themselves are :mod:`nestir.driver.phases` and
:mod:`nestir.driver.selection`, the rule :mod:`nestir.driver.judge`, the files
:mod:`nestir.driver.runstore`, the configuration :mod:`nestir.driver.config`."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import torch

from nestir.backends import dist
from nestir.backends.device import resolve_device
from nestir.backends.train import Trainer, evaluate
from nestir.driver import outcome, phases, selection
from nestir.driver.config import MAX_EPOCHS, MAX_TEACHERS, METHOD_DEFAULTS, RunState, Silent, SynthConfig
from nestir.driver.data import Splits
from nestir.driver.judge import Judge, Verdict, score
from nestir.driver.recipe import Reporter, SoftTargets, stint
from nestir.driver.runstore import CHECKPOINT, RunStore
from nestir.ir.edit import set_mask
from nestir.ir.errors import NestirError
from nestir.ir.graph import Graph
from nestir.ir.serialize import graph_from_state, graph_state
from nestir.ir.stats import stats
from nestir.passes import resolve
from nestir.passinfra.base import PassContext, PassManager

__all__ = ["MAX_EPOCHS", "MAX_TEACHERS", "METHOD_DEFAULTS", "RunState", "SynthConfig", "Synthesizer", "score",
           "sparsify_seed"]


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
        self.store = RunStore(out)
        self.dev = resolve_device(device)
        self.data = splits.to(self.dev)
        self.rep = reporter or Silent()
        self.state = RunState(target=cfg.target_accuracy)
        self.trainer = self.new_trainer(graph, cfg.lr)
        self.best: Graph | None = None
        self.candidate: Graph | None = None  # the pending selection step's trial-refit network
        self.last_verdict: Verdict | None = None  # of the last network judged (the selection pools its errors)
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
        self.judge_rule = Judge(self.data.val, self.dev, loss=loss, metric=metric, confidence=cfg.confidence,
                                tolerance=cfg.tolerance)
        self._set_rule(metric_target)
        if cfg.method == "prune" and self.teacher is None:
            raise NestirError("pruning only needs the trained dense reference as its starting point")
        if cfg.max_params and stats(graph)["params"] > cfg.max_params and cfg.method == "nest" and not resuming:
            # (a resumed run may sit above it: the last growth step may overshoot S)
            raise NestirError(f"the budget --max-params {cfg.max_params} is smaller than the seed "
                              f"({stats(graph)['params']} params): raise it or start from a smaller seed")

    def _set_rule(self, metric_target: float | None) -> None:
        cfg = self.cfg
        if self.metric is not None:
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

    @property
    def graph(self) -> Graph:
        return self.trainer.graph

    @property
    def reference(self) -> torch.Tensor | None:
        """Per-image 0/1 errors of the reference on the validation split (None: no paired rule)."""
        return self.judge_rule.reference

    @reference.setter
    def reference(self, wrong: torch.Tensor | None) -> None:
        self.judge_rule.reference = wrong

    def reference_error(self) -> float:
        """The reference's validation error (1 - the target without a paired reference)."""
        return float(self.reference.float().mean()) if self.reference is not None else 1 - self.state.target

    # -- training and measuring ------------------------------------------------------------
    def train(self, epochs: int, label: str, anneal: bool = False) -> None:
        stint(self.trainer, self.data.train, epochs, self.cfg.recipe(), self.gen, soft=self.soft, anneal=anneal,
              label=label, reporter=self.rep)
        self.state.epochs += epochs

    def new_trainer(self, graph: Graph, lr: float) -> Trainer:
        return Trainer(graph, device=self.dev, lr=lr, weight_decay=self.cfg.weight_decay, loss=self.loss)

    def score(self, graph: Graph, data: Any) -> float:
        """The run's metric (higher is better) of ``graph`` on ``data``."""
        return score(graph, data, metric=self.metric, loss=self.loss, device=self.dev)

    def judge(self) -> Verdict:
        """The current network under the run's rule (kept as ``last_verdict``)."""
        self.last_verdict = self.judge_rule(self.graph, self.state.target)
        return self.last_verdict

    def record(self, phase: str, note: str = "", report: bool = True) -> dict[str, Any]:
        """Judge the current network and append its history row (reported unless ``report`` is off)."""
        s = stats(self.graph)
        v = self.judge()
        row = {"step": len(self.state.history), "phase": phase, "params": s["params"], "flops": s["flops"],
               "val_error": v.error, "accepted": v.accepted, "point_ok": v.point_ok, "epochs": self.state.epochs,
               "seconds": round(self.state.wall + self._lap(), 2), "note": "; ".join(x for x in (note, v.how) if x)}
        if self.metric is not None:  # val_error is 1 - metric: the metric itself, for plots and reports
            row["val_metric"] = 1 - v.error
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

    def apply_pipeline(self, pipeline: list[str]) -> dict[str, Any]:
        """Run ``pipeline`` on the current network (gradients from a draw of train); each pass's info."""
        passes = resolve(pipeline)
        infos: dict[str, Any] = {}
        PassManager(passes, on_result=lambda p, r: infos.__setitem__(p.name, r.info)).run(self.graph, self._ctx())
        self.trainer.rebuild()
        return infos

    # -- the flow --------------------------------------------------------------------------------
    def run(self) -> RunState:
        """The flow, from wherever the state stands (a resumed run continues its phase)."""
        self._t0 = time.perf_counter()
        flow = {"start": phases.start, "grow": phases.grow, "shift": phases.shift, "prune": phases.prune_chain,
                "select": selection.select, "refit": phases.refit}
        for name in ("start", "grow", "shift", "prune", "select", "refit"):
            if self.state.phase == name:
                flow[name](self)
        return self.state

    def keep_best(self, row: dict[str, Any]) -> None:
        self.best = self.graph.copy()
        self.state.best_val = 1 - row["val_error"]
        self.state.best_row = row["step"]

    def smaller_than_dense(self, row: dict[str, Any]) -> bool:
        """A network (its history row) with fewer parameters than the dense reference and no more
        FLOPs: smaller and not slower. A grown network can have more FLOPs than the dense model
        (more feature maps, fewer weights); the selection never keeps such a network. Without a
        dense reference every network counts as smaller."""
        if self.teacher is None:
            return True
        params, flops = self.dense_stats()
        return row["params"] < params and row["flops"] <= flops

    def dense_stats(self) -> tuple[int, int]:
        """The dense reference's (params, flops); the reference never changes: measured once."""
        assert self.teacher is not None
        if self._dense_size is None:
            d = stats(self.teacher)
            self._dense_size = (d["params"], d["flops"])
        return self._dense_size

    def flops_budget(self) -> int:
        """Growth stops once a network has this many FLOPs (0: no budget): ``max_flops``, or by
        default the dense reference's FLOPs, the most the selection may keep."""
        if self.cfg.max_flops:
            return self.cfg.max_flops
        return self.dense_stats()[1] if self.teacher is not None else 0

    def snapshot(self, row: int, removed: bool = True) -> None:
        """Save the current network as the next chain element (its own file, digest in the state)."""
        entry = self.store.save_snapshot(self.graph, len(self.state.chain))
        self.state.chain.append({"row": row, **entry, "removed": removed})

    def load_snapshot(self, i: int) -> Graph:
        return self.store.load_snapshot(self.state.chain[i])

    @property
    def resolution(self) -> dict[str, Any] | None:
        return outcome.resolution(self)

    def target_report(self) -> dict[str, Any]:
        return outcome.target_report(self)

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

        self.store.save_checkpoint({
            "format": "nestir-checkpoint", "config": self.cfg.to_dict(), "state": dataclasses.asdict(st),
            "graph": graph_state(self.graph), "best": gs(self.best), "candidate": gs(self.candidate),
            "teacher": gs(self.teacher),
            "final_teacher": gs(self.final_teacher) if self.final_teacher is not self.teacher else None,
            "ensemble": [graph_state(g) for g in self.ensemble],
            "reference": self.reference.cpu() if self.reference is not None else None,
            "optimizer": opt, "lr": self.trainer.lr, "rng": self.gen.get_state(), "meta": self.meta})

    @classmethod
    def resume(cls, out: str, splits: Splits, device: str | None = None, reporter: Reporter | None = None,
               loss: Any = None, metric: Any = None) -> Synthesizer:
        """Continue the run in ``out``; ``loss`` and ``metric`` are the run's own (code is not
        stored in a checkpoint): the caller passes them again."""
        path = os.path.join(out, CHECKPOINT)
        ck = RunStore(out).read_checkpoint()
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
