"""What the training verbs share: resolving model and data into a prepared run, the dense and
pruning-only baselines, final metrics and the output files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from nestir.backends.device import resolve_device
from nestir.backends.train import evaluate, logits
from nestir.driver import data as datasets
from nestir.driver.decide import wilson
from nestir.driver.loading import load_model, parse_shape
from nestir.driver.recipe import train_teachers
from nestir.driver.report import plot_first_layer, plot_history, write_history, write_json, write_models
from nestir.driver.runstore import RunStore, dense_key
from nestir.driver.synthesis import SynthConfig, sparsify_seed
from nestir.driver.zoo import ZOO
from nestir.frontend.tracer import trace
from nestir.ir.edit import connect_all
from nestir.ir.errors import NestirError
from nestir.ir.graph import Graph
from nestir.ir.stats import stats

AUDIT_METHOD = ("error of the shipped network on the audit split: {n} images drawn from --data before the run "
                "(seeded), read by no training step and no decision, once at the end; 95% Wilson interval. "
                "val_error is the selection estimate (the kept network on the validation split every decision "
                "read, after its trial refit, before its final training) and is optimistic")


@dataclass
class RunSpec:
    model: str
    data: str = "mnist5k"
    test_data: str | None = None
    val_fraction: float = 0.2  # 1,000 of mnist5k: every decision reads them; the refit trains on them too
    seed_density: float | None = None
    device: str | None = None
    input_shape: str | None = None
    seed: int = 0
    audit_fraction: float = 0.1
    # caps on those splits: on full MNIST 10,000 validation images resolve a paired decision to about
    # 0.1 points (standard error), and the other 45,000 images train
    max_val: int = 10_000
    max_audit: int = 5_000


@dataclass
class Prepared:
    graph: Graph
    splits: datasets.Splits
    test: datasets.Dataset | None
    device: torch.device
    reference: str | None
    defaults: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()

    @property
    def train(self) -> datasets.Dataset:
        return self.splits.train

    @property
    def val(self) -> datasets.Dataset:
        return self.splits.val


def _resolve_names(model: str, dense: bool) -> tuple[str, str | None]:
    """(model to build, dense reference name or None)."""
    if model in ZOO:
        if model.endswith("-seed"):  # a seed named explicitly is what the user gets, in every verb
            return model, model[: -len("-seed")]
        if not dense and model + "-seed" in ZOO:
            return model + "-seed", model
        return model, model
    return model, None


def prepare(spec: RunSpec, dense: bool = False) -> Prepared:
    dev = resolve_device(spec.device)
    if spec.max_val < 0 or spec.max_audit < 0:
        raise NestirError(f"--max-val and --max-audit must be >= 0 (0: no cap), got {spec.max_val}, {spec.max_audit}")
    full = datasets.load(spec.data)
    splits = datasets.split3(full, spec.val_fraction, spec.audit_fraction, spec.seed, max_val=spec.max_val,
                             max_audit=spec.max_audit)
    train = splits.train
    test = datasets.load_idx(spec.test_data.split(":", 1)[1], "test") if (
        spec.test_data and spec.test_data.startswith("mnist-idx:")) else (
        datasets.load(spec.test_data) if spec.test_data else None)
    name, ref = _resolve_names(spec.model, dense)
    torch.manual_seed(spec.seed)  # model initialization is part of the run's seed
    if name.endswith(".pt") and os.path.isfile(name):
        from nestir.ir.serialize import load_graph

        graph, _ = load_graph(name)
        shape = tuple((graph.inputs[0].shape or ())[1:])
    else:
        module, shape = load_model(name)
        if spec.input_shape:
            shape = parse_shape(spec.input_shape)
        shape = shape or tuple(train.x.shape[1:])
        graph = trace(module, torch.zeros(2, *shape), name=name)
    if tuple(train.x.shape[1:]) != tuple(shape):
        raise NestirError(f"data '{spec.data}' has images of shape {tuple(train.x.shape[1:])} but the model "
                          f"'{spec.model}' takes {tuple(shape)}")
    out_width = graph.output and graph[graph.output.inputs[0]].shape[-1]  # type: ignore[index]
    if full.classes > out_width:
        raise NestirError(f"data '{spec.data}' has {full.classes} classes but the model has {out_width} outputs")
    if test is not None:
        if tuple(test.x.shape[1:]) != tuple(shape):
            raise NestirError(f"test data '{spec.test_data}' has images of shape {tuple(test.x.shape[1:])} but the "
                              f"model '{spec.model}' takes {tuple(shape)}")
        if test.classes > out_width:
            raise NestirError(f"test data '{spec.test_data}' has labels up to {test.classes - 1} but the model has "
                              f"{out_width} outputs")
    density = spec.seed_density
    if density is not None and not 0 < density <= 1:
        raise NestirError(f"--seed-density must be in (0, 1], got {density}")
    if density is None and not dense:
        density = ZOO[name].seed_density if name in ZOO else 1.0
    if density is not None and density < 1:
        sparsify_seed(graph, density, spec.seed)
    defaults: dict[str, Any] = {"seed": spec.seed}
    if ref is not None and ref in ZOO:
        defaults["max_params"] = stats(trace(ZOO[ref].factory(), torch.zeros(1, *shape)))["params"]
        defaults.update(dict(ZOO[ref].defaults))
    else:
        defaults["max_params"] = 2 * stats(graph)["params"]
    return Prepared(graph, splits, test, dev, ref, defaults, tuple(shape))


def dense_graph(prep: Prepared, spec: RunSpec) -> Graph:
    """The dense reference architecture: the zoo's dense model, or the user's model with every
    connection live."""
    name = prep.reference
    if name is not None and name in ZOO:
        return trace(ZOO[name].factory(), torch.zeros(2, *ZOO[name].input_shape), name=name)
    if spec.model.endswith(".pt"):
        g = prep.graph.copy()
    else:
        module, _ = load_model(spec.model)
        g = trace(module, torch.zeros(2, *prep.shape), name=spec.model)
    connect_all(g)
    return g


def final_metrics(graph: Graph, prep: Prepared, device: torch.device,
                  val_error: float | None = None) -> dict[str, Any]:
    """Size, cost and errors of a finished network. ``val_error``: the selection estimate taken
    when the network was kept (measured here when None); ``audit_error``: the unbiased one."""
    s = stats(graph)
    if val_error is None:
        val_error = evaluate(graph, prep.val.x, prep.val.y, device=device).error
    test = evaluate(graph, prep.test.x, prep.test.y, device=device).error if prep.test is not None else None
    out: dict[str, Any] = {"params": s["params"], "flops": s["flops"], "val_error": val_error}
    audit = prep.splits.audit
    if audit is not None:
        ev = evaluate(graph, audit.x, audit.y, device=device)
        wrong, n = int(ev.wrong.sum()), len(audit)
        out["audit_error"] = ev.error
        out["error_estimate"] = {"error": ev.error, "ci95": list(wilson(wrong, n)), "n": n,
                                 "method": AUDIT_METHOD.format(n=n)}
    out["test_error"] = test
    out["layers"] = [{k: r[k] for k in ("name", "layer", "neurons", "connections", "params", "flops")}
                     for r in s["layers"]]
    return out


def dense_reference(prep: Prepared, spec: RunSpec, cfg: SynthConfig, *, dense_epochs: int,
                    reporter: Any = None, store: RunStore | None = None) -> dict[str, Any]:
    """The dense reference under the shared recipe: ``dense_epochs`` on the training split
    (cosine-annealed; the same augmentation as every method), then the same final training as
    every method (``cfg.final_epochs`` more on train). It is the reported baseline, the teacher
    every method distils from and the reference every decision compares with, on validation
    images that neither it nor any candidate trained on. Returns it (``teacher`` and ``graph``)
    and its metrics. ``store``: the run directory's; each dense network is saved there as it is
    trained, and those an interrupted run saved are loaded instead of trained again (network i
    trains from its own seed, so the networks are the ones an uninterrupted run makes)."""
    import time

    t0 = time.perf_counter()
    data = prep.splits.to(prep.device)
    key = dense_key(cfg.to_dict(), dense_epochs, dict(spec.__dict__, device=None))
    nets = train_teachers(cfg.teachers, lambda i: dense_graph(prep, spec), data.train, dense_epochs,
                          cfg.final_epochs, cfg.recipe(), cfg.seed, reporter=reporter, device=prep.device,
                          teacher_final_epochs=cfg.teacher_final_epochs, teacher_augment=cfg.teacher_augment,
                          progress=store.dense_progress(key) if store is not None else None,
                          lr=cfg.lr, weight_decay=cfg.weight_decay)
    final = nets[0]
    s = stats(final)
    val = evaluate(final, data.val.x, data.val.y, device=prep.device).error
    row = {"step": 0, "phase": "dense", "params": s["params"], "flops": s["flops"], "val_error": val,
           "accepted": True, "epochs": dense_epochs + cfg.final_epochs, "seconds": round(time.perf_counter() - t0, 2),
           "note": "" if len(nets) == 1 else f"the first of {len(nets)} dense networks that teach together"}
    if reporter is not None:
        reporter.step(row)
    metrics = final_metrics(final, prep, prep.device, val_error=val)
    if len(nets) > 1:
        metrics["teachers"] = ensemble_metrics(nets, prep)
    return {"final": metrics, "phases": [row], "teacher": final, "ensemble": nets[1:],
            "graph": final, "wall_seconds": round(time.perf_counter() - t0, 2),
            "epochs": dense_epochs * len(nets) + cfg.final_epochs + cfg.teachers_final() * (len(nets) - 1)}


def ensemble_metrics(nets: list[Graph], prep: Prepared) -> dict[str, Any]:
    """Errors of the teachers' averaged logits (what the students learn from), next to each
    member's: the report shows how much better the ensemble is than the reference alone."""
    out: dict[str, Any] = {"count": len(nets)}
    for name, d in (("val", prep.val), ("audit", prep.splits.audit), ("test", prep.test)):
        if d is None:
            continue
        outs = [logits(g, d.x, device=prep.device) for g in nets]
        out[f"{name}_error"] = float((torch.stack(outs).mean(0).argmax(1).cpu() != d.y.cpu()).float().mean())
        out[f"{name}_errors"] = [float((o.argmax(1).cpu() != d.y.cpu()).float().mean()) for o in outs]
    return out


def write_outputs(out: str, graph: Graph, report: dict[str, Any], title: str, plots: bool = True) -> None:
    os.makedirs(out, exist_ok=True)
    write_models(out, graph, {"report": {k: v for k, v in report.items() if k in ("model", "data")}})
    write_history(os.path.join(out, "history.csv"), report.get("phases", []))
    if plots and report.get("phases"):
        plot_history(os.path.join(out, "history.png"), report["phases"], title, kept=report.get("kept_step"),
                     metric=report.get("metric"))
        plot_first_layer(os.path.join(out, "first_layer.png"), graph)
    write_json(os.path.join(out, "report.json"), report)



