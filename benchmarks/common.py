"""Shared helpers for benchmark scripts: interleaved timing and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so that machine noise hits
    all of them alike (ratios measured in one run)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, *,
                  masks: bool = False) -> Callable[[], None]:
    """One cross-entropy optimizer step on (x, y), as a timed callable; ``masks``: an IRModule
    re-applies its connectivity masks after the step, as synthesis does."""
    import torch.nn.functional as F

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if masks:
            model.apply_masks()  # type: ignore[operator]

    return step


def machine() -> dict[str, object]:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": dev}


def load_results(name: str, merge: str = "", fresh: bool = False) -> dict:
    """The results file ``name`` under results/ (``{"models": {}}`` when absent or ``fresh``), with
    the seeds of every model in the comma-separated results files in ``merge`` merged into it (a
    seed in both is taken from the merged file; the file's other seeds stay)."""
    path = os.path.join(RESULTS, name)
    results: dict = {"models": {}}
    if os.path.isfile(path) and not fresh:
        with open(path) as f:
            results = json.load(f)
    for extra in filter(None, merge.split(",")):
        with open(os.path.join(RESULTS, extra)) as f:
            for model, seeds in json.load(f)["models"].items():
                results["models"].setdefault(model, {}).update(seeds)
    return results


def save(name: str, data: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return path
