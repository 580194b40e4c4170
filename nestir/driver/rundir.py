"""Run directories: what may become one (checked before any work starts), what a run writes in
it, and how a new run clears an old one."""

from __future__ import annotations

import os

from nestir.backends import dist
from nestir.ir.errors import ArgumentError

RUN_FILES = ("checkpoint.pt", "run.json", "report.json", "model.onnx", "model.pt", "history.csv", "history.png",
             "first_layer.png")
FOLDERS = ("chain", "dense")  # the pruning chain's snapshots; the dense networks of an unfinished dense phase


def check_out_dir(out: str, what: str = "--out") -> None:
    """Refuse an output path that cannot become a run directory (a file, a place that is not
    writable), before any work starts and before anything is written."""
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise ArgumentError(f"{what} must be a directory path, got {out!r}")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ArgumentError(f"{what} '{out}' is a file, not a directory")
    probe = out
    while not os.path.exists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    if not os.path.isdir(probe):
        raise ArgumentError(f"{what} '{out}': '{probe}' is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ArgumentError(f"{what} '{out}': '{probe}' is not writable")


def holds_run(out: str) -> bool:
    """``out`` holds (part of) a run: a checkpoint, its description, its report or the dense
    networks of a dense phase that stopped."""
    dense = os.path.join(out, "dense")
    return (any(os.path.isfile(os.path.join(out, n)) for n in ("checkpoint.pt", "run.json", "report.json"))
            or (os.path.isdir(dense) and any(n.endswith(".pt") for n in os.listdir(dense))))


def clean_temp_files(out: str) -> None:
    """Remove what interrupted atomic writes left behind (``*.tmp`` beside the run's files)."""
    for d in (out, *(os.path.join(out, f) for f in FOLDERS)):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.endswith(".tmp"):
                    os.remove(os.path.join(d, name))


def clear_run(out: str) -> None:
    """Remove an old run's files, so that nothing of it may pass for the new one's."""
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    clean_temp_files(out)
    for folder in FOLDERS:
        clear_folder(out, folder)


def clear_folder(out: str, folder: str) -> None:
    """Remove the run's files in ``out/folder`` (``chain``: the pruning chain's snapshots;
    ``dense``: the dense networks saved while the dense phase goes on), and the folder when
    nothing else is in it."""
    d = os.path.join(out, folder)
    if not dist.is_main() or not os.path.isdir(d):
        return
    for name in os.listdir(d):
        if name.endswith((".pt", ".tmp")):
            os.remove(os.path.join(d, name))
    if not os.listdir(d):
        os.rmdir(d)
