"""The ``nestir`` command line: inspect, export, apply, synthesize, prune-baseline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import torch

from nestir.driver.loading import load_model, parse_shape
from nestir.ir.errors import NestirError
from nestir.ir.kinds import Op


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo name (e.g. lenet-5), path/to/file.py:factory or package.module:factory")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28 (zoo models know theirs)")
    p.add_argument("--leaf", action="append", default=[], metavar="CLASS",
                   help="keep submodules of this class name opaque (for untraceable code); repeatable")


def traced(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from nestir.frontend.tracer import trace

    if args.model.endswith(".pt") and os.path.isfile(args.model):  # a saved model (a run's model.pt)
        from nestir.ir.serialize import load_graph

        g, _ = load_graph(args.model)
        return g, tuple((g.inputs[0].shape or ())[1:]) if g.inputs else ()
    model, shape = load_model(args.model)
    if args.input_shape:
        shape = parse_shape(args.input_shape)
    if shape is None:
        raise NestirError(f"the input shape of '{args.model}' is unknown: pass --input-shape, e.g. 1,28,28")
    leaves = tuple({type(m) for m in model.modules() if type(m).__name__ in set(args.leaf)})
    missing = set(args.leaf) - {c.__name__ for c in leaves}
    if missing:
        raise NestirError(f"--leaf {', '.join(sorted(missing))}: no submodule of that class in the model")
    return trace(model, torch.rand(2, *shape), leaf_modules=leaves, name=args.model), shape


def cmd_inspect(args: argparse.Namespace) -> int:
    from nestir.frontend.tracer import opaque_nodes
    from nestir.ir.stats import format_table, stats

    g, shape = traced(args)
    print(f"{args.model}: input {shape}, {len(g)} IR nodes")
    print(format_table(stats(g, compact=False)))
    info = g.groups()
    print(f"neuron groups: {len(info.groups)} ({len(info.resizable())} resizable)")
    for grp in info.groups.values():
        state = ("resizable" if grp.resizable else
                 f"prunable in units of {dict(grp.tie.sides)[grp.id]} "
                 f"({'heads of attention' if g[grp.tie.conv].op == Op.ATTENTION else 'grouped conv'} "
                 f"'{grp.tie.conv}')" if grp.prunable and grp.tie is not None else
                 f"frozen: {grp.reason or 'no producer'}")
        print(f"  group {grp.id}: width {grp.width}, producers {', '.join(grp.producers) or '-'} ({state})")
    for line in opaque_nodes(g):
        print(f"opaque: {line}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    g, _ = traced(args)
    if not args.onnx and not args.torch:
        raise NestirError("export needs --onnx PATH and/or --torch PATH")
    from nestir.frontend.tracer import opaque_nodes

    for line in opaque_nodes(g):
        print(f"opaque (kept as a call): {line}")
    if args.onnx:
        g.to_onnx(args.onnx)
        print(f"wrote {args.onnx}")
    if args.torch:
        from nestir.ir.serialize import save_graph

        save_graph(g, args.torch)
        print(f"wrote {args.torch}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestir", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="log pass details")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("inspect", help="trace a model and print its IR table")
    _model_args(s)
    s.set_defaults(func=cmd_inspect)
    s = sub.add_parser("export", help="trace a model and write it as ONNX (and/or an IR file)")
    _model_args(s)
    s.add_argument("--onnx", help="ONNX output path")
    s.add_argument("--torch", help="IR output path (.pt, loadable with weights_only=True)")
    s.set_defaults(func=cmd_export)
    try:
        from nestir.cli.run import add_commands
    except ImportError:  # pragma: no cover - during partial installs
        add_commands = None
    if add_commands is not None:
        add_commands(sub, _model_args)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # the verbs report opaque nodes themselves (inspect and export list them, the training verbs
    # refuse them with the reason): the tracer's warning would only repeat it on stderr
    logging.getLogger("nestir.frontend.tracer").setLevel(logging.INFO if args.verbose else logging.ERROR)
    from nestir.backends import dist
    joined = False
    try:
        # under torchrun: join its process group; every rank takes the same decisions, rank 0 writes
        joined = dist.init_from_env(getattr(args, "device", None))
        return int(args.func(args) or 0)
    except NestirError as e:
        if args.debug:
            raise
        print(f"nestir: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nestir: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"nestir: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        if joined:
            dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
