"""Pass contracts: what a pass declares (``effect``: grow never removes, prune never adds,
neutral does neither) checked against what it did. The pass manager enforces it after every pass
from a cheap snapshot of the masks; :func:`nestir.testing.check_pass` asserts it (and more) in tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nestir.ir.edit import replay
from nestir.ir.errors import PassContractError
from nestir.ir.graph import Graph

EFFECTS = ("grow", "prune", "neutral")


@dataclass(frozen=True)
class LiveState:
    """Per parametric node: neuron count and the live masks (``mask``; partial-area ``area`` or
    None), on the CPU. Taken before a pass; compared with the graph after it."""

    neurons: dict[str, int]
    masks: dict[str, dict[str, torch.Tensor | None]]


def live_state(graph: Graph) -> LiveState:
    neurons, masks = {}, {}
    for n in graph.parametric():
        neurons[n.name] = int(n.params["weight"].shape[0])
        masks[n.name] = {k: (n.params[k].detach().to("cpu", copy=True).bool() if n.params.get(k) is not None
                             else None) for k in ("mask", "area")}
    return LiveState(neurons, masks)


def _carried(before: LiveState, after: Graph, journal: list[tuple[str, str, Any]]) -> dict[str, tuple[Any, Any]]:
    """Per node and mask: the mask before the pass carried through the pass's journaled edits into
    the new layout (new entries dormant), and the mask after it."""
    out: dict[str, tuple[Any, Any]] = {}
    for name, keys in before.masks.items():
        if name not in after or not after[name].is_parametric:
            continue
        node = after[name]
        for key, old_t in keys.items():
            new_t = node.params.get(key)
            if key == "area" and old_t is None and new_t is None:
                continue
            if old_t is not None:
                for nm, k, how in journal:
                    if nm == name and k == key:
                        old_t = replay(old_t.float(), how, 0.0).bool()
            out[f"{name}.{key}"] = (old_t, None if new_t is None else new_t.detach().cpu().bool())
    return out


def check_effect(effect: str, where: str, before: LiveState, after: Graph,
                 journal: list[tuple[str, str, Any]]) -> None:
    """Raise :class:`PassContractError` (naming ``where``) when the change from ``before`` to
    ``after`` breaks the declared ``effect``. ``journal``: the edits the pass journaled, so masks
    are compared entry by entry in the new layout (a resize that bypasses :mod:`nestir.ir.edit`
    shows up as a shape mismatch)."""
    if effect not in EFFECTS:
        raise PassContractError(where, f"declares effect {effect!r}; expected one of {', '.join(EFFECTS)}")
    grow, prune = effect in ("grow", "neutral"), effect in ("prune", "neutral")  # what it must not undo
    n0 = before.neurons
    n1 = {n.name: int(n.params["weight"].shape[0]) for n in after.parametric()}
    for name, w in n0.items():
        if name not in n1:
            if grow:
                raise PassContractError(where, f"declares effect '{effect}' but removed parametric node '{name}'")
            continue
        if grow and n1[name] < w:
            raise PassContractError(where, f"declares effect '{effect}' but removed {w - n1[name]} neuron(s) "
                                           f"of '{name}' ({w} -> {n1[name]})")
        if prune and n1[name] > w:
            raise PassContractError(where, f"declares effect '{effect}' but added {n1[name] - w} neuron(s) "
                                           f"to '{name}' ({w} -> {n1[name]})")
    added = [k for k in n1 if k not in n0]
    if prune and added:
        raise PassContractError(where, f"declares effect '{effect}' but added parametric node(s) {added}")
    for key, (old, new) in _carried(before, after, journal).items():
        name, kind = key.rsplit(".", 1)
        what = "connections" if kind == "mask" else "partial-area positions"
        if new is None:  # a partial-area mask dropped: every position is live again
            new = torch.ones_like(old) if old is not None else None
        if old is None:
            old = torch.ones_like(new)
        if old.shape != new.shape:
            raise PassContractError(
                where, f"changed the shape of '{name}' {kind} from what its journaled edits give "
                       f"({tuple(old.shape)}) to {tuple(new.shape)}: resize layers through nestir.ir.edit "
                       "(add_neurons / remove_neurons), which keeps the journal that optimizer state follows")
        lost, gained = int((old & ~new).sum()), int((new & ~old).sum())
        if grow and lost:
            raise PassContractError(where, f"declares effect '{effect}' but removed {lost} live {what} of '{name}'")
        if prune and gained:
            raise PassContractError(where, f"declares effect '{effect}' but added {gained} live {what} to '{name}'")


def where(spec: str, done: list[str]) -> str:
    """How a contract failure names a pass: its spec and the passes before it in the pipeline."""
    return f"pass '{spec}'" + (f" (after {', '.join(repr(d) for d in done)})" if done else "")
