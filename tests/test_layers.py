"""The layers nestir is built in (pyproject.toml's import-linter contract): checked with
lint-imports on an installed copy of the package, where nestir.passes and nestir.backends sit
inside it as they do for users; a planted upward import breaks it, named module by module."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(site), ROOT], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return site


def lint(site):
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([LINT, os.path.join(ROOT, "pyproject.toml")], capture_output=True, text=True, cwd=site,
                          env=env)


def test_every_layer_imports_only_the_layers_below_it(installed):
    p = lint(installed)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "1 kept, 0 broken" in p.stdout


def test_a_planted_upward_import_breaks_the_contract_and_names_both_modules(installed, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    with open(site / "nestir" / "ir" / "edit.py", "a") as f:
        f.write("\nfrom nestir.passes import magnitude_prune  # planted\n")
    p = lint(site)
    assert p.returncode != 0
    assert "nestir.ir.edit -> nestir.passes.magnitude_prune" in p.stdout


def test_importing_the_core_loads_no_module_above_it():
    code = ("import sys, nestir.ir.graph, nestir.ir.serialize, nestir.ir.stats, nestir.ir.compact, nestir.ir.edit, "
            "nestir.ir.verify, nestir.ir.interpreter, nestir.ir.opdefs; "
            "print(sorted(m for m in sys.modules if m.startswith('nestir.') and not m.startswith('nestir.ir')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"
