"""The run directory: --force starts clean, resume checks run.json and never runs code it names,
a run whose growth overshot the budget resumes."""

import json

import torch

from nestir.cli import main
from nestir.driver.config import SynthConfig

TINY = ["--quiet", "--dense-epochs", "1", "--initial-epochs", "1", "--epochs", "1", "--prune-epochs", "1",
        "--max-growth-steps", "1", "--max-prune-steps", "1", "--final-epochs", "1", "--shift-epochs", "1",
        "--trial-epochs", "1"]


def test_code_in_run_json_is_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nimport torch.nn as nn\n"
                    "def make():\n    return nn.Linear(784, 10)\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"spec": {"model": f"{evil}:make"}, "config": {}, "baseline": None}))
    assert main(["synthesize", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "nestir: error:" in err and "is code" in err
    assert not marker.exists()


def test_malformed_run_json_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for text in ("{not json", json.dumps({"spec": {"model": "lenet-5", "evil": 1}}), json.dumps([1, 2])):
        (run / "run.json").write_text(text)
        assert main(["synthesize", "--resume", str(run)]) == 2
        assert "not a valid nestir run description" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused_up_front(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["synthesize", "lenet-300-100", "--out", str(f), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err


def test_force_clears_the_old_run_and_overshoot_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    # growth overshoots a budget just above the seed: the resumed run must continue regardless
    argv = ["synthesize", "lenet-300-100", "--out", str(out), *TINY, "--max-params", "13000"]
    assert main(argv) == 0
    old = json.loads((out / "report.json").read_text())
    # start over with --force: the old outputs are gone the moment the new run starts
    (out / "stale.tmp").write_text("half-written")
    import nestir.cli.run as cr

    calls = {"n": 0}
    real = cr.Synthesizer.run

    def interrupted(self):  # killed right after its first checkpoint
        import time

        calls["n"] += 1
        self._t0 = time.perf_counter()
        self.checkpoint()
        raise KeyboardInterrupt

    cr.Synthesizer.run = interrupted
    try:
        assert main([*argv, "--force", "--seed", "1", "--max-params", "20000"]) == 2
    finally:
        cr.Synthesizer.run = real
    assert not (out / "report.json").exists() and not (out / "model.onnx").exists()
    assert not (out / "stale.tmp").exists()
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["max_params"] == 20000
    assert main(["synthesize", "--resume", str(out), "--quiet"]) == 0  # finishes the *new* run
    new = json.loads((out / "report.json").read_text())
    assert new["config"]["max_params"] == 20000 and new["seed"] == 1 and old["seed"] == 0
    # run.json edited to another seed (valid JSON, no code): refused, nothing rewritten
    meta = json.loads((out / "run.json").read_text())
    meta["spec"]["seed"] = 7
    (out / "run.json").write_text(json.dumps(meta))
    before = (out / "report.json").read_bytes()
    capsys.readouterr()
    assert main(["synthesize", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "seed" in err and err.count("nestir: error") == 1
    assert (out / "report.json").read_bytes() == before


def test_a_run_stopped_in_its_dense_phase_resumes_after_the_networks_it_saved(tmp_path, capsys):
    """Interrupted while its second dense network trains: the first is saved (checksummed), run.json
    says how to go on, and --resume trains only the second, then finishes with the network an
    uninterrupted run ships. A corrupt saved network is a clear error that writes nothing."""
    from harness import dense_interrupted

    argv = [*TINY, "--teachers", "2"]
    assert main(["synthesize", "lenet-300-100", "--out", str(tmp_path / "a"), *argv]) == 0
    out = tmp_path / "b"
    with dense_interrupted(2) as calls:
        capsys.readouterr()
        assert main(["synthesize", "lenet-300-100", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert "interrupted in the dense phase" in err and f"--resume {out}" in err
        assert (out / "dense" / "000.pt").exists() and not (out / "dense" / "001.pt").exists()
        assert not (out / "checkpoint.pt").exists() and json.loads((out / "run.json").read_text())["baseline"] is None
        good = (out / "dense" / "000.pt").read_bytes()
        (out / "dense" / "000.pt").write_bytes(good[: len(good) // 2])
        assert main(["synthesize", "--resume", str(out), "--quiet"]) == 2
        assert "corrupt or truncated" in capsys.readouterr().err and not (out / "checkpoint.pt").exists()
        (out / "dense" / "000.pt").write_bytes(good)
        calls.clear()
        assert main(["synthesize", "--resume", str(out), "--quiet"]) == 0
    assert len(calls) == 1  # only the second dense network trained again
    assert (out / "model.pt").read_bytes() == (tmp_path / "a" / "model.pt").read_bytes()
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (tmp_path / "a", out))
    assert rb["final"] == ra["final"] and rb["baseline"] == ra["baseline"]
    assert not (out / "dense").exists() and not (out / "chain").exists()


def test_a_run_stopped_while_a_dense_network_trains_goes_on_after_its_last_saved_epoch(tmp_path, capsys):
    """Stopped in the middle of the reference's training: the state after its last epoch is saved
    (checksummed); --resume trains only the epochs after it and ships, byte for byte, what the
    uninterrupted run ships. A corrupt saved state is a clear error that writes nothing."""
    from harness import dense_stopped_in_training

    argv = [*TINY, "--teachers", "2", "--dense-epochs", "3"]
    with dense_stopped_in_training(0) as whole:
        assert main(["synthesize", "lenet-300-100", "--out", str(tmp_path / "a"), *argv]) == 0
    out = tmp_path / "b"
    with dense_stopped_in_training(2) as saves:
        capsys.readouterr()
        assert main(["synthesize", "lenet-300-100", "--out", str(out), *argv]) == 2
        assert "interrupted in the dense phase" in capsys.readouterr().err
        partial = out / "dense" / "000.partial.pt"
        assert partial.exists() and not (out / "dense" / "000.pt").exists() and not (out / "checkpoint.pt").exists()
        good = partial.read_bytes()
        partial.write_bytes(good[: len(good) // 2])
        assert main(["synthesize", "--resume", str(out), "--quiet"]) == 2
        assert "corrupt or truncated" in capsys.readouterr().err and not (out / "checkpoint.pt").exists()
        partial.write_bytes(good)
        assert main(["synthesize", "--resume", str(out)]) == 0
        assert "dense network 1 of 2 goes on after epoch 2 of its training" in capsys.readouterr().err
    assert saves == whole  # every epoch trained once: the two before the stop, the rest after it
    assert (out / "model.pt").read_bytes() == (tmp_path / "a" / "model.pt").read_bytes()
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (tmp_path / "a", out))
    assert rb["final"] == ra["final"] and rb["baseline"] == ra["baseline"]
    assert not (out / "dense").exists()


def test_bad_options_exit_2_before_work(tmp_path, capsys):
    out = str(tmp_path / "r")
    cases = [
        (["--prune-fraction", "2"], "prune-fraction"),
        (["--batch-size", "0"], "batch-size"),
        (["--lr", "nan"], "lr"),
        (["--lr", "-1"], "lr"),
        (["--prune-lr", "0"], "prune-lr"),
        (["--lr-floor", "1.5"], "lr-floor"),
        (["--device", "tpu"], "device"),
        (["--seed-density", "2"], "seed-density"),
        (["--epochs", "-3"], "epochs"),
        (["--test-data", "digits"], "test data"),
        (["--grow-neurons", "1000000000"], "grow-neurons"),  # found by the options fuzz
        (["--target-accuracy=-0.5"], "target-accuracy"),  # found by the options fuzz
    ]
    for extra, word in cases:
        assert main(["synthesize", "lenet-300-100", "--out", out, "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("nestir: error:") and word in err and err.count("\n") == 1, (extra, err)
        assert not (tmp_path / "r" / "run.json").exists()  # a rejected run leaves nothing behind


def test_idx_directory_with_only_test_files_is_not_training_data(tmp_path):
    import pytest

    from nestir.driver.data import load, load_idx
    from nestir.ir.errors import DataError

    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes(3))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(12))
    with pytest.raises(DataError, match="no training"):
        load(f"mnist-idx:{tmp_path}")
    assert len(load_idx(str(tmp_path), "test")) == 3
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 0]) + bytes(2))  # 0 dimensions
    with pytest.raises(DataError, match="not a valid IDX"):
        load_idx(str(tmp_path), "test")


def test_pass_options_out_of_range_are_refused():
    import math

    import pytest

    from nestir import passes
    from nestir.ir.errors import PassError

    for name, opts in [("split-neuron", {"count": 2.5}), ("grow-connection", {"fraction": math.nan}),
                       ("bridge-neuron", {"count": 100_000_000}), ("magnitude-prune", {"fraction": 1.5})]:
        with pytest.raises(PassError):
            passes.get(name, **opts)
    from nestir.passinfra.base import parse

    with pytest.raises(PassError):
        parse("grow-connection:fraction=nan")


def test_prune_baseline_cli_same_contract(tmp_path):
    out = tmp_path / "p"
    assert main(["prune-baseline", "lenet-300-100", "--out", str(out), "--prune-lr", "0.003", *TINY]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["method"] == "prune" and r["config"]["prune_scope"] == SynthConfig().prune_scope
    assert r["config"]["prune_lr"] == 0.003 != SynthConfig().prune_lr
    assert {"params", "flops", "val_error", "audit_error", "test_error"} <= set(r["final"]) and "baseline" in r
    assert r["phases"][0]["phase"] == "dense" and r["final"]["params"] <= 266610
    assert (out / "model.onnx").exists()
