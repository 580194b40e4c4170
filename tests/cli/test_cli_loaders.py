"""``--data file.py:factory``: the user's DataLoaders through the CLI (and nestir.synthesize)."""

import json

import pytest
from harness import TINY_MLP_FILE

from nestir.cli import main

LOADERS = '''
import torch
from torch.utils.data import DataLoader, TensorDataset
from nestir.driver.data import load

def loaders():
    d = load("digits")
    x, y = d.x.float(), d.y
    dl = lambda a, b, shuffle: DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=64, shuffle=shuffle)
    return dl(0, 1100, True), dl(1100, 1450, False), dl(1450, 1797, False)

def broken():
    return 42
'''
FAST = ["--dense-epochs", "3", "--final-epochs", "1", "--trial-epochs", "1", "--initial-epochs", "1", "--epochs", "1",
        "--shift-epochs", "1", "--prune-epochs", "1", "--max-growth-steps", "1", "--max-prune-steps", "3", "--quiet"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "model.py").write_text(TINY_MLP_FILE)
    (tmp_path / "data.py").write_text(LOADERS)
    return tmp_path


def test_synthesize_on_a_loader_factory_writes_a_report_with_test_error(files):
    out = files / "run"
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--out", str(out),
               "--device", "cpu", *FAST])
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    assert r["data"] == "user loaders"
    assert r["final"]["params"] <= r["baseline"]["params"]
    for key in ("final", "baseline"):
        assert 0 <= r[key]["test_error"] < 0.5  # scored on the factory's third loader
    assert (out / "model.onnx").exists()


def test_a_factory_that_returns_no_loaders_is_a_clear_error(files, capsys):
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:broken", "--out",
               str(files / "run"), *FAST])
    assert rc == 2
    assert "must return (train, val)" in capsys.readouterr().err
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/missing.py:loaders", "--out",
               str(files / "run"), *FAST])
    assert rc == 2
    assert "data file" in capsys.readouterr().err


DICTS = '''
import torch

def loaders():
    batches = [{"x": torch.zeros(4, 1, 8, 8), "y": torch.zeros(4, dtype=torch.long)}]
    return batches, batches
'''


@pytest.mark.parametrize("extra, words", [
    (["--max-params", "100"], "smaller than the seed"),
    (["--seed-density", "0"], "seed_density"),
    (["--seed-density", "1.5"], "seed_density"),
    (["--dense-epochs", "-1"], "dense-epochs"),
    (["--batch-size", "0"], "batch-size"),
])
def test_bad_options_with_your_loaders_are_refused_before_training_with_nothing_written(files, capsys, extra,
                                                                                       words):
    out = files / "run"
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--out", str(out),
               "--device", "cpu", *FAST, *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert words in err and "dense" not in err.split("error")[0]
    assert not out.exists()


def test_out_naming_a_file_and_dict_batches_are_named(files, capsys):
    (files / "f").write_text("x")
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--out",
               str(files / "f"), *FAST])
    assert rc == 2 and "is a file" in capsys.readouterr().err
    (files / "dicts.py").write_text(DICTS)
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/dicts.py:loaders", "--out",
               str(files / "run"), *FAST])
    assert rc == 2 and "a dict with keys ['x', 'y']" in capsys.readouterr().err


def test_a_run_on_your_loaders_resumes_and_a_rerun_says_how(files, capsys):
    out = files / "run"
    args = ["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--out", str(out),
            "--device", "cpu", *FAST]
    assert main(args) == 0
    first = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--resume", str(out),
               "--device", "cpu", "--quiet"])
    assert rc == 0  # the checkpoint is at its end: the same network is written again
    again = json.loads((out / "report.json").read_text())
    assert again["final"]["params"] == first["final"]["params"]
    assert again["phases"] == first["phases"]
    rc = main(["synthesize", "--resume", str(out), "--quiet"])
    assert rc == 2 and "own loaders" in capsys.readouterr().err


def test_apply_on_your_loaders(files, capsys):
    out = files / "applied"
    rc = main(["apply", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--pass",
               "magnitude-prune:fraction=0.5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    assert r["final"]["params"] < r["before"]["params"] and 0 <= r["final"]["val_error"] <= 1
    for bad, words in ((["--batch-size", "0"], "--batch-size"), (["--pass", "magnitude-prune:fraction=7"], "fraction")):
        out2 = files / "bad"
        rc = main(["apply", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--out", str(out2),
                   *(["--pass", "magnitude-prune"] if bad[0] != "--pass" else []), *bad])
        assert rc == 2 and words in capsys.readouterr().err
        assert not out2.exists()
