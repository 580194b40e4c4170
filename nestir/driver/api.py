"""``nestir.synthesize``: NeST (or pruning only) on the user's own model, loaders, loss and metric.

The loaders are read into memory on the CPU (for the decisions, the scoring and the soft
targets), each ``(inputs, targets)`` batch checked against the traced model before any training;
every training epoch then reads the train loader again (one pass, with its own order, random
augmentation and batch size; ``loader_epochs=False`` trains on the first read instead). Training
from a streaming loader for data sets that do not fit in memory is planned in docs/scale.md.

The flow is the CLI's: a dense reference (the user's model, trained under the run's recipe
unless ``dense_epochs=0`` says it is trained already), then growth, the pruning chain, the
selection and the final training (on train).

In a ``torch.distributed`` process group (torchrun) each rank passes its loaders, sharded (a
``DistributedSampler``) or not: :func:`nestir.driver.shards.union` makes one data set of them in which
every sample counts once; every rank computes its share of each batch, gradients and
statistics are summed over the ranks, and rank 0 alone writes the run directory."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from nestir.backends import dist
from nestir.backends.device import resolve_device
from nestir.driver.batches import Stream
from nestir.driver.data import Dataset, Splits
from nestir.driver.pipeline import as_batches
from nestir.driver.recipe import Reporter, train_teachers
from nestir.driver.rundir import check_out_dir, clear_run, holds_run
from nestir.driver.runstore import RunStore, dense_key
from nestir.driver.shards import union
from nestir.driver.synthesis import SynthConfig, Synthesizer, score, sparsify_seed
from nestir.frontend.tracer import trace
from nestir.ir.checks import check_batches, check_loss, check_seed, require_single_output
from nestir.ir.edit import connect_all
from nestir.ir.errors import ArgumentError, DataError
from nestir.ir.graph import Graph
from nestir.ir.serialize import check_storable, graph_state
from nestir.ir.stats import stats

log = logging.getLogger(__name__)
Metric = Callable[[torch.Tensor, torch.Tensor], Any]

_FIELDS = {f.name for f in dataclasses.fields(SynthConfig)}
_OWN = {"dense_epochs", "seed_density", "metric_tolerance", "reporter", "resume", "force", "loader_epochs"}


@dataclass
class SynthesisResult:
    """What :func:`synthesize` returns: the kept network and the ``report.json`` dict."""

    graph: Graph
    report: dict[str, Any]
    baseline: Graph | None = None  # the dense reference the report's baseline describes

    def to_torch(self, **kw: Any) -> nn.Module:
        """The kept network as a PyTorch module (:meth:`nestir.Graph.to_torch`: ``masks=True`` keeps
        pruned weights at zero under fine-tuning)."""
        return self.graph.to_torch(**kw)


def collect_loader(loader: Any, name: str, graph: Graph, loss: Any, reporter: Reporter | None = None,
                   reread: bool = False) -> Dataset:
    """``loader``'s batches, checked against ``graph``, as one data set in memory (the common one
    of every rank under torch.distributed). ``reread``: training reads the loader again for each
    epoch (see :func:`nestir.driver.recipe.stint`)."""
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
    # under torch.distributed: every rank holds the same data set, each sample once (however the
    # loaders were sharded), and computes its share of each batch (nestir.backends.dist.shard)
    x, y, note = union(x, y)
    if note:
        (reporter.message if reporter is not None else log.info)(f"{name}: {note}")
    return Dataset(x, y, name, _rereader(loader) if reread else None)


def _rereader(loader: Any) -> Callable[[], tuple[torch.Tensor, torch.Tensor]] | None:
    """One more pass of a loader that can be iterated again (a DataLoader: its own order and
    random augmentation each time), as every rank's common data set; None for a one-shot iterator."""
    if isinstance(loader, Iterator):  # read once already (asking a DataLoader for an iterator would start its workers)
        return None
    passes = [0]

    def reread() -> tuple[torch.Tensor, torch.Tensor]:
        passes[0] += 1
        sampler = getattr(loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):  # a DistributedSampler shuffles anew each epoch
            sampler.set_epoch(passes[0])
        batches = as_batches(loader, torch.device("cpu"))
        x, y, _ = union(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
        return x, y

    return reread


def _check_loss_output(graph: Graph, data: Dataset, loss: Any) -> None:
    """The loss on a few training samples must be one finite number (``reduction='none'`` or a
    loss that returns a tuple would fail deep inside the training otherwise)."""
    if loss is None:
        return
    from nestir.ir.interpreter import IRModule

    x, y = data.x[:8], data.y[:8]
    with torch.no_grad():
        out = IRModule(graph.copy(), torch.device("cpu"))(x)
    try:
        value = loss(out, y)
    except Exception as e:
        raise ArgumentError(f"synthesize: loss(outputs, targets) failed on the first training samples (outputs "
                            f"{tuple(out.shape)}, targets {tuple(y.shape)}): {type(e).__name__}: {e}") from None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ArgumentError(f"synthesize: loss(outputs, targets) must return one number (a scalar tensor), got "
                            f"{shape}: use reduction='mean' (not 'none'), or average the loss yourself")
    if not bool(torch.isfinite(value).all()):
        raise ArgumentError(f"synthesize: loss(outputs, targets) is {float(value)} on the first training samples")


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
    from nestir.ir.interpreter import IRModule

    dev = resolve_device(device)
    mod = IRModule(graph.copy(), dev).eval()
    wrong, n = 0, 0
    with torch.no_grad():
        for x, y in Stream(loader, dev, check=lambda b, i: check_batches(b, graph, None, start=i)):
            wrong += int((mod(x).argmax(1) != y).sum())
            n += y.shape[0]
    return wrong / max(1, n)


def _measure(graph: Graph, synth: Synthesizer, data: Dataset, selection: float | None) -> dict[str, Any]:
    """Size, cost and validation figures of ``graph``. ``selection``: the error the selection read
    (1 - metric with a custom metric). With a custom metric (or the negative loss of a regression)
    the report gives the metric itself, ``val_metric``, and no ``val_error``."""
    s = stats(graph)
    m = synth.score(graph, data)
    row: dict[str, Any] = {"params": s["params"], "flops": s["flops"]}
    if synth.metric is None:
        row.update({"val_error": selection if selection is not None else 1 - m,
                    "val_error_after_final_training": 1 - m})
    else:
        row.update({"val_error": None, "val_metric": 1 - selection if selection is not None else m,
                    "val_metric_after_final_training": m})
    row["test_error"] = None
    row["layers"] = [{k: r[k] for k in ("name", "layer", "neurons", "connections", "params", "flops")}
                     for r in s["layers"]]
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
    outputs (a temporary one when None). ``options``: any :class:`nestir.driver.synthesis.SynthConfig`
    field (``method="prune"``, ``final_epochs``, ``trial_epochs``, ``tolerance``, ``seed`` ...),
    plus ``dense_epochs`` (40; 0: the model is trained already and is the reference as given),
    ``seed_density`` (1.0: the model itself is the seed, which is as large as the dense budget, so
    NeST only prunes it; 0.1 or so to grow), ``target_params`` / ``target_flops`` (a size target:
    the least pruned network within it is kept and its accuracy against dense reported),
    ``loader_epochs`` (True: each epoch one pass of ``train``, at the loader's batch size),
    ``resume`` (continue the run in ``out``, from its last checkpoint or, when it stopped in its
    dense phase, after the last dense network saved), ``force`` (start over in ``out``) and ``reporter``
    (progress callbacks). Every option is checked before any training, and nothing is written to
    ``out`` before the checks pass. A target is never lowered: the report's ``target`` says what
    was asked, what the kept network reached and, when they differ, why."""
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
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ArgumentError(f"synthesize: seed_density must be in (0, 1] (1: the model itself is the seed), "
                            f"got {density!r}")
    resume, force = bool(options.pop("resume", False)), bool(options.pop("force", False))
    loader_epochs = bool(options.pop("loader_epochs", True))
    if out is not None:
        check_out_dir(out, "synthesize: out=")
        if resume and not os.path.isfile(os.path.join(out, "checkpoint.pt")) and not RunStore(out).has_dense():
            raise ArgumentError(f"synthesize: nothing to resume in '{out}' (no checkpoint.pt, no dense networks)")
        if not resume and not force and holds_run(out):
            raise ArgumentError(f"synthesize: '{out}' already holds a run: resume=True (CLI: --resume {out}, with "
                                "the same MODEL and --data) to continue it, force=True (--force) to start over")
    elif resume:
        raise ArgumentError("synthesize: resume=True needs out= (the run directory to continue)")
    dev = resolve_device(device)
    t0 = time.perf_counter()

    # every check that can run before training runs here, and nothing is written before they pass
    torch.manual_seed(seed)
    dense = trace(model, example_inputs)
    require_single_output(dense, "synthesize")
    check_storable(dense, "synthesize cannot train this model (its checkpoints cannot store code)",
                   "Fix: write those ops with layers nestir knows, or make the block a leaf module.")
    connect_all(dense)
    splits = Splits(collect_loader(train, "train", dense, loss, reporter, reread=loader_epochs),
                    collect_loader(val, "val", dense, loss, reporter))
    _check_loss_output(dense, splits.train, loss)
    size = stats(dense)["params"]
    cfg_kw: dict[str, Any] = {"max_params": max_params if max_params is not None else 2 * size, **options}
    loader_batch = getattr(train, "batch_size", None)
    if loader_epochs and "batch_size" not in options and isinstance(loader_batch, int) and loader_batch > 0:
        cfg_kw["batch_size"] = loader_batch  # the loader's own batch size
    if target is not None and metric is None:
        cfg_kw["target_accuracy"] = float(target)
    try:
        cfg = SynthConfig(**cfg_kw)
    except TypeError as e:
        raise ArgumentError(f"synthesize: {e}") from None
    cfg.check()
    seed_graph = dense.copy() if cfg.method != "prune" else None
    if seed_graph is not None and density < 1:
        sparsify_seed(seed_graph, density, seed)
    if seed_graph is not None and cfg.max_params and stats(seed_graph)["params"] > cfg.max_params:
        raise ArgumentError(f"synthesize: the budget max_params={cfg.max_params} is smaller than the seed "
                            f"({stats(seed_graph)['params']} params): raise it or start from a sparser seed "
                            "(seed_density)")

    metric_name = getattr(metric, "__name__", "custom") if metric is not None else "accuracy"
    regression = metric is None and loss is not None and not _class_labels(splits.train.y)
    if regression:  # targets that are not class labels (regression, dense targets) and no metric
        metric, metric_name = _negative_loss(loss), "negative validation loss"
    if resume and os.path.isfile(os.path.join(out, "checkpoint.pt")):  # type: ignore[arg-type]
        # the checkpoint holds the dense reference, the configuration and the target
        return _resume(out, splits, dev, reporter, loss, metric, model, seed, metric_name, t0)  # type: ignore[arg-type]

    # the dense reference: trained under the run's recipe (labels only), or the model as given; with
    # out=, each dense network is saved as it is trained, and a resumed dense phase loads those saved
    store = None
    if out is not None:
        if dist.is_main():
            if force:
                clear_run(out)  # nothing of the old run may pass for the new one's
            os.makedirs(out, exist_ok=True)
        dist.barrier()
        store = RunStore(out)
    count = cfg.teachers if dense_epochs else 1  # dense_epochs 0: the model as given
    key = dense_key(cfg.to_dict(), dense_epochs, graph_state(dense))
    data = splits.to(dev)
    nets = train_teachers(
        count, lambda i: dense.copy() if i == 0 else _fresh(model, example_inputs), data.train,
        dense_epochs, cfg.final_epochs if dense_epochs else 0, cfg.recipe(), seed,
        teacher_final_epochs=cfg.teacher_final_epochs, teacher_augment=cfg.teacher_augment,
        progress=store.dense_progress(key) if store is not None else None,
        reporter=reporter, device=dev, lr=cfg.lr, weight_decay=cfg.weight_decay, loss=loss)
    teacher = nets[0]

    if regression:
        # keep the validation loss, within metric_tolerance (default: 2% of the dense reference's loss)
        if given_tolerance is None:
            ref = score(teacher, data.val, metric=metric, loss=loss, device=dev)
            metric_tolerance = 0.02 * abs(ref)
    metric_target = None
    if metric is not None:  # the value to keep: the user's target, or the dense reference's on val
        metric_target = (float(target) if target is not None
                         else score(teacher, data.val, metric=metric, loss=loss, device=dev) - metric_tolerance)

    start = teacher.copy() if seed_graph is None else seed_graph

    def run(directory: str) -> SynthesisResult:
        synth = Synthesizer(start, splits, cfg, directory, device=dev, reporter=reporter, teacher=teacher,
                            ensemble=nets[1:], loss=loss, metric=metric, metric_target=metric_target)
        return _finish(synth, model, seed, metric_name, t0)

    if out is None:  # a temporary run directory, shared by the ranks (rank 0 makes it)
        tmp = tempfile.mkdtemp(prefix="nestir-") if dist.is_main() else None
        d = str(dist.broadcast_object(tmp))
        try:
            return run(d)
        finally:
            dist.barrier()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return _write(out, run(out))


def _finish(synth: Synthesizer, model: nn.Module, seed: int, metric_name: str, t0: float) -> SynthesisResult:
    """Run ``synth`` to the end and build the report."""
    state = synth.run()
    teacher = synth.teacher
    assert teacher is not None
    splits_val = synth.data.val
    report = {
        "model": type(model).__name__, "method": synth.cfg.method, "data": "user loaders", "test_data": None,
        "seed": seed, "final": _measure(synth.graph, synth, splits_val, synth.selection.get("val_error")),
        "baseline": _measure(teacher, synth, splits_val, None), "phases": state.history,
        "kept_step": synth.selection.get("step"), "rule": state.rule, "resolution": synth.resolution,
        "target_accuracy": state.target, "target": synth.target_report(),
        "target_reached": state.target_reached, "growth_stopped": state.growth_stopped,
        "wall_seconds": round(time.perf_counter() - t0, 2), "device": str(synth.dev), "config": synth.cfg.to_dict(),
        "metric": metric_name,
    }
    return SynthesisResult(synth.graph, report, teacher)


def _write(out: str, result: SynthesisResult) -> SynthesisResult:
    from nestir.driver.runs import write_outputs

    if dist.is_main():
        write_outputs(out, result.graph, result.report, f"{result.report['method']} on {result.report['model']}")
    dist.barrier()
    return result


def _resume(out: str, splits: Splits, dev: torch.device, reporter: Reporter | None, loss: Any, metric: Metric | None,
            model: nn.Module, seed: int, metric_name: str, t0: float) -> SynthesisResult:
    """Continue the run in ``out`` from its checkpoint (its configuration, dense reference and
    target; the loaders must give the same data)."""
    synth = Synthesizer.resume(out, splits, dev, reporter, loss=loss, metric=metric)  # type: ignore[arg-type]
    if reporter is not None:
        reporter.message(f"resuming '{out}' at phase {synth.state.phase}, step {synth.state.step}")
    return _write(out, _finish(synth, model, seed, metric_name, t0))
