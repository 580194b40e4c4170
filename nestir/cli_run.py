"""CLI verbs that train: synthesize, prune-baseline, apply (with a rich progress display)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

from .errors import NestirError
from .runs import TOLERANCE, RunSpec, baseline_run, final_metrics, prepare, write_outputs
from .synthesis import SynthConfig, Synthesizer


class RichReporter:
    """Progress on phases and epochs, one line per step, a summary table at the end."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, quiet=quiet)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        self.task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(name, total=total, loss=float("nan"))

    def epoch(self, done: int, total: int, loss: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done, loss=loss)

    def step(self, row: dict[str, Any]) -> None:
        self.console.print(f"[bold]{row['phase']:>6}[/] step {row['step']:>3}  params {row['params']:>8}  "
                           f"FLOPs {row['flops']:>9}  val error {100 * row['val_error']:5.2f}%  "
                           f"[dim]{row.get('note', '')}[/]")

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]{text}[/]")

    def summary(self, report: dict[str, Any]) -> None:
        from rich.table import Table

        t = Table(title=f"nestir: {report['model']} on {report['data']}")
        for col in ("", "params", "FLOPs", "val error", "test error"):
            t.add_column(col, justify="right")
        for key in ("baseline", "final"):
            r = report.get(key)
            if r:
                te = "-" if r.get("test_error") is None else f"{100 * r['test_error']:.2f}%"
                t.add_row(key, str(r["params"]), str(r["flops"]), f"{100 * r['val_error']:.2f}%", te)
        type(self.console)(quiet=self.console.quiet).print(t)  # the table goes to stdout


def _run_spec(args: argparse.Namespace) -> RunSpec:
    return RunSpec(model=args.model, data=args.data, test_data=args.test_data, val_fraction=args.val_fraction,
                   seed_density=args.seed_density, device=args.device, input_shape=args.input_shape)


def _config(args: argparse.Namespace, defaults: dict[str, Any]) -> SynthConfig:
    kw = {f.name: getattr(args, f.name) for f in SynthConfig.__dataclass_fields__.values()
          if getattr(args, f.name, None) is not None}
    return SynthConfig(**{**defaults, **kw})


def cmd_synthesize(args: argparse.Namespace) -> int:
    resumed_baseline = None
    out = args.resume or args.out or os.path.join("runs", args.model.replace(":", "_").replace("/", "_"))
    if args.resume:
        spec_path = os.path.join(out, "run.json")
        if not os.path.isfile(spec_path):
            raise NestirError(f"nothing to resume in '{out}': run.json is missing")
        with open(spec_path) as f:
            meta = json.load(f)
        spec = RunSpec(**meta["spec"])
        resumed_baseline = meta.get("baseline")
    else:
        if args.model is None:
            raise NestirError("synthesize needs a MODEL (or --resume DIR)")
        spec = _run_spec(args)
        if os.path.isfile(os.path.join(out, "checkpoint.pt")) and not args.force:
            raise NestirError(f"'{out}' already holds a run: --resume {out} to continue it, --force to start over")
    prep = prepare(spec)
    t0 = time.perf_counter()
    baseline = {"final": resumed_baseline} if resumed_baseline else None
    with RichReporter(args.quiet) as rep:
        if args.resume:
            synth = Synthesizer.resume(out, prep.train, prep.val, spec.device, rep)
            rep.message(f"resuming '{out}' at phase {synth.state.phase}, step {synth.state.step}")
        else:
            cfg = _config(args, prep.defaults)
            if args.target_accuracy is None and prep.reference is not None:
                # the default target: the dense reference's validation accuracy, trained here
                baseline = baseline_run(prep, cfg, dense_epochs=args.dense_epochs, prune=False, reporter=rep)
                cfg.target_accuracy = 1 - baseline["final"]["val_error"] - TOLERANCE
                rep.message(f"target accuracy A = {cfg.target_accuracy:.2%}: the dense {prep.reference}'s "
                            f"validation accuracy less {TOLERANCE:.1%} (set --target-accuracy to choose)")
            os.makedirs(out, exist_ok=True)
            from .report import write_json

            write_json(os.path.join(out, "run.json"), {"spec": spec.__dict__, "config": cfg.to_dict(),
                                                       "baseline": baseline["final"] if baseline else None})
            synth = Synthesizer(prep.graph, prep.train, prep.val, cfg, out, spec.device, rep)
        try:
            state = synth.run()
        except KeyboardInterrupt:
            raise NestirError(f"interrupted; the last completed step is saved: "
                              f"nestir synthesize --resume {out}") from None
        if args.baseline and baseline is None and prep.reference is not None:
            rep.phase("dense baseline")
            baseline = baseline_run(prep, synth.cfg, dense_epochs=args.dense_epochs, prune=False, reporter=rep)
        report = {
            "model": spec.model, "data": spec.data, "test_data": spec.test_data,
            "final": final_metrics(synth.graph, prep, synth.dev),
            "phases": state.history, "target_accuracy": state.target, "target_reached": state.target_reached,
            "growth_stopped": state.growth_stopped, "wall_seconds": round(state.wall, 2),
            "device": str(synth.dev), "config": synth.cfg.to_dict(),
        }
        if baseline is not None:
            report["baseline"] = baseline["final"]
        write_outputs(out, synth.graph, report, f"NeST on {spec.model}")
        rep.summary(report)
    print(f"wrote {out}/report.json, model.onnx, model.pt, history.csv, plots ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_prune_baseline(args: argparse.Namespace) -> int:
    spec = _run_spec(args)
    prep = prepare(spec, dense=True)
    out = args.out or os.path.join("runs", args.model.replace(":", "_").replace("/", "_") + "-prune")
    os.makedirs(out, exist_ok=True)
    cfg = _config(args, prep.defaults)
    with RichReporter(args.quiet) as rep:
        dense = baseline_run(prep, cfg, dense_epochs=args.dense_epochs, prune=False, reporter=rep)
        target = args.target_accuracy or 1 - dense["final"]["val_error"] - TOLERANCE
        report = baseline_run(prep, cfg, dense_epochs=args.dense_epochs, prune=True, reporter=rep,
                              step_fraction=args.step_fraction, target=target, start=dense["graph"])
        report["baseline"] = dense["final"]
        report.update({"model": spec.model, "data": spec.data, "test_data": spec.test_data, "device": str(prep.device)})
        write_outputs(out, report.pop("graph"), report, f"pruning only: {spec.model}")
        rep.summary(report)
    print(f"wrote {out}/report.json, model.onnx, model.pt, history.csv")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .pipeline import apply
    from .stats import stats

    spec = _run_spec(args)
    prep = prepare(spec, dense=True)
    if not args.passes:
        raise NestirError("apply needs at least one --pass NAME[:key=value,...]")
    out = args.out or "runs/apply"
    os.makedirs(out, exist_ok=True)
    before = stats(prep.graph)
    n = min(prep.train.x.shape[0], args.batches * args.batch_size)
    data = [(prep.train.x[i:i + args.batch_size], prep.train.y[i:i + args.batch_size])
            for i in range(0, n, args.batch_size)]
    g = apply(prep.graph, args.passes, data, device=spec.device, seed=args.seed)
    if args.epochs:
        from .backends.train import Trainer

        t = Trainer(g, device=prep.device, lr=args.lr)
        for _ in range(args.epochs):
            t.epoch(prep.train.x.to(prep.device), prep.train.y.to(prep.device), args.batch_size)
    after = final_metrics(g, prep, prep.device)
    report = {"model": spec.model, "data": spec.data, "passes": args.passes,
              "before": {"params": before["params"], "flops": before["flops"]}, "final": after, "phases": []}
    write_outputs(out, g, report, f"apply on {spec.model}", plots=False)
    print(json.dumps({"before": report["before"], "after": after}, indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist5k", help="mnist5k (default), digits, mnist-idx:DIR or npz:PATH")
    p.add_argument("--test-data", help="test set for the final report only, e.g. mnist-idx:../shared/data/mnist")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation split of --data (default 0.1)")
    p.add_argument("--seed-density", type=float, help="make the model a sparse seed at this connection density")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _synth_knobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-params", dest="max_params", type=int, help="size budget S (live parameters)")
    p.add_argument("--target-accuracy", dest="target_accuracy", type=float, help="target validation accuracy A")
    p.add_argument("--epochs", type=int, help="training epochs after each growth step")
    p.add_argument("--initial-epochs", dest="initial_epochs", type=int)
    p.add_argument("--prune-epochs", dest="prune_epochs", type=int, help="retraining epochs per pruning step")
    p.add_argument("--max-growth-steps", dest="max_growth_steps", type=int)
    p.add_argument("--max-prune-steps", dest="max_prune_steps", type=int)
    p.add_argument("--prune-fraction", dest="prune_fraction", type=float)
    p.add_argument("--partial-area", dest="partial_area", type=float, help="partial-area fraction per prune step")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--augment", action="store_true", default=None, help="random affine distortion of training images")
    p.add_argument("--seed", type=int, help="random seed (data split, seed masks, growth)")
    p.add_argument("--dense-epochs", dest="dense_epochs", type=int, default=20, help="dense training epochs")


def add_commands(sub: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("synthesize", help="NeST: grow a sparse seed, then prune it (main job)")
    s.add_argument("model", nargs="?", help="zoo name (uses its -seed variant), file.py:factory or module:factory")
    s.add_argument("--input-shape")
    s.add_argument("--resume", metavar="DIR", help="continue an interrupted run")
    s.add_argument("--force", action="store_true", help="start over in a directory that holds a run")
    s.add_argument("--baseline", action="store_true", help="also train the dense reference and report it")
    _common(s)
    _synth_knobs(s)
    s.set_defaults(func=cmd_synthesize)
    s = sub.add_parser("prune-baseline", help="pruning only: train dense, then iterative magnitude pruning")
    s.add_argument("model")
    s.add_argument("--input-shape")
    s.add_argument("--step-fraction", type=float, default=0.2, help="fraction of live weights pruned per step")
    _common(s)
    _synth_knobs(s)
    s.set_defaults(func=cmd_prune_baseline)
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



