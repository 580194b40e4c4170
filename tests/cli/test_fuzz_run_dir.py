"""Fuzzing the run directory and the CLI's options (Hypothesis): whatever was done to the files of a
run (truncated, bytes flipped, files swapped or removed, JSON fields changed) and whatever numbers
the options hold, a command either exits 0 with valid outputs or exits 2 with exactly one
``nestir: error`` line, and never damages a file it did not mean to rewrite."""

from __future__ import annotations

import json
import math
import os
import shutil

import onnx
import pytest
from harness import TINY_MLP_FILE as MLP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestir.cli import main

TINY = ["--quiet", "--data", "digits", "--dense-epochs", "1", "--initial-epochs", "1", "--epochs", "1",
        "--prune-epochs", "1", "--shift-epochs", "1", "--max-growth-steps", "1", "--max-prune-steps", "1",
        "--final-epochs", "1"]
NS = {"allow_subnormal": False}  # a run flushes denormals (torch.set_flush_denormal): no strategy may draw them
FILES = ["run.json", "checkpoint.pt", "report.json", "model.pt", "model.onnx", "history.csv"]
# every run is one Hypothesis example: fewer than the profile's default, more under the dev profile
FEW = settings(max_examples=max(4, settings.default.max_examples // 2),
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def snapshot(d: str) -> dict[str, bytes]:
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))
            if os.path.isfile(os.path.join(d, n)) and not n.endswith(".tmp")}


def one_error_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("nestir: error: ")


def check_outputs(d: str, history: bool = True) -> None:
    """What a run that exited 0 must leave: consistent, loadable outputs."""
    from nestir.ir.serialize import load_graph
    from nestir.ir.stats import stats

    report = json.load(open(os.path.join(d, "report.json")))
    g, _ = load_graph(os.path.join(d, "model.pt"))
    assert report["final"]["params"] == stats(g)["params"]
    assert 0 <= report["final"]["val_error"] <= 1
    onnx.checker.check_model(onnx.load(os.path.join(d, "model.onnx")))
    if history:
        assert open(os.path.join(d, "history.csv")).readline().startswith("step")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny run and one interrupted after its second checkpoint (MLP on digits)."""
    import nestir.cli.run as cr

    base = tmp_path_factory.mktemp("fuzz")
    model = base / "mlp.py"
    model.write_text(MLP)
    spec = f"{model}:make"
    finished = base / "finished"
    assert main(["synthesize", spec, "--out", str(finished), *TINY]) == 0
    interrupted = base / "interrupted"
    real = cr.Synthesizer.checkpoint
    calls = {"n": 0}

    def killed_after_two(self):
        real(self)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cr.Synthesizer, "checkpoint", killed_after_two)
        assert main(["synthesize", spec, "--out", str(interrupted), *TINY]) == 2
    assert (interrupted / "checkpoint.pt").exists() and not (interrupted / "report.json").exists()
    return {"spec": spec, "finished": str(finished), "interrupted": str(interrupted), "base": base}


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True, **NS),
                        st.sampled_from(["", "digits", "mnist5k", "lenet-5", "evil.py:make", "npz:/nonexistent",
                                         "cuda", "../..", "x" * 300]),
                        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                             max_size=2))


@st.composite
def damage(draw):
    """One or two random changes to a run directory's files."""
    changes = []
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(FILES))
        kind = draw(st.sampled_from(["truncate", "flip", "swap", "delete", "empty", "json", "stale-tmp"]))
        changes.append((name, kind, draw(st.floats(0, 1, **NS)), draw(st.integers(1, 255)),
                        draw(st.sampled_from(FILES)),
                        draw(st.sampled_from(["spec", "config", "baseline", "final", "phases"])),
                        draw(st.text(min_size=1, max_size=12)), draw(JSON_VALUES)))
    return changes


def apply_damage(d: str, changes) -> None:
    for name, kind, where, xor, other, section, key, value in changes:
        path = os.path.join(d, name)
        if not os.path.exists(path):
            continue
        data = open(path, "rb").read()
        if kind == "truncate":
            data = data[: int(where * len(data))]
        elif kind == "flip" and data:
            i = min(len(data) - 1, int(where * len(data)))
            data = data[:i] + bytes([data[i] ^ xor]) + data[i + 1:]
        elif kind == "swap" and os.path.exists(os.path.join(d, other)):
            data = open(os.path.join(d, other), "rb").read()
        elif kind == "delete":
            os.remove(path)
            continue
        elif kind == "empty":
            data = b""
        elif kind == "json" and name.endswith(".json"):
            try:
                doc = json.loads(data)
                target = doc.get(section) if isinstance(doc.get(section), dict) else doc
                fields = sorted(target) if isinstance(target, dict) else []
                target[fields[int(where * (len(fields) - 1))] if fields and xor % 2 else key] = value
                data = json.dumps(doc).encode()
            except (ValueError, AttributeError, TypeError):
                pass
        elif kind == "stale-tmp":
            open(os.path.join(d, f"stale{xor}.tmp"), "wb").write(data[: len(data) // 2])
            continue
        open(path, "wb").write(data)


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    if os.environ.get("NESTIR_FUZZ_LOG"):  # what each example did, for a long run one reports on
        with open(os.environ["NESTIR_FUZZ_LOG"], "a") as f:
            f.write(f"{rc} {argv[0]} {err[:300]!r}\n")
    return rc, err


def check_contract(rc: int, err: str, d: str, before: dict[str, bytes], rewrites: set[str]) -> None:
    assert rc in (0, 2), (rc, err)
    after = snapshot(d)
    if rc == 2:
        assert one_error_line(err), err
        assert after == before, "a refused command changed files"
    else:
        check_outputs(d)
        for name in set(before) - rewrites:
            assert after.get(name) == before[name], f"{name} was damaged"
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")] or rc == 2


@FEW
@given(changes=damage(), which=st.sampled_from(["finished", "interrupted"]))
def test_resume_of_a_damaged_run_directory(runs, tmp_path_factory, capsys, changes, which):
    d = str(tmp_path_factory.mktemp("resume") / "run")
    shutil.copytree(runs[which], d)
    apply_damage(d, changes)
    before = snapshot(d)
    stale = {n for n in os.listdir(d) if n.endswith(".tmp")}
    rc, err = run_cli(["synthesize", runs["spec"], "--resume", d, "--quiet"], capsys)
    # a resume that succeeds rewrites the checkpoint and every output, never run.json
    check_contract(rc, err, d, before, {"checkpoint.pt", "report.json", "model.pt", "model.onnx", "history.csv"})
    if rc == 0:
        assert not stale & set(os.listdir(d))  # what interrupted writes left is cleaned up
        report = json.load(open(os.path.join(d, "report.json")))
        assert report["model"] == runs["spec"] and report["method"] == "nest"


@FEW
@given(changes=damage())
def test_a_damaged_model_file_as_input(runs, tmp_path_factory, capsys, changes):
    """A run's model.pt fed back to a verb (apply MODEL.pt): loaded whole and checked, or refused."""
    d = str(tmp_path_factory.mktemp("model") / "run")
    shutil.copytree(runs["finished"], d)
    apply_damage(d, [(("model.pt",) + c[1:]) for c in changes])
    out = os.path.join(os.path.dirname(d), "applied")
    before = snapshot(d)
    rc, err = run_cli(["apply", os.path.join(d, "model.pt"), "--data", "digits", "--pass", "eliminate-dead-neurons",
                       "--batches", "1", "--out", out, "--quiet"], capsys)
    assert rc in (0, 2), (rc, err)
    assert snapshot(d) == before  # the input directory is only read
    if rc == 2:
        assert one_error_line(err), err
        assert not os.path.exists(out)
    else:
        check_outputs(out, history=False)


NUMERIC = {
    "--max-params": st.integers(-10, 10**7).map(str),
    "--tolerance": st.floats(allow_nan=True, allow_infinity=True, **NS).map(repr),
    "--confidence": st.floats(allow_nan=True, allow_infinity=True, **NS).map(repr),
    "--prune-fraction": st.floats(-1, 2, **NS).map(repr),
    "--partial-area": st.floats(-1, 2, **NS).map(repr),
    "--batch-size": st.one_of(st.integers(-2, 0), st.integers(16, 5000)).map(str),  # 1..15: valid, only slow
    "--lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True, **NS), st.floats(1e-5, 1e-1, **NS)).map(repr),
    "--val-fraction": st.floats(-0.5, 1.5, **NS).map(repr),
    "--audit-fraction": st.floats(-0.5, 1.5, **NS).map(repr),
    "--seed-density": st.floats(-0.5, 1.5, **NS).map(repr),
    "--seed": st.integers(-5, 2**70).map(str),
    "--distill": st.floats(-1, 2, **NS).map(repr),
    "--target-accuracy": st.floats(-0.5, 1.5, **NS).map(repr),
    "--grow-neurons": st.one_of(st.integers(-5, 200), st.just(10**9)).map(str),
}


@FEW
@given(options=st.dictionaries(st.sampled_from(sorted(NUMERIC)), st.just(None), min_size=1, max_size=3)
       .flatmap(lambda d: st.fixed_dictionaries({k: NUMERIC[k] for k in d})))
def test_random_numeric_options(runs, tmp_path_factory, capsys, options):
    d = str(tmp_path_factory.mktemp("opts") / "run")
    argv = ["synthesize", runs["spec"], "--out", d, *TINY]
    for k, v in options.items():
        argv += [f"{k}={v}"]
    rc, err = run_cli(argv, capsys)
    assert rc in (0, 2), (options, rc, err)
    if rc == 2:
        assert one_error_line(err), (options, err)
        assert not os.path.exists(os.path.join(d, "run.json"))  # refused before the run started
    else:
        check_outputs(d)
        report = json.load(open(os.path.join(d, "report.json")))
        assert all(math.isfinite(r["val_error"]) for r in report["phases"])
