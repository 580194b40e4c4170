"""Kill a synthesize run (SIGKILL) at random moments, resume it, and compare with the uninterrupted
run of the same options: the resumed run must finish with the same network (model.pt byte for
byte) and the same report numbers (wall times aside). NESTIR_KILL_POINTS=N runs N kill points
(default 2: a few seconds each)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from harness import TINY_MLP_FILE as MLP

import nestir

OPTIONS = ["--quiet", "--data", "digits", "--dense-epochs", "1", "--initial-epochs", "1", "--epochs", "1",
           "--prune-epochs", "1", "--shift-epochs", "1", "--max-growth-steps", "2", "--max-prune-steps", "3",
           "--final-epochs", "1", "--seed", "3"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nestir.__file__)))
TIMES = {"seconds", "wall_seconds", "wall"}


def without_times(obj):
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if k not in TIMES}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj


def cli(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-m", "nestir.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    (base / "mlp.py").write_text(MLP)
    spec = f"{base / 'mlp.py'}:make"
    out = base / "reference"
    # made the way the killed runs are made (a fresh process, one thread): runs reproduce per machine
    # and thread count, and pytest's own process may run with another
    proc = cli("synthesize", spec, "--out", str(out), *OPTIONS)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return spec, out


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    t0 = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.01)
    return True


def test_kill_at_random_moments_then_resume(reference, tmp_path):
    spec, ref = reference
    ref_report = json.loads((ref / "report.json").read_text())
    rng = random.Random(int(os.environ.get("NESTIR_KILL_SEED", "0")))
    points = int(os.environ.get("NESTIR_KILL_POINTS", "2"))
    killed = 0
    for i in range(points):
        out = tmp_path / f"run{i}"
        proc = cli("synthesize", spec, "--out", str(out), *OPTIONS)
        # the first checkpoint is written after the dense reference; kill somewhere in the steps after it
        assert wait_for(str(out / "checkpoint.pt"), proc), proc.communicate()[1]
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        resumed = cli("synthesize", spec, "--resume", str(out), "--quiet")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
        report = json.loads((out / "report.json").read_text())
        assert without_times(report["final"]) == without_times(ref_report["final"])
        assert without_times(report["phases"]) == without_times(ref_report["phases"])
        assert (out / "model.pt").read_bytes() == (ref / "model.pt").read_bytes()
    assert killed >= 1 or points == 0  # at least one kill landed mid-run
