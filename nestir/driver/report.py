"""Run outputs: report.json, model.onnx, model.pt, history.csv and the plots."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import torch

from nestir.ir.graph import Graph
from nestir.ir.kinds import Op
from nestir.ir.serialize import atomic_write, save_graph


def write_json(path: str, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)

    atomic_write(path, write)


def write_history(path: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def write_models(out: str, graph: Graph, extra: dict[str, Any] | None = None) -> None:
    save_graph(graph, os.path.join(out, "model.pt"), extra)
    graph.to_onnx(os.path.join(out, "model.onnx"))


# the synthesis flow's phases as a reader of history.png knows them (report.json's phase names)
PHASE_LABELS = {"seed": "growth", "grow": "growth", "shift": "shift", "dense": "pruning chain",
                "prune": "pruning chain", "select": "selection (trial refits)"}
PHASE_COLORS = {"growth": "#dff0d8", "shift": "#fcf8e3", "pruning chain": "#f2dede",
                "selection (trial refits)": "#d9edf7"}


def phase_spans(rows: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(label, first step, last step) of each run of consecutive rows in one phase of the flow."""
    spans: list[tuple[str, int, int]] = []
    for r in rows:
        label = PHASE_LABELS.get(r["phase"], r["phase"])
        if spans and spans[-1][0] == label:
            spans[-1] = (label, spans[-1][1], r["step"])
        else:
            spans.append((label, r["step"], r["step"]))
    return spans


def plot_history(path: str, rows: list[dict[str, Any]], title: str, kept: int | None = None,
                 metric: str | None = None) -> None:
    """Parameters and validation error per step, the phases shaded and named, the network kept
    marked (``kept``: its step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    named: set[str] = set()
    for label, a, b in phase_spans(rows):
        ax.axvspan(a - 0.5, b + 0.5, color=PHASE_COLORS.get(label, "#eeeeee"), zorder=0,
                   label=None if label in named else label)
        named.add(label)
    ax.plot(steps, [r["params"] for r in rows], "o-", color="tab:blue", ms=3, label="parameters")
    ax.set_xlabel("step")
    ax.set_ylabel("live parameters", color="tab:blue")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    if all("val_metric" in r for r in rows):  # a custom metric (or the negative loss): the metric itself
        ax2.plot(steps, [r["val_metric"] for r in rows], "s-", color="tab:red", ms=3, label="validation metric")
        ax2.set_ylabel(f"validation {metric or 'metric'} (higher is better)", color="tab:red")
    else:
        ax2.plot(steps, [100 * r["val_error"] for r in rows], "s-", color="tab:red", ms=3, label="validation error")
        ax2.set_ylabel("validation error (%)", color="tab:red")
    hit = [r for r in rows if r["step"] == kept]
    if hit:
        r = hit[0]
        ax.plot([r["step"]], [r["params"]], marker="*", ms=16, color="gold", mec="black", zorder=5, ls="none",
                label=f"kept: {r['params']:,} params")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_layer_map(graph: Graph) -> tuple[torch.Tensor, str] | None:
    """Live connections per input position of the first parametric layer, as an image."""
    layers = graph.parametric()
    if not layers:
        return None
    n = layers[0]
    src = graph[n.inputs[0]]
    shape = src.shape or ()
    if n.op == Op.LINEAR:
        counts = n.params["mask"].sum(0).float()
        side = int(math.isqrt(counts.numel()))
        if side * side == counts.numel():
            return counts.view(side, side).cpu(), f"{n.name}: live connections per input pixel"
        return None
    if "area" in n.params:
        return n.params["area"].sum((0, 1)).float().cpu(), f"{n.name}: live (in, out) pairs per output position"
    if len(shape) == 4:
        taps = n.params["mask"].sum((0, 1)).float()
        return taps.cpu(), f"{n.name}: live connections per kernel tap"
    return None


def plot_first_layer(path: str, graph: Graph) -> bool:
    res = first_layer_map(graph)
    if res is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, title = res
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(img.numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
