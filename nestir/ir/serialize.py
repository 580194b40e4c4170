"""Saving and loading the IR: plain tensors and primitives, loadable with ``weights_only=True``,
written atomically and checked with a SHA-256 digest on load."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from nestir.ir.errors import ModelFileError, NestirError, OutputError
from nestir.ir.graph import Graph, Node

FORMAT = "nestir-graph"
VERSION = 1


def digest(nodes: list[dict[str, Any]], extra: Any) -> str:
    h = hashlib.sha256()
    for n in nodes:
        meta = {k: v for k, v in n.items() if k != "params"}
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        for k in sorted(n["params"]):
            t = n["params"][k].detach().cpu().contiguous()
            h.update(k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def digest_tree(obj: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tensors and JSON scalars (every byte of
    every tensor, every key): what a checkpoint's checksum covers."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(b"T" + str(o.dtype).encode() + str(tuple(o.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"D%d" % len(o))
            for k in sorted(o, key=str):
                h.update(b"K" + json.dumps(k, default=str).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(b"L%d" % len(o))
            for v in o:
                walk(v)
        else:
            h.update(b"V" + json.dumps(o, default=str).encode())

    walk(obj)
    return h.hexdigest()


def check_storable(graph: Graph, what: str = "cannot save the IR",
                   fix: str = "Save the lowered module (Graph.to_torch()) or the ONNX file (Graph.to_onnx()) "
                              "instead: they keep the calls.") -> None:
    """Refuse a graph with opaque nodes: an IR file (model.pt, a run's checkpoint) holds tensors
    and plain data only, because loading one never executes code, and an opaque node *is* code
    (a call nestir does not know). The message names every such node, its op and its line."""
    from nestir.ir.checks import opaque_nodes

    ops = opaque_nodes(graph)
    if ops:
        raise NestirError(f"{what}: it has {len(ops)} opaque node(s), which are code: {'; '.join(ops)}. nestir "
                          f"stores models as tensors and plain data only, so that loading one never executes "
                          f"code. {fix}")


def graph_state(graph: Graph) -> dict[str, Any]:
    check_storable(graph)
    nodes = []
    for n in graph:
        nodes.append({"name": n.name, "op": n.op, "inputs": list(n.inputs), "attrs": dict(n.attrs),
                      "params": {k: t.detach().cpu().clone() for k, t in n.params.items()},
                      "shape": list(n.shape) if n.shape is not None else None, "axis": n.axis,
                      "source": n.source})
    return {"format": FORMAT, "version": VERSION, "name": graph.name, "nodes": nodes}


def graph_from_state(state: dict[str, Any]) -> Graph:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError("not a nestir graph (format marker missing)")
    g = Graph(name=str(state.get("name", "model")))
    for d in state["nodes"]:
        g.add(Node(d["name"], d["op"], list(d["inputs"]), dict(d["attrs"]), dict(d["params"]),
                   tuple(d["shape"]) if d["shape"] is not None else None, d["axis"], d.get("source", "")))
    return g


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _write_failure(path: str, e: BaseException) -> OutputError | None:
    """The :class:`OutputError` for an exception raised while writing ``path``, or None when the
    exception is not a write failure (it then propagates as it is)."""
    where = os.path.dirname(os.path.abspath(path))
    text = str(e)
    if isinstance(e, OSError) and e.errno in _NO_SPACE or "No space left" in text:
        return OutputError(f"cannot write '{path}': no space left on the device that holds '{where}'; free some "
                           "space and run again (the file that was there before is untouched)")
    if isinstance(e, RuntimeError) and ("inline_container" in text or "file write failed" in text):
        # torch's zip writer reports a failed write (usually a full disk) without errno
        return OutputError(f"cannot write '{path}': the write failed, most likely no space left on the device "
                           f"that holds '{where}'; free some space and run again (the file that was there before "
                           "is untouched)")
    if isinstance(e, OSError):
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = "the directory is not writable"
        elif e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
            why = "its directory does not exist and cannot be created (a file may stand in its place)"
        elif e.errno == errno.EISDIR:
            why = "it is a directory"
        else:
            why = e.strerror or type(e).__name__
        return OutputError(f"cannot write '{path}': {why}")
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``: readers
    never see a half-written file, and a failed write (an unwritable directory, a full disk)
    leaves the old file in place and raises :class:`OutputError` naming the reason."""
    if os.path.isdir(path):
        raise OutputError(f"cannot write '{path}': it is a directory")
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # the permissions a plain open() would give, not mkstemp's 0600
    except OSError as e:
        raise _write_failure(path, e) from None  # type: ignore[misc]
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)  # on disk before the rename: a crash leaves the old file or the new one
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        err = _write_failure(path, e)
        if err is None:
            raise
        raise err from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _canonical(obj: Any) -> Any:
    """A copy of a tree of dicts, lists and tuples in which equal strings are one object and no
    container is shared. pickle writes an object seen before as a back-reference, so without this
    the bytes would depend on which equal strings happened to be the same object in this process."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    return obj


def _torch_save(obj: Any, tmp: str) -> None:
    # through a file object: torch then names the zip's folder "archive", not after the temporary
    # file's random name; with _canonical, equal objects give byte-identical files in any process
    with open(tmp, "wb") as f:
        torch.save(_canonical(obj), f)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_write` (byte-identical for equal objects)."""
    atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def save_graph(graph: Graph, path: str, extra: dict[str, Any] | None = None) -> None:
    state = graph_state(graph)
    state["extra"] = extra or {}
    state["sha256"] = digest(state["nodes"], state["extra"])
    atomic_save(state, path)


def _reason(e: BaseException) -> str:
    """Why torch.load failed, in a few words. Never torch's advice to retry with
    ``weights_only=False``: that would run whatever code the file holds."""
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return f"{type(e).__name__}: it holds objects other than tensors and plain data"
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_state(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ModelFileError(f"'{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"'{path}' is corrupt, truncated or not a nestir file ({_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(f"'{path}' is not a nestir graph file")
    if state.get("version") != VERSION:
        raise ModelFileError(f"'{path}' has format version {state.get('version')}, this nestir reads {VERSION}")
    if digest(state["nodes"], state.get("extra", {})) != state.get("sha256"):
        raise ModelFileError(f"'{path}' failed its integrity check (SHA-256 mismatch): it was modified or damaged")
    return state


def load_graph(path: str) -> tuple[Graph, dict[str, Any]]:
    """The graph saved at ``path`` (verified) and the extra data saved with it."""
    state = load_state(path)
    g = graph_from_state(state)
    try:
        g.verify()
    except NestirError as e:
        raise ModelFileError(f"'{path}' holds an invalid graph: {e}") from None
    return g, state.get("extra", {})
