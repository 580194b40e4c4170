"""The architecture, held (docs/architecture.md): the layers of pyproject.toml's import-linter
contract, checked with lint-imports on an installed copy of the package (where nestir.passes and
nestir.backends sit inside it as they do for users; a planted upward import breaks it, named
module by module); no class or function over 300 lines; op names compared only through the
constants of nestir.ir.kinds outside the op definitions; those constants and the registered op definitions agree."""

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import importlinter  # noqa: F401
except ImportError:  # pragma: no cover - the suite's set-up installs it (pip install -e '.[test]')
    importlinter = None
needs_linter = pytest.mark.skipif(importlinter is None, reason="import-linter is missing: pip install -e '.[test]'")
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site, src = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):  # a copy: the build leaves nothing in the checkout
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ("nestir", "passes", "backends"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return site


def lint(site):
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-c", LINT, os.path.join(ROOT, "pyproject.toml")], capture_output=True,
                          text=True, cwd=site, env=env)


@needs_linter
def test_every_layer_imports_only_the_layers_below_it(installed):
    p = lint(installed)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "1 kept, 0 broken" in p.stdout


@needs_linter
def test_the_contract_holds_in_the_checkout_too():
    p = subprocess.run([sys.executable, "-c", LINT, os.path.join(ROOT, "pyproject.toml")], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:]


@needs_linter
def test_a_planted_upward_import_breaks_the_contract_and_names_both_modules(installed, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    with open(site / "nestir" / "ir" / "edit.py", "a") as f:
        f.write("\nfrom nestir.passes import magnitude_prune  # planted\n")
    with open(site / "nestir" / "backends" / "train.py", "a") as f:  # the layers marked optional are checked too
        f.write("\nfrom nestir.driver import zoo  # planted\n")
    p = lint(site)
    assert p.returncode != 0
    assert "nestir.ir.edit -> nestir.passes.magnitude_prune" in p.stdout
    assert "nestir.backends.train -> nestir.driver.zoo" in p.stdout


def test_importing_the_core_loads_no_module_above_it():
    code = ("import sys, nestir.ir.graph, nestir.ir.serialize, nestir.ir.stats, nestir.ir.compact, nestir.ir.edit, "
            "nestir.ir.verify, nestir.ir.interpreter, nestir.ir.opdefs; "
            "print(sorted(m for m in sys.modules if m.startswith('nestir.') and not m.startswith('nestir.ir')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


def _sources() -> list[str]:
    found = [glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True) for d in ("nestir", "passes", "backends")]
    return sorted(f for files in found for f in files)


def test_no_class_or_function_is_over_300_lines():
    long = []
    for f in _sources():
        for n in ast.walk(ast.parse(open(f).read())):
            if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 300:
                long.append(f"{os.path.relpath(f, ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long, long


def test_no_op_is_compared_with_a_string_literal_outside_the_core():
    def is_op(e):
        return (isinstance(e, ast.Attribute) and e.attr == "op") or (isinstance(e, ast.Name) and e.id == "op")

    def literal(e):
        items = e.elts if isinstance(e, (ast.Tuple, ast.List, ast.Set)) else [e]
        return any(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in items)

    hits = []
    for f in _sources():
        if os.path.relpath(f, ROOT).startswith(os.path.join("nestir", "ir", "opdefs")):  # the definitions
            continue
        for n in ast.walk(ast.parse(open(f).read())):
            sides = [n.left, *n.comparators] if isinstance(n, ast.Compare) else []
            if any(is_op(x) for x in sides) and any(literal(x) for x in sides):
                hits.append(f"{os.path.relpath(f, ROOT)}:{n.lineno}")
    assert not hits, hits


def test_the_op_constants_name_every_registered_op_definition():
    from nestir.ir.kinds import Op
    from nestir.ir.opdefs import OPS

    built_in = {name for name, d in OPS.items() if type(d).__module__.startswith("nestir.ir.opdefs")}
    names = {v for k, v in vars(Op).items() if k.isupper()}
    assert names == built_in  # (a user's op, registered at run time, needs no constant)
    assert all(getattr(Op, name.upper()) == name for name in built_in)
