"""A run directory's files while the run goes on: the dense networks of the dense phase (one
file each, checksummed, until the first checkpoint holds them, and the state of the one in
training, saved after an epoch every half minute), the checkpoint (checksummed,
written after every step) and the pruning chain's snapshots (one file each, their digests in the
run state). Everything is read without executing code; a missing, corrupt or tampered file is a
clear error."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from nestir.backends import dist
from nestir.ir.errors import NestirError
from nestir.ir.graph import Graph
from nestir.ir.serialize import atomic_save, digest_tree, graph_from_state, graph_state

CHECKPOINT = "checkpoint.pt"
PARTIAL_EVERY = 30.0  # seconds between two saves of the dense network in training (each after an epoch)


def read_run_file(path: str, missing: str, what: str) -> Any:
    """A run file loaded without executing code; ``missing`` or a corrupt-file error otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NestirError(missing) from None
    except Exception as e:
        raise NestirError(f"{what} '{path}' is corrupt or truncated ({type(e).__name__}); start a new run") from None


class RunStore:
    """The checkpoint and chain files of the run directory ``out`` (rank 0 writes; every rank
    reads after the barrier)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def save_checkpoint(self, ck: dict[str, Any]) -> None:
        """``ck`` (its ``format`` first) with its digest, written atomically."""
        ck = dict(ck)
        ck["sha256"] = digest_tree({k: v for k, v in ck.items() if k != "sha256"})
        if dist.is_main():
            atomic_save(ck, os.path.join(self.out, CHECKPOINT))
        dist.barrier()

    def read_checkpoint(self) -> dict[str, Any]:
        path = os.path.join(self.out, CHECKPOINT)
        ck = read_run_file(path, f"nothing to resume: '{path}' does not exist", "checkpoint")
        if not isinstance(ck, dict) or ck.get("format") != "nestir-checkpoint":
            raise NestirError(f"'{path}' is not a nestir checkpoint")
        if ck.get("sha256") != digest_tree({k: v for k, v in ck.items() if k != "sha256"}):
            raise NestirError(f"checkpoint '{path}' failed its integrity check (SHA-256 mismatch); start a new run")
        return ck

    def save_dense(self, index: int, graph: Graph, key: str) -> None:
        """Dense network ``index`` of the dense phase (0: the reference), trained: saved with its
        digest, so that an interrupted dense phase resumes after it. ``key``: what it was trained
        under (:func:`dense_key`); a resume under another is refused."""
        _save_keyed(self.out, f"{index:03d}.pt", {"format": "nestir-dense", "index": index, "key": key,
                                                  "graph": graph_state(graph)})

    def has_dense(self) -> bool:
        """An interrupted dense phase saved networks here."""
        d = os.path.join(self.out, "dense")
        return os.path.isdir(d) and any(n.endswith(".pt") for n in os.listdir(d))

    def load_dense(self, count: int, key: str) -> list[Graph]:
        """The dense networks an interrupted dense phase saved (0, 1, ... up to the first missing
        one, at most ``count``), each checked, all trained under ``key``."""
        nets: list[Graph] = []
        for i in range(count):
            path = os.path.join(self.out, "dense", f"{i:03d}.pt")
            if not os.path.isfile(path):
                break
            nets.append(_read_keyed(path, "nestir-dense", i, key, "")["graph"])
        return nets

    def dense_progress(self, key: str) -> DenseRecord:
        """The record of a dense phase trained under ``key`` (:class:`DenseRecord`)."""
        return DenseRecord(self, key)

    def save_snapshot(self, graph: Graph, index: int) -> dict[str, Any]:
        """``graph`` as chain element ``index``: its file and digest, for the run state."""
        state = graph_state(graph)
        name = os.path.join("chain", f"{index:03d}.pt")
        if dist.is_main():  # one writer; the other ranks read it after the barrier
            os.makedirs(os.path.join(self.out, "chain"), exist_ok=True)
            atomic_save(state, os.path.join(self.out, name))
        dist.barrier()
        return {"file": name, "sha256": digest_tree(state)}

    def load_snapshot(self, entry: dict[str, Any]) -> Graph:
        path = os.path.join(self.out, entry["file"])
        state = read_run_file(path, f"the pruning chain's '{path}' is missing; start a new run", "the pruning chain's")
        if digest_tree(state) != entry["sha256"]:
            raise NestirError(f"the pruning chain's '{path}' failed its integrity check (SHA-256 mismatch); "
                              "start a new run")
        return _graph(state, f"the pruning chain's '{path}'")


class DenseRecord:
    """A dense phase's progress in ``out/dense`` (:class:`nestir.driver.recipe.DenseProgress`): each
    network as it is trained (``NNN.pt``), and the one in training after an epoch at most every
    :data:`PARTIAL_EVERY` seconds (``NNN.partial.pt``: its graph, optimizer and random generators'
    state, checksummed, with the run's key), so that a stop loses at most that much training."""

    def __init__(self, store: RunStore, key: str) -> None:
        self.store, self.key = store, key
        self._last = time.monotonic()

    def _path(self, index: int) -> str:
        return os.path.join(self.store.out, "dense", f"{index:03d}.partial.pt")

    def trained(self, count: int) -> list[Graph]:
        return self.store.load_dense(count, self.key)

    def save_partial(self, index: int, state: Callable[[], dict[str, Any]]) -> None:
        # rank 0 alone decides by its clock and writes, without a barrier: no rank reads the file
        # before a resume, and ranks whose clocks disagree must not wait for one another
        if not dist.is_main() or time.monotonic() - self._last < PARTIAL_EVERY:
            return
        _save_keyed(self.store.out, f"{index:03d}.partial.pt",
                    {"format": "nestir-dense-partial", "index": index, "key": self.key, **state()}, barrier=False)
        self._last = time.monotonic()

    def partial(self, index: int) -> dict[str, Any] | None:
        """The state dense network ``index`` had when its training was last saved (None: none
        saved); its graph verified. A corrupt file or one of another run is a clear error."""
        path = self._path(index)
        if not os.path.isfile(path):
            return None
        ck = _read_keyed(path, "nestir-dense-partial", index, self.key, " in training")
        missing = [k for k in ("stage", "epoch", "graph", "optimizer", "generator", "rng") if k not in ck]
        if missing:
            raise NestirError(f"the dense network in training '{path}' lacks {', '.join(missing)}; start a new run")
        return ck

    def done(self, index: int, graph: Graph) -> None:
        """Dense network ``index`` is trained: saved whole; its state in training is no longer needed."""
        self.store.save_dense(index, graph, self.key)
        if dist.is_main() and os.path.isfile(self._path(index)):
            os.remove(self._path(index))
        self._last = time.monotonic()


def dense_key(*parts: Any) -> str:
    """What a dense phase's networks depend on (configuration, dense epochs, the model's initial
    state ...), as one digest."""
    return digest_tree(list(parts))


def _save_keyed(out: str, name: str, ck: dict[str, Any], barrier: bool = True) -> None:
    """A dense-phase file ``out/dense/name``: ``ck`` with its digest, written atomically by rank 0
    (then every rank waits for it, unless not ``barrier``)."""
    ck["sha256"] = digest_tree({k: v for k, v in ck.items() if k != "sha256"})
    if dist.is_main():
        os.makedirs(os.path.join(out, "dense"), exist_ok=True)
        atomic_save(ck, os.path.join(out, "dense", name))
    if barrier:
        dist.barrier()


def _read_keyed(path: str, fmt: str, index: int, key: str, kind: str) -> dict[str, Any]:
    """Dense network ``index`` (``kind``: "" trained, " in training") read from ``path``: of format
    ``fmt``, intact, trained under ``key``, its graph verified; a clear error otherwise."""
    what = f"the dense network{kind} '{path}'"
    ck = read_run_file(path, f"'{path}' is missing", f"the dense network{kind}")
    if not isinstance(ck, dict) or ck.get("format") != fmt or ck.get("index") != index:
        raise NestirError(f"'{path}' is not dense network {index} of a nestir run{kind}; start a new run")
    if ck.get("sha256") != digest_tree({k: v for k, v in ck.items() if k != "sha256"}):
        raise NestirError(f"{what} failed its integrity check (SHA-256 mismatch); start a new run")
    if ck.get("key") != key:
        raise NestirError(f"{what} was trained for another run (other model, data options or seed): resume "
                          "with the options it was started with, or start over")
    return {**ck, "graph": _graph(ck.get("graph"), what)}


def _graph(state: Any, what: str) -> Graph:
    """A network from its saved state, verified; a clear error when it is not one."""
    try:
        g = graph_from_state(state)
        g.verify()
    except NestirError:
        raise
    except Exception as ex:
        raise NestirError(f"{what} does not hold a valid network ({ex})") from None
    return g
