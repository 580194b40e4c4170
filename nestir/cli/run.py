"""CLI verbs that train: synthesize, prune-baseline, apply (with a rich progress display)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

from nestir.backends import dist
from nestir.driver.loading import is_data_factory
from nestir.driver.rundir import check_out_dir, clean_temp_files, clear_run
from nestir.driver.runs import RunSpec, dense_reference, final_metrics, prepare, write_outputs
from nestir.driver.runstore import RunStore
from nestir.driver.synthesis import SynthConfig, Synthesizer
from nestir.driver.zoo import ZOO
from nestir.ir.errors import ArgumentError, NestirError
from nestir.passes.magnitude_prune import SCOPES


class RichReporter:
    """Progress on phases and epochs, one line per step, a summary table at the end. When stderr
    is not a terminal (a log file, ``nohup``), where a progress bar shows nothing, a long phase
    prints a line every ``HEARTBEAT`` seconds instead: a full-MNIST dense network trains for
    minutes before the first step's line."""

    HEARTBEAT = 30.0

    def __init__(self, quiet: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, quiet=quiet)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.task: Any = None
        self.log = not self.console.is_terminal  # progress as lines, not a bar
        self._name, self._start, self._beat = "", 0.0, 0.0
        self.clock = time.monotonic

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(name, total=total, loss=float("nan"))
        self._name, self._start = name, self.clock()
        self._beat = self._start

    def epoch(self, done: int, total: int, loss: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done, loss=loss)
        now = self.clock()
        if self.log and (now - self._beat >= self.HEARTBEAT or (done == total and self._beat > self._start)):
            self._beat = now  # the last epoch of a phase that printed a heartbeat prints too
            self.console.print(f"  {self._name}: epoch {done}/{total}, loss {loss:.4f}, "
                               f"{_clock(now - self._start)}", highlight=False)

    def step(self, row: dict[str, Any]) -> None:
        judged = (f"val metric {row['val_metric']:.5g}" if "val_metric" in row
                  else f"val error {100 * row['val_error']:5.2f}%")
        self.console.print(f"[bold]{row['phase']:>6}[/] step {row['step']:>3}  params {row['params']:>8}  "
                           f"FLOPs {row['flops']:>9}  {judged}  [dim]{row.get('note', '')}[/]")

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]{text}[/]")

    def summary(self, report: dict[str, Any]) -> None:
        from rich.table import Table

        t = Table(title=f"nestir: {report['model']} on {report['data']}")
        metric = any(r and r.get("val_error") is None for r in (report.get("baseline"), report.get("final")))
        judged = f"val {report.get('metric', 'metric')}" if metric else "val error (selection)"
        for col in ("", "params", "FLOPs", judged, "audit error (unbiased)", "test error"):
            t.add_column(col, justify="right")
        for key in ("baseline", "final"):
            r = report.get(key)
            if r:
                te = "-" if r.get("test_error") is None else f"{100 * r['test_error']:.2f}%"
                au = "-" if r.get("audit_error") is None else f"{100 * r['audit_error']:.2f}%"
                v = f"{r['val_metric']:.5g}" if r.get("val_error") is None else f"{100 * r['val_error']:.2f}%"
                t.add_row(key, str(r["params"]), str(r["flops"]), v, au, te)
        type(self.console)(quiet=self.console.quiet).print(t)  # the table goes to stdout


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


def _run_spec(args: argparse.Namespace) -> RunSpec:
    return RunSpec(model=args.model, data=args.data, test_data=args.test_data, val_fraction=args.val_fraction,
                   seed_density=args.seed_density, device=args.device, input_shape=args.input_shape,
                   seed=args.seed if args.seed is not None else 0,
                   audit_fraction=getattr(args, "audit_fraction", 0.1),
                   **{k: getattr(args, k) for k in ("max_val", "max_audit") if getattr(args, k, None) is not None})


def _config(args: argparse.Namespace, defaults: dict[str, Any], method: str) -> SynthConfig:
    kw = {f.name: getattr(args, f.name) for f in SynthConfig.__dataclass_fields__.values()
          if getattr(args, f.name, None) is not None}
    return SynthConfig.for_method(method, **{**defaults, **kw})


def _default_out(model: str, method: str) -> str:
    return os.path.join("runs", model.replace(":", "_").replace("/", "_") + ("-prune" if method == "prune" else ""))


def _run(args: argparse.Namespace, method: str) -> int:
    """synthesize (NeST) and prune-baseline (pruning only): one driver, one recipe. The dense
    reference is trained first under the same recipe; it is the baseline of the report, the
    teacher that growth, shift, pruning and refit distil from, and the reference every
    keep-or-reject decision is compared with."""
    if args.dense_epochs < 0:
        raise NestirError(f"--dense-epochs must be >= 0 (0: the model is trained already), got {args.dense_epochs}")
    if args.data and is_data_factory(args.data):
        return _run_on_loaders(args, method)
    resumed: dict[str, Any] = {}
    out = args.resume or args.out or (_default_out(args.model, method) if args.model else None)
    if args.resume:
        spec, resumed = _read_run(out, args, method)
        clean_temp_files(out)
    else:
        if args.model is None:
            raise NestirError(f"{args.cmd} needs a MODEL (or --resume DIR)")
        spec = _run_spec(args)
        check_out_dir(out)
        if os.path.isfile(os.path.join(out, "checkpoint.pt")) or os.path.isfile(os.path.join(out, "run.json")):
            if not args.force:
                raise NestirError(f"'{out}' already holds a run: --resume {out} to continue it, --force to start over")
    dist.barrier()  # every rank has read the run directory before rank 0 writes to it
    prep = prepare(spec)
    _check_storable(prep, args.cmd)
    t0 = time.perf_counter()
    title = f"NeST on {spec.model}" if method == "nest" else f"pruning only: {spec.model}"
    with RichReporter(args.quiet or not dist.is_main()) as rep:
        if args.resume and os.path.isfile(os.path.join(out, "checkpoint.pt")):
            synth = Synthesizer.resume(out, prep.splits, spec.device, rep)
            baseline = _match_checkpoint(out, spec, synth.meta, resumed.get("baseline"))
            rep.message(f"resuming '{out}' at phase {synth.state.phase}, step {synth.state.step}")
        else:
            synth, baseline = _start(args, method, out, spec, prep, rep, resumed)
        try:
            state = synth.run()
        except KeyboardInterrupt:
            raise NestirError(f"interrupted; the last completed step is saved: "
                              f"nestir {args.cmd} --resume {out}") from None
        report = {
            "model": spec.model, "method": method, "data": spec.data, "test_data": spec.test_data,
            "seed": spec.seed,
            "final": final_metrics(synth.graph, prep, synth.dev, val_error=synth.selection.get("val_error")),
            "phases": state.history, "kept_step": synth.selection.get("step"), "rule": state.rule,
            "resolution": synth.resolution,
            "target_accuracy": state.target, "target_reached": state.target_reached,
            "target": synth.target_report(),
            "growth_stopped": state.growth_stopped, "wall_seconds": round(state.wall, 2), "device": str(synth.dev),
            "config": synth.cfg.to_dict(),
            # this invocation, from the loaded data and model to the report: the dense reference too
            "command_seconds": round(time.perf_counter() - t0, 2),
        }
        if baseline is not None:
            report["baseline"] = baseline
        if dist.world() > 1:
            report["world_size"] = dist.world()
        if not dist.is_main():
            return 0
        write_outputs(out, synth.graph, report, title)
        rep.summary(report)
    print(f"wrote {out}/report.json, model.onnx, model.pt, history.csv, plots ({time.perf_counter() - t0:.0f} s)")
    return 0


def _start(args: argparse.Namespace, method: str, out: str, spec: RunSpec, prep: Any, rep: Any,
           resumed: dict[str, Any]) -> tuple[Synthesizer, dict[str, Any]]:
    """A new run, or one stopped in its dense phase (``resumed``: its run.json): the dense
    reference and its teachers (each saved in ``out/dense`` as it is trained, so that a run
    stopped there resumes after the last one saved), then the synthesizer."""
    from nestir.driver.report import write_json
    from nestir.ir.stats import stats

    if resumed:
        cfg, dense_epochs = resumed["config"], resumed["dense_epochs"]
        rep.message(f"resuming '{out}' in its dense phase")
    else:
        cfg, dense_epochs = _config(args, prep.defaults, method), args.dense_epochs
        cfg.check()
        seed_params = stats(prep.graph)["params"]
        if method == "nest" and cfg.max_params and seed_params > cfg.max_params:
            raise NestirError(f"the budget --max-params {cfg.max_params} is smaller than the seed "
                              f"({seed_params} params): raise it or start from a smaller seed")
        if dist.is_main():
            if args.force:
                clear_run(out)  # nothing of the old run may pass for the new one's
            os.makedirs(out, exist_ok=True)
    run = {"spec": spec.__dict__, "config": cfg.to_dict(), "dense_epochs": dense_epochs, "baseline": None}
    if dist.is_main() and not resumed:  # what a run stopped in the dense phase resumes with
        write_json(os.path.join(out, "run.json"), run)
    dist.barrier()
    try:
        dense = dense_reference(prep, spec, cfg, dense_epochs=dense_epochs, reporter=rep, store=RunStore(out))
    except KeyboardInterrupt:
        raise NestirError(f"interrupted in the dense phase; the dense networks trained so far are saved: "
                          f"nestir {args.cmd} --resume {out}") from None
    baseline = dense["final"]
    rep.message(f"dense reference: validation error {baseline['val_error']:.2%}; every step is accepted "
                + ("by a paired comparison with it" if not cfg.target_accuracy
                   else f"when validation accuracy >= {cfg.target_accuracy:.2%}"))
    if dist.is_main():
        write_json(os.path.join(out, "run.json"), {**run, "baseline": baseline})
    dist.barrier()
    start = dense["teacher"].copy() if method == "prune" else prep.graph
    synth = Synthesizer(start, prep.splits, cfg, out, spec.device, rep, teacher=dense["teacher"],
                        ensemble=dense["ensemble"], meta={"spec": dict(spec.__dict__), "baseline": baseline})
    return synth, baseline


def _run_on_loaders(args: argparse.Namespace, method: str) -> int:
    """``--data file.py:factory``: the user's loaders (and loss-free classification) through
    :func:`nestir.synthesize`, the same flow as the built-in data."""
    import torch

    from nestir.driver.api import synthesize

    if args.model is None:
        raise NestirError(f"{args.cmd} needs a MODEL (a run on your loaders resumes with the same MODEL and --data)")
    out = args.resume or args.out or _default_out(args.model, method)
    check_out_dir(out)
    model, shape, train, val, test = _model_and_loaders(args)
    cfg = _config(args, {}, method)
    options = {k: v for k, v in cfg.to_dict().items() if k != "max_params"}
    if args.batch_size is None:
        del options["batch_size"]  # the loader's own batch size
    if args.seed_density is not None:
        options["seed_density"] = args.seed_density
    if args.resume:
        options["resume"] = True
    if args.force:
        options["force"] = True
    t0 = time.perf_counter()
    with RichReporter(args.quiet or not dist.is_main()) as rep:
        r = synthesize(model, torch.zeros(1, *shape), train=train, val=val, max_params=cfg.max_params or None,
                       device=args.device, out=out, dense_epochs=args.dense_epochs, reporter=rep, **options)
        if test is not None:
            from nestir.driver.api import classification_error

            for key, g in (("final", r.graph), ("baseline", r.baseline)):
                r.report[key]["test_error"] = classification_error(g, test, args.device)
            if dist.is_main():
                from nestir.driver.report import write_json

                write_json(os.path.join(out, "report.json"), r.report)
        if dist.is_main():
            rep.summary(r.report)
    if dist.is_main():
        print(f"wrote {out}/report.json, model.onnx, model.pt, history.csv, plots ({time.perf_counter() - t0:.0f} s)")
    return 0


def _model_and_loaders(args: argparse.Namespace) -> tuple[Any, tuple[int, ...], Any, Any, Any]:
    """MODEL and ``--data file.py:factory``: the module, its per-sample input shape (``--input-shape``,
    the model's own, or the first training batch's) and the (train, val, test) loaders."""
    import torch

    from nestir.driver.batches import describe_batch
    from nestir.driver.loading import load_loaders, load_model, parse_shape

    model, shape = load_model(args.model)
    if getattr(args, "input_shape", None):
        shape = parse_shape(args.input_shape)
    train, val, test = load_loaders(args.data)
    if shape is None:  # from the first training batch
        first = next(iter(train), None)
        if first is None:
            raise NestirError(f"--data {args.data}: the train loader gives no batch (it is empty)")
        if not (isinstance(first, (tuple, list)) and len(first) == 2 and isinstance(first[0], torch.Tensor)):
            raise NestirError(f"--data {args.data}: the train loader must give (inputs, targets) pairs of tensors, "
                              f"got {describe_batch(first)}")
        shape = tuple(first[0].shape[1:])
    return model, shape, train, val, test


def _check_storable(prep: Any, cmd: str) -> None:
    """Before any training: the run directory must be able to hold the model (no opaque nodes)."""
    from nestir.ir.serialize import check_storable

    check_storable(prep.graph, f"{cmd} cannot train '{prep.graph.name}' (its run directory cannot store code)",
                   "Fix: write those ops with layers nestir knows, or train from Python (nestir.trace, "
                   "nestir.apply, then Graph.to_torch() or Graph.to_onnx(), which keep the calls).")


def _match_checkpoint(out: str, spec: RunSpec, meta: dict[str, Any],
                      baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """run.json must describe the run its checkpoint holds (the checkpoint is checksummed, run.json
    is not): a changed seed or data set would resume with other splits. Returns the checkpoint's
    baseline, which the report carries."""
    saved = meta.get("spec")
    if not saved:  # a checkpoint without it: nothing to compare with
        return baseline
    mine = dict(spec.__dict__)
    diff = sorted(k for k in set(saved) | set(mine) if k != "device" and saved.get(k) != mine.get(k))
    if diff:
        raise NestirError(f"'{out}/run.json' does not match the run its checkpoint holds ({', '.join(diff)} "
                          "changed): the run directory was edited; start a new run")
    return meta.get("baseline", baseline)


def _read_run(out: str, args: argparse.Namespace, method: str) -> tuple[RunSpec, dict[str, Any]]:
    """The spec of the run in ``out``, checked: run.json must be well-formed and may not make
    nestir run code the command line did not name (a model given as file.py:factory or
    module:factory must be repeated as MODEL). Returns it with the baseline; for a run stopped in
    its dense phase (no checkpoint yet) also the configuration and the dense epochs."""
    from nestir.driver.zoo import ZOO

    path = os.path.join(out, "run.json")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(out, "checkpoint.pt")):  # a run on the user's own loaders
            raise NestirError(f"'{out}' holds a run on your own loaders: resume it with the same MODEL and "
                              f"--data: nestir {args.cmd} MODEL --data file.py:factory --resume {out}")
        raise NestirError(f"nothing to resume in '{out}': run.json is missing")
    try:
        with open(path) as f:
            meta = json.load(f)
        raw = meta["spec"]
        if not isinstance(raw, dict) or set(raw) - set(RunSpec.__dataclass_fields__):
            raise ValueError("unexpected fields in 'spec'")
        spec = RunSpec(**{"max_val": 0, "max_audit": 0, **raw})  # a run from before the caps: none
        if not isinstance(spec.model, str) or not isinstance(spec.data, str):
            raise ValueError("'model' and 'data' must be strings")
        if meta.get("config", {}).get("method", method) != method:
            raise ValueError(f"it is a run of method '{meta['config']['method']}', not '{method}'")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise NestirError(f"'{path}' is not a valid nestir run description ({e}); start a new run") from None
    if spec.model not in ZOO and spec.model != args.model:
        raise NestirError(f"'{path}' names the model '{spec.model}', which is code: nestir does not run code a run "
                          f"directory names. Resume with that MODEL on the command line: nestir {args.cmd} "
                          f"{spec.model} --resume {out}")
    for key in ("data", "test_data"):
        v = getattr(spec, key)
        if v is not None and ".py" in v.split(":", 1)[0]:
            raise NestirError(f"'{path}': {key} '{v}' is code; nestir does not run code a run directory names")
    resumed: dict[str, Any] = {"baseline": meta.get("baseline")}
    if not os.path.isfile(os.path.join(out, "checkpoint.pt")):  # stopped in its dense phase
        resumed.update(_dense_phase(out, path, meta))
    return spec, resumed


def _dense_phase(out: str, path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """How a run stopped in its dense phase goes on: its configuration and dense epochs (run.json)."""
    if "dense_epochs" not in meta:
        raise NestirError(f"nothing to resume in '{out}': the run stopped before its first checkpoint, and its "
                          "run.json (from an older nestir) does not say how to train its dense reference; start a "
                          "new run (--force)")
    try:
        dense_epochs = meta["dense_epochs"]
        if isinstance(dense_epochs, bool) or not isinstance(dense_epochs, int) or dense_epochs < 0:
            raise ValueError(f"'dense_epochs' must be an integer >= 0, got {dense_epochs!r}")
        cfg = SynthConfig(**meta["config"])
        cfg.check()
    except (ValueError, KeyError, TypeError, ArgumentError) as e:
        raise NestirError(f"'{path}' is not a valid nestir run description ({e}); start a new run") from None
    return {"config": cfg, "dense_epochs": dense_epochs}


def cmd_synthesize(args: argparse.Namespace) -> int:
    return _run(args, "nest")


def cmd_prune_baseline(args: argparse.Namespace) -> int:
    return _run(args, "prune")


def cmd_apply(args: argparse.Namespace) -> int:
    """A pass pipeline on a model, scored with gradients from the first ``--batches`` training
    batches (built-in data, or your loaders); ``--epochs`` of training after it. Every option and
    pass spec is checked before anything is read or written."""
    from nestir.driver.pipeline import apply
    from nestir.ir.stats import stats
    from nestir.passes import resolve

    if not args.passes:
        raise NestirError("apply needs at least one --pass NAME[:key=value,...]")
    for name, v in (("--batch-size", args.batch_size), ("--batches", args.batches)):
        if v < 1:
            raise NestirError(f"{name} must be >= 1, got {v}")
    if args.epochs < 0:
        raise NestirError(f"--epochs must be >= 0, got {args.epochs}")
    resolve(args.passes)  # a bad pass name or option is refused here, before any work
    out = args.out or "runs/apply"
    check_out_dir(out)
    if is_data_factory(args.data):
        graph, train, device, evaluate_on = _apply_inputs_from_loaders(args)
    else:
        spec = _run_spec(args)
        prep = prepare(spec, dense=True)
        _check_storable(prep, args.cmd)
        graph, train, device = prep.graph, prep.train, prep.device
        evaluate_on = prep
    before = stats(graph)
    n = min(train.x.shape[0], args.batches * args.batch_size)
    # under torchrun each rank scores its share of every batch; the passes sum over the ranks
    data = []
    for i in range(0, n, args.batch_size):
        xb, yb = train.x[i:i + args.batch_size], train.y[i:i + args.batch_size]
        part = dist.shard(xb.shape[0])
        data.append((xb[part], yb[part]))
    g = apply(graph, args.passes, data, device=device, seed=args.seed)
    if args.epochs:
        from nestir.backends.train import Trainer

        t = Trainer(g, device=device, lr=args.lr)
        for _ in range(args.epochs):
            t.epoch(train.x.to(device), train.y.to(device), args.batch_size)
    if isinstance(evaluate_on, dict):  # your loaders: size and validation error
        from nestir.backends.train import evaluate

        s = stats(g)
        val = evaluate_on["val"]
        after = {"params": s["params"], "flops": s["flops"],
                 "val_error": evaluate(g, val.x, val.y, device=device).error}
    else:
        after = final_metrics(g, evaluate_on, device)
    report = {"model": args.model, "data": args.data, "passes": args.passes,
              "before": {"params": before["params"], "flops": before["flops"]}, "final": after, "phases": []}
    if not dist.is_main():
        return 0
    write_outputs(out, g, report, f"apply on {args.model}", plots=False)
    print(json.dumps({"before": report["before"], "after": after}, indent=2))
    return 0


def _apply_inputs_from_loaders(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``apply --data file.py:factory``: the model traced at the loaders' input shape, the train
    loader read into memory (checked like synthesize's), the val loader for the error after."""
    import torch

    from nestir.backends.device import resolve_device
    from nestir.driver.api import collect_loader
    from nestir.frontend.tracer import trace
    from nestir.ir.checks import require_single_output
    from nestir.ir.edit import connect_all

    model, shape, train_loader, val_loader, _ = _model_and_loaders(args)
    torch.manual_seed(args.seed)
    graph = trace(model, torch.zeros(2, *shape), name=args.model)
    require_single_output(graph, "apply")
    connect_all(graph)
    train = collect_loader(train_loader, "train", graph, None)
    val = collect_loader(val_loader, "val", graph, None)
    return graph, train, resolve_device(args.device), {"val": val}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist5k",
                   help="mnist5k (default), digits, mnist-idx:DIR, npz:PATH, or your loaders: "
                   "file.py:factory / package.module:factory returning (train, val[, test]) DataLoaders")
    p.add_argument("--test-data", help="test set for the final report only, e.g. mnist-idx:../shared/data/mnist")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="validation split of --data, read by every decision (default 0.2)")
    p.add_argument("--audit-fraction", type=float, default=0.1,
                   help="audit split of --data, read once at the end by no decision: the unbiased error "
                        "estimate (default 0.1; 0: none)")
    p.add_argument("--max-val", type=int,
                   help="at most this many validation images (default 10,000: a paired decision then resolves "
                        "about 0.1 points; 0: no cap)")
    p.add_argument("--max-audit", type=int,
                   help="at most this many audit images (default 5,000; 0: no cap)")
    p.add_argument("--seed-density", type=float, help="make the model a sparse seed at this connection density")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--quiet", action="store_true", help="no progress display")


_D = SynthConfig()  # the defaults the help names


def _switch(p: argparse.ArgumentParser, dest: str, on: tuple[str, str], off: tuple[str, str]) -> None:
    """A boolean option as two flags, ``on`` and ``off`` (flag, help); neither given: the default
    (a zoo preset's, or the config's)."""
    for (flag, text), value in ((on, True), (off, False)):
        p.add_argument(flag, dest=dest, action="store_const", const=value, help=text)


def _presets(key: str) -> list[str]:
    """The zoo's own defaults for a synthesis option, as help text ("0 for lenet-5")."""
    return [f"{v:g} for {name}" if isinstance(v, float) else f"{v} for {name}"
            for name, e in ZOO.items() for k, v in e.defaults if k == key]


def _teacher_final_default() -> str:
    t = _D.teacher_final_epochs
    text = "--final-epochs, as the reference gets" if t is None else f"{t}: the reference alone gets --final-epochs"
    return "; ".join([text, *_presets("teacher_final_epochs")])

_SIZE_OPTIONS = (
    ("--max-params", "size budget S (live parameters)"),
    ("--max-flops", "growth stops once a network has this many FLOPs (default: the dense reference's)"),
    ("--target-params", "a size target: prune until a network has at most this many parameters and keep the least "
                        "pruned one within it; its accuracy against the dense reference is reported, not judged"),
    ("--target-flops", "a size target in FLOPs (with or without --target-params)"),
)
_EPOCH_OPTIONS = (
    ("--final-epochs", "final training epochs of the chosen network, and of the dense reference "
                       f"(default {_D.final_epochs})"),
    ("--epochs", "training epochs after each growth step"),
    ("--initial-epochs", None),
    ("--prune-epochs", "retraining epochs per pruning step"),
    ("--shift-epochs", "training after the leaky ReLU -> ReLU shift"),
    ("--trial-epochs", "trial refit (on train) of each chain network the selection judges "
                       f"(default {_D.trial_epochs})"),
)


def _synth_knobs(p: argparse.ArgumentParser) -> None:
    for flag, text in _SIZE_OPTIONS:  # budgets and targets in parameters and FLOPs
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), type=int, help=text)
    p.add_argument("--target-accuracy", dest="target_accuracy", type=float,
                   help="target validation accuracy A (default: no worse than the dense reference, by a paired "
                        "comparison on the validation images)")
    p.add_argument("--tolerance", type=float,
                   help="error allowed above the dense reference, as a fraction, at the bound "
                        f"(default {'; '.join([f'{_D.tolerance:g}', *_presets('tolerance')])})")
    p.add_argument("--confidence", type=float,
                   help="z of the one-sided bound of the paired acceptance rule "
                        f"(default {_D.confidence:g}; the selection "
                        "also asks a passing step's pair with the next less pruned step to pass)")
    p.add_argument("--no-fallback-dense", dest="fallback_dense", action="store_const", const=False,
                   help="when growth falls short of the dense reference, or passes the rule but less accurate "
                        "than it, prune the grown network (keeping its accuracy) instead of pruning the dense "
                        "reference (the default)")
    _switch(p, "chain_from_dense",
            ("--chain-from-dense", "the pruning chain starts from the dense reference whatever growth would reach, so "
             "NeST skips growth (default: on for lenet-5, whose chains from a grown network kept less; off "
             "otherwise)"),
            ("--chain-from-grown", "a grown network that passes the rule, as accurate as the dense reference, starts "
             "the chain"))
    p.add_argument("--no-distill", dest="distill", action="store_const", const=0.0,
                   help="train on the labels only (default: also on the dense reference's soft targets)")
    p.add_argument("--distill", dest="distill", type=float,
                   help=f"weight of the dense reference's soft targets in the loss (default {_D.distill:g})")
    p.add_argument("--teachers", type=int,
                   help="dense networks (different seeds) whose averaged soft targets every stint distils from; "
                        "the first is the reference and the report's baseline "
                        f"(default {_D.teachers}; 1 trains a third of the "
                        "dense networks)")
    p.add_argument("--teacher-final-epochs", dest="teacher_final_epochs", type=int,
                   help="final training epochs of the dense networks after the first, which only teach "
                        f"(default {_teacher_final_default()})")
    _switch(p, "teacher_augment",
            ("--teacher-augment", "the dense networks after the first, which only teach, train on randomly distorted "
             "images (the reference, the report's baseline and every student do not; default: on for the zoo's "
             "LeNets, off otherwise)"),
            ("--no-teacher-augment", "the teachers train on the images as they are"))
    for flag, text in _EPOCH_OPTIONS:  # training budgets, in epochs
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), type=int, help=text)
    p.add_argument("--max-trials", dest="max_trials", type=int,
                   help="selection: trial-refit this many chain steps one by one from the most pruned down, "
                        f"then stride 2, 4, ... (default {_D.max_trials})")
    p.add_argument("--max-compression", dest="max_compression", type=float,
                   help="the pruning chain stops past this many times fewer parameters than its start, and "
                        "no network past it is kept (default "
                        f"{'; '.join([f'{_D.max_compression:g}', *_presets('max_compression')])})")
    p.add_argument("--grow-maps", dest="grow_maps", type=int, help="feature maps added per conv per growth step")
    p.add_argument("--grow-neurons", dest="grow_neurons", type=int, help="neurons bridged per FC layer per growth step")
    p.add_argument("--max-growth-steps", dest="max_growth_steps", type=int)
    p.add_argument("--max-prune-steps", dest="max_prune_steps", type=int,
                   help=f"the longest pruning chain (default {_D.max_prune_steps})")
    p.add_argument("--prune-fraction", dest="prune_fraction", type=float,
                   help=f"fraction of live weights removed per pruning step (default {_D.prune_fraction:g})")
    p.add_argument("--prune-scope", dest="prune_scope", choices=SCOPES,
                   help="which weights a pruning step removes: the smallest |W| across layers (global: default), the "
                        "same fraction of each layer (layer), or the smallest layer-adaptive LAMP scores (lamp)")
    p.add_argument("--prune-flops", dest="prune_flops", type=float,
                   help="FLOPs fraction each pruning step removes at least, from convs "
                        f"(default {_D.prune_flops:g}; 0: off)")
    p.add_argument("--partial-area", dest="partial_area", type=float,
                   help="partial-area-mask fraction per pruning step (convs; default 0: off)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--epoch-samples", dest="epoch_samples", type=int,
                   help="an epoch is a pass over the training split or a random draw of this many of its samples, "
                        "whichever is fewer "
                        f"(default {_D.epoch_samples:,}; 0: always a full pass): budgets in epochs then cost "
                        "the same on any larger data set")
    p.add_argument("--lr", type=float,
                   help="learning rate of the dense networks, growth, trial refits and final training "
                        f"(default {_D.lr:g})")
    p.add_argument("--prune-lr", dest="prune_lr", type=float,
                   help="learning rate each pruning step's retraining starts from "
                        f"(default {_D.prune_lr:g}; cosine down to "
                        "--lr-floor of it)")
    p.add_argument("--lr-floor", dest="lr_floor", type=float,
                   help="every stint's cosine schedule ends at this fraction of its starting rate "
                        f"(default {_D.lr_floor:g})")
    p.add_argument("--augment", action="store_true", default=None, help="random affine distortion of training images")
    p.add_argument("--seed", type=int, help="random seed (data split, seed masks, growth)")
    p.add_argument("--dense-epochs", dest="dense_epochs", type=int, default=40,
                   help="dense reference training epochs (default 40)")


def add_commands(sub: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    for name, text, model, func in (
            ("synthesize", "NeST: grow a sparse seed, then prune it (main job)",
             "zoo name (uses its -seed variant), file.py:factory or module:factory", cmd_synthesize),
            ("prune-baseline", "pruning only, same recipe: train dense, then gradual global magnitude pruning with "
                               "retraining and the same acceptance rule",
             "zoo name (its dense model), file.py:factory or module:factory", cmd_prune_baseline)):
        s = sub.add_parser(name, help=text)
        s.add_argument("model", nargs="?", help=model)
        s.add_argument("--input-shape")
        s.add_argument("--resume", metavar="DIR", help="continue an interrupted run")
        s.add_argument("--force", action="store_true", help="start over in a directory that holds a run")
        _common(s)
        _synth_knobs(s)
        s.set_defaults(func=func)
    s = sub.add_parser("apply", help="run a pass pipeline on a model with gradients from data")
    s.add_argument("model")
    s.add_argument("--input-shape")
    s.add_argument("--pass", dest="passes", action="append", default=[], metavar="NAME[:k=v,...]")
    s.add_argument("--batches", type=int, default=4, help="scoring batches")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--epochs", type=int, default=0, help="train this many epochs after the passes")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    _common(s)
    s.set_defaults(func=cmd_apply)



