"""The README's "Property-testing your own pass" example runs and passes (in its own process: it
registers a pass, which would leak into this session's registry)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_own_pass_example_passes():
    r = subprocess.run([sys.executable, "-m", "pytest", "examples/own_pass_test.py", "-q", "-p", "no:cacheprovider",
                        "-W", "ignore::DeprecationWarning"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 passed" in r.stdout
