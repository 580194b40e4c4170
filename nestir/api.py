"""``nestir.synthesize``: NeST (or pruning only) on the user's own model, loaders, loss and metric.

The data are read from the loaders once, into memory on the CPU (training from a streaming
loader, for data sets that do not fit, is planned in docs/scale.md); each ``(inputs, targets)`` batch is checked
against the traced model before any training. The flow is the CLI's: a dense reference (the
user's model, trained under the run's recipe unless ``dense_epochs=0`` says it is trained
already), then growth, the pruning chain, the selection and the final training (on train).

In a ``torch.distributed`` process group (torchrun) each rank passes its own shard of the data;
the ranks exchange their shards once, every rank computes its share of each batch, gradients and
statistics are summed over the ranks, and rank 0 alone writes the run directory."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from . import dist
from .backends.device import resolve_device
from .batches import Stream
from .checks import check_batches, check_loss, check_seed
from .data import Dataset, Splits
from .edit import connect_all
from .errors import ArgumentError, DataError
from .frontend import trace
from .graph import Graph
from .pipeline import as_batches
from .recipe import Reporter, train_teachers
from .serialize import check_storable
from .stats import stats
from .synthesis import SynthConfig, Synthesizer, score, sparsify_seed

Metric = Callable[[torch.Tensor, torch.Tensor], Any]

_FIELDS = {f.name for f in dataclasses.fields(SynthConfig)}
_OWN = {"dense_epochs", "seed_density", "metric_tolerance", "reporter"}


@dataclass
class SynthesisResult:
    """What :func:`synthesize` returns: the kept network and the ``report.json`` dict."""

    graph: Graph
    report: dict[str, Any]
    baseline: Graph | None = None  # the dense reference the report's baseline describes

    def to_torch(self) -> nn.Module:
        return self.graph.to_torch()


def _collect(loader: Any, name: str, graph: Graph, loss: Any) -> Dataset:
    if loader is None:
        raise ArgumentError(f"synthesize: {name}= is required (a DataLoader or an iterable of (inputs, targets))")
    try:
        batches = as_batches(loader, torch.device("cpu"))
    except (TypeError, ValueError) as e:
        raise DataError(f"synthesize: {name}= could not be read as (inputs, targets) batches ({e})") from None
    check_batches(batches, graph, loss)
    shapes = {tuple(y.shape[1:]) for _, y in batches}
    if len(shapes) != 1:
        raise DataError(f"synthesize: {name}= batches have targets of different per-sample shapes {sorted(shapes)}")
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    # under torch.distributed each rank gives its shard (a DistributedSampler): every rank holds
    # the union, in rank order, and computes its share of each batch (nestir.dist.shard)
    return Dataset(dist.gather_cat(x), dist.gather_cat(y), name)


def _fresh(model: nn.Module, example_inputs: Any) -> Graph:
    """The model traced with a new random initialisation (another dense teacher), every
    connection live; the caller's module is left as it is."""
    m = copy.deepcopy(model)
    for sub in m.modules():
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()
    g = trace(m, example_inputs)
    connect_all(g)
    return g


def _class_labels(y: torch.Tensor) -> bool:
    return y.dim() == 1 and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool


def _negative_loss(loss: Any) -> Metric:
    def negative_loss(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return -float(loss(outputs, targets))

    return negative_loss


def classification_error(graph: Graph, loader: Any, device: Any = None) -> float:
    """Classification error of ``graph`` on a loader of ``(inputs, labels)`` batches, streamed
    (for reporting only: nothing is selected on it)."""
    from .backends.executor import IRModule

    dev = resolve_device(device)
    mod = IRModule(graph.copy(), dev).eval()
    wrong, n = 0, 0
    with torch.no_grad():
        for x, y in Stream(loader, dev, check=lambda b, i: check_batches(b, graph, None, start=i)):
            wrong += int((mod(x).argmax(1) != y).sum())
            n += y.shape[0]
    return wrong / max(1, n)


def _measure(graph: Graph, synth: Synthesizer, data: Dataset, selection: float | None) -> dict[str, Any]:
    s = stats(graph)
    m = synth.score(graph, data)
    err = 1 - m  # with a custom metric: 1 - metric
    row = {"params": s["params"], "flops": s["flops"],
           "val_error": selection if selection is not None else err, "val_error_after_final_training": err,
           "test_error": None,
           "layers": [{k: r[k] for k in ("name", "layer", "neurons", "connections", "params", "flops")}
                      for r in s["layers"]]}
    if synth.metric is not None:  # the metric itself, after the final training
        row["val_metric"] = m
    return row


def synthesize(model: nn.Module, example_inputs: Any, *, train: Any, val: Any, loss: Any = None,
               metric: Metric | None = None, target: float | None = None, max_params: int | None = None,
               device: Any = None, out: str | None = None, **options: Any) -> SynthesisResult:
    """NeST on ``model`` with the user's loaders; returns ``.graph`` and ``.report``.

    ``train``/``val``: iterables of ``(inputs, targets)`` batches (DataLoaders). ``loss(outputs,
    targets)`` defaults to cross-entropy; ``metric(outputs, targets)`` (higher is better, averaged
    over ``val``) to accuracy, or, with a ``loss`` and targets that are not class labels (float or
    multi-dimensional targets: regression), to the negative validation loss. ``target``: the
    metric value the kept network must keep on ``val`` (default: the paired comparison with the
    dense reference for accuracy, or the dense reference's metric minus ``metric_tolerance`` for
    another metric; for the negative loss the default tolerance is 2% of the reference's loss). ``max_params``: the size
    budget S (default twice the model's). ``out``: a run directory for the checkpoint and the
    outputs (a temporary one when None). ``options``: any :class:`nestir.synthesis.SynthConfig`
    field (``method="prune"``, ``final_epochs``, ``trial_epochs``, ``tolerance``, ``seed`` ...),
    plus ``dense_epochs`` (40; 0: the model is trained already and is the reference as given),
    ``seed_density`` (1.0: the model itself is the seed) and ``reporter`` (progress callbacks)."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"synthesize: model must be a torch.nn.Module, got {type(model).__name__}")
    check_loss(loss, "synthesize")
    if metric is not None and not callable(metric):
        raise ArgumentError(f"synthesize: metric must be callable, metric(outputs, targets) -> number, "
                            f"got {type(metric).__name__}")
    unknown = sorted(set(options) - _FIELDS - _OWN)
    if unknown:
        raise ArgumentError(f"synthesize: unknown option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(_FIELDS | _OWN))}")
    dense_epochs = options.pop("dense_epochs", 40)
    density = options.pop("seed_density", 1.0)
    given_tolerance = options.pop("metric_tolerance", None)
    metric_tolerance = float(given_tolerance) if given_tolerance is not None else 0.0
    reporter: Reporter | None = options.pop("reporter", None)
    if isinstance(dense_epochs, bool) or not isinstance(dense_epochs, int) or dense_epochs < 0:
        raise ArgumentError(f"synthesize: dense_epochs must be an integer >= 0, got {dense_epochs!r}")
    seed = check_seed(options.get("seed", 0), "synthesize")
    dev = resolve_device(device)
    t0 = time.perf_counter()

    torch.manual_seed(seed)
    dense = trace(model, example_inputs)
    check_storable(dense, "synthesize cannot train this model (its checkpoints cannot store code)",
                   "Fix: write those ops with layers nestir knows, or make the block a leaf module.")
    connect_all(dense)
    splits = Splits(_collect(train, "train", dense, loss), _collect(val, "val", dense, loss))
    size = stats(dense)["params"]
    cfg_kw: dict[str, Any] = {"max_params": max_params if max_params is not None else 2 * size, **options}
    if target is not None and metric is None:
        cfg_kw["target_accuracy"] = float(target)
    try:
        cfg = SynthConfig(**cfg_kw)
    except TypeError as e:
        raise ArgumentError(f"synthesize: {e}") from None
    cfg.check()

    # the dense reference: trained under the run's recipe (labels only), or the model as given
    data = splits.to(dev)
    nets = train_teachers(cfg.teachers if dense_epochs else 1,  # dense_epochs 0: the model as given
                          lambda i: dense.copy() if i == 0 else _fresh(model, example_inputs), data.train,
                          dense_epochs, cfg.final_epochs if dense_epochs else 0, cfg.recipe(), seed,
                          reporter=reporter, device=dev, lr=cfg.lr, weight_decay=cfg.weight_decay, loss=loss)
    teacher = nets[0]

    metric_name = getattr(metric, "__name__", "custom") if metric is not None else "accuracy"
    if metric is None and loss is not None and not _class_labels(splits.train.y):
        # targets that are not class labels (regression, dense targets) and no metric: keep the
        # validation loss, within metric_tolerance (default: 2% of the dense reference's loss)
        metric, metric_name = _negative_loss(loss), "negative validation loss"
        if given_tolerance is None:
            ref = score(teacher, data.val, metric=metric, loss=loss, device=dev)
            metric_tolerance = 0.02 * abs(ref)
    metric_target = None
    if metric is not None:  # the value to keep: the user's target, or the dense reference's on val
        metric_target = (float(target) if target is not None
                         else score(teacher, data.val, metric=metric, loss=loss, device=dev) - metric_tolerance)

    start = teacher.copy() if cfg.method == "prune" else dense.copy()
    if cfg.method != "prune" and density < 1:
        sparsify_seed(start, density, seed)

    def run(directory: str) -> SynthesisResult:
        synth = Synthesizer(start, splits, cfg, directory, device=dev, reporter=reporter, teacher=teacher,
                            ensemble=nets[1:], loss=loss, metric=metric, metric_target=metric_target)
        state = synth.run()
        baseline = _measure(teacher, synth, splits.val, None)
        report = {
            "model": type(model).__name__, "method": cfg.method, "data": "user loaders", "test_data": None,
            "seed": seed, "final": _measure(synth.graph, synth, splits.val, synth.selection.get("val_error")),
            "baseline": baseline, "phases": state.history, "kept_step": synth.selection.get("step"),
            "rule": state.rule, "resolution": synth.resolution,
            "target_accuracy": state.target,
            "target_reached": state.target_reached, "growth_stopped": state.growth_stopped,
            "wall_seconds": round(time.perf_counter() - t0, 2), "device": str(synth.dev), "config": cfg.to_dict(),
            "metric": metric_name,
        }
        return SynthesisResult(synth.graph, report, teacher)

    if out is None:  # a temporary run directory, shared by the ranks (rank 0 makes it)
        tmp = tempfile.mkdtemp(prefix="nestir-") if dist.is_main() else None
        d = str(dist.broadcast_object(tmp))
        try:
            return run(d)
        finally:
            dist.barrier()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    if dist.is_main():
        os.makedirs(out, exist_ok=True)
    dist.barrier()
    result = run(out)
    from .runs import write_outputs

    if dist.is_main():
        write_outputs(out, result.graph, result.report, f"{cfg.method} on {type(model).__name__}")
    dist.barrier()
    return result
