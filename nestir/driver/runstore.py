"""A run directory's files while the run goes on: the dense networks of the dense phase (one
file each, checksummed, until the first checkpoint holds them), the checkpoint (checksummed,
written after every step) and the pruning chain's snapshots (one file each, their digests in the
run state). Everything is read without executing code; a missing, corrupt or tampered file is a
clear error."""

from __future__ import annotations

import os
from typing import Any

import torch

from nestir.backends import dist
from nestir.ir.errors import NestirError
from nestir.ir.graph import Graph
from nestir.ir.serialize import atomic_save, digest_tree, graph_from_state, graph_state

CHECKPOINT = "checkpoint.pt"


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
        state = {"format": "nestir-dense", "index": index, "key": key, "graph": graph_state(graph)}
        state["sha256"] = digest_tree({k: v for k, v in state.items() if k != "sha256"})
        if dist.is_main():
            os.makedirs(os.path.join(self.out, "dense"), exist_ok=True)
            atomic_save(state, os.path.join(self.out, "dense", f"{index:03d}.pt"))
        dist.barrier()

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
            ck = read_run_file(path, f"'{path}' is missing", "the dense network")
            if not isinstance(ck, dict) or ck.get("format") != "nestir-dense" or ck.get("index") != i:
                raise NestirError(f"'{path}' is not dense network {i} of a nestir run; start a new run")
            if ck.get("sha256") != digest_tree({k: v for k, v in ck.items() if k != "sha256"}):
                raise NestirError(f"the dense network '{path}' failed its integrity check (SHA-256 mismatch); "
                                  "start a new run")
            if ck.get("key") != key:
                raise NestirError(f"the dense network '{path}' was trained for another run (other model, data "
                                  "options or seed): resume with the options it was started with, or start over")
            nets.append(_graph(ck["graph"], f"the dense network '{path}'"))
        return nets

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


def dense_key(*parts: Any) -> str:
    """What a dense phase's networks depend on (configuration, dense epochs, the model's initial
    state ...), as one digest."""
    return digest_tree(list(parts))


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
