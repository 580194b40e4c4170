"""The run directory: --force starts clean, resume checks run.json and never runs code it names,
a run whose growth overshot the budget resumes."""

import json

import torch

from nestir.cli import main

TINY = ["--quiet", "--dense-epochs", "1", "--initial-epochs", "1", "--epochs", "1", "--prune-epochs", "1",
        "--max-growth-steps", "1", "--max-prune-steps", "1", "--final-epochs", "1"]


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
    import nestir.cli_run as cr

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
