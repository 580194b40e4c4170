import json

import pytest
import torch

from nestir.errors import NestirError
from nestir.runs import RunSpec, prepare
from nestir.serialize import load_graph
from nestir.synthesis import SynthConfig, Synthesizer, sparsify_seed

FAST = {"initial_epochs": 1, "epochs": 1, "shift_epochs": 1, "prune_epochs": 1, "max_growth_steps": 2,
        "max_prune_steps": 3, "grow_neurons": 4, "target_accuracy": 0.99}


def small_prep():
    prep = prepare(RunSpec(model="lenet-300-100", val_fraction=0.1))
    prep.train.x, prep.train.y = prep.train.x[:600], prep.train.y[:600]
    return prep


def test_seed_is_sparse_and_has_no_islands():
    prep = small_prep()
    for n in prep.graph.parametric():
        m = n.params["mask"]
        assert 0.4 < float(m.float().mean()) < 0.6
        assert bool(m.any(1).all()) and bool(m.any(0).all())


def test_grow_then_prune(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST})
    s = Synthesizer(prep.graph, prep.train, prep.val, cfg, str(tmp_path))
    st = s.run()
    phases = [r["phase"] for r in st.history]
    assert phases[0] == "seed" and "shift" in phases
    first_prune = phases.index("shift")
    assert all(p == "grow" for p in phases[1:first_prune])
    assert all(p == "prune" for p in phases[first_prune + 1:])  # growth once, then pruning
    grow = [r["params"] for r in st.history[: first_prune + 1]]
    assert grow == sorted(grow) and grow[-1] > grow[0]
    assert not st.target_reached  # 99% is out of reach here, and the run says so
    assert all(n.attrs["kind"] == "relu" for n in s.graph if n.op == "act")


def test_interrupted_run_resumes(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST})

    class Stop:
        steps = 0

        def phase(self, *a):
            pass

        def epoch(self, *a):
            pass

        def message(self, *a):
            pass

        def step(self, row):
            Stop.steps += 1
            if Stop.steps == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Synthesizer(prep.graph.copy(), prep.train, prep.val, cfg, str(tmp_path), reporter=Stop()).run()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(ck["state"]["history"]) == 2  # the interrupted step was not half-saved
    s = Synthesizer.resume(str(tmp_path), prep.train, prep.val)
    st = s.run()
    assert st.phase == "done" and len(st.history) > 3
    assert [r["step"] for r in st.history] == list(range(len(st.history)))


def test_budget_smaller_than_seed_and_bad_density():
    prep = small_prep()
    with pytest.raises(NestirError, match="smaller than the seed"):
        Synthesizer(prep.graph, prep.train, prep.val, SynthConfig(max_params=10, target_accuracy=0.9), "/tmp/x")
    with pytest.raises(NestirError, match="seed-density"):
        sparsify_seed(prep.graph, 1.5, 0)


def test_cli_synthesize_writes_the_contract(tmp_path, capsys):
    from nestir.cli import main

    out = tmp_path / "run"
    argv = ["synthesize", "lenet-300-100", "--out", str(out), "--quiet", "--initial-epochs", "1", "--epochs", "1",
            "--prune-epochs", "1", "--max-growth-steps", "1", "--max-prune-steps", "1", "--dense-epochs", "1",
            "--test-data", "mnist-idx:../shared/data/mnist"]
    import os

    if not os.path.isdir("../shared/data/mnist"):
        argv = argv[:-2]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("params", "flops", "val_error", "test_error"):
        assert key in report["final"] and key in report["baseline"]  # A defaults to the dense model's accuracy
    assert report["target_accuracy"] <= 1 - report["baseline"]["val_error"] + 1e-9
    assert report["phases"] and {"phase", "params", "flops", "val_error"} <= set(report["phases"][0])
    assert report["wall_seconds"] > 0
    for f in ("model.onnx", "model.pt", "history.csv", "history.png", "first_layer.png"):
        assert (out / f).exists()
    g, _ = load_graph(str(out / "model.pt"))
    assert report["final"]["params"] == __import__("nestir").stats(g)["params"]
    assert main(argv) == 2  # refuses to overwrite a run without --force
    assert "already holds a run" in capsys.readouterr().err


def test_tampered_checkpoint_is_refused(tmp_path):
    prep = small_prep()
    cfg = SynthConfig(**{**prep.defaults, **FAST, "max_prune_steps": 0, "max_growth_steps": 0})
    Synthesizer(prep.graph, prep.train, prep.val, cfg, str(tmp_path)).run()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ck["graph"]["nodes"][2]["params"]["weight"][0, 0] += 1
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(NestirError, match="integrity"):
        Synthesizer.resume(str(tmp_path), prep.train, prep.val)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(NestirError, match="corrupt"):
        Synthesizer.resume(str(tmp_path), prep.train, prep.val)
