import onnx

from nestir.cli import main

MODEL = '''
import torch.nn as nn
INPUT_SHAPE = (6,)
def make():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
def broken():
    raise ValueError("no weights here")
'''


def test_inspect_zoo_and_file(tmp_path, capsys):
    assert main(["inspect", "lenet-300-100"]) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "266610" in out
    f = tmp_path / "m.py"
    f.write_text(MODEL)
    assert main(["inspect", f"{f}:make"]) == 0
    assert "Linear(6->5)" in capsys.readouterr().out


def test_export_onnx(tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", "lenet-5", "--onnx", str(out)]) == 0
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert m.graph.input[0].name == "input"


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(MODEL)
    cases = [
        (["inspect", "no-such-model"], "unknown model"),
        (["inspect", str(tmp_path / "missing.py") + ":make"], "does not exist"),
        (["inspect", f"{f}:nothing"], "has no attribute 'nothing'"),
        (["inspect", f"{f}:broken"], "raised ValueError"),
        (["inspect", f"{f}:make", "--input-shape", "7"], "rejects example input"),
        (["inspect", "lenet-5", "--input-shape", "a,b"], "expected integers"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("nestir: error:") and msg in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_apply_and_prune_baseline(tmp_path, capsys):
    import json

    out = tmp_path / "a"
    assert main(["apply", "lenet-300-100", "--pass", "magnitude-prune:fraction=0.5,neuron_fraction=0.2",
                 "--pass", "eliminate-dead-neurons", "--out", str(out), "--batches", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["final"]["params"] < rep["before"]["params"]
    assert (out / "model.onnx").exists()
    out = tmp_path / "p"
    assert main(["prune-baseline", "lenet-300-100", "--out", str(out), "--quiet", "--dense-epochs", "1",
                 "--prune-epochs", "1", "--max-prune-steps", "2", "--target-accuracy", "0.5", "--final-epochs", "1",
                 "--trial-epochs", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [p["phase"] for p in rep["phases"]][:2] == ["dense", "prune"]
    assert rep["final"]["params"] < 266_610


def test_data_errors_from_the_cli(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8)), y=np.zeros(4, dtype=np.int64))
    argv = ["synthesize", "lenet-300-100", "--data", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "(1, 8, 8) but the model" in capsys.readouterr().err
    assert main(["synthesize", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


OPAQUE_MODEL = '''
import torch, torch.nn as nn
INPUT_SHAPE = (1, 28, 28)
class Clip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(-1, 1)
    @staticmethod
    def backward(ctx, g):
        return g
class WithFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
    def forward(self, x):
        return Clip.apply(self.fc(x.flatten(1)))
class WithFFT(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
    def forward(self, x):
        return torch.fft.fft(self.fc(x.flatten(1))).real
def function():
    return WithFunction()
def fft():
    return WithFFT()
'''


def test_training_verbs_refuse_opaque_models_up_front(tmp_path, capsys, monkeypatch):
    import nestir.cli.run as cr

    f = tmp_path / "m.py"
    f.write_text(OPAQUE_MODEL)

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(cr, "dense_reference", no_training)
    monkeypatch.setattr(cr.Synthesizer, "run", no_training)
    monkeypatch.setattr("nestir.driver.pipeline.apply", no_training)
    cases = [("function", "Clip.apply (custom torch.autograd.Function)"), ("fft", "torch._C._fft.fft_fft")]
    for verb in ("apply", "synthesize", "prune-baseline"):
        for factory, op in cases:
            out = tmp_path / f"{verb}-{factory}"
            extra = ["--pass", "eliminate-dead-neurons"] if verb == "apply" else ["--quiet"]
            assert main([verb, f"{f}:{factory}", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith("nestir: error:") and err.count("\n") == 1, err
            assert f"{verb} cannot train" in err and "opaque node" in err and op in err and "m.py, line" in err
            assert "never executes code" in err and "Fix:" in err
            assert not out.exists()  # refused before anything was written


def test_export_lists_opaque_nodes(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(OPAQUE_MODEL)
    assert main(["export", f"{f}:function", "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "opaque (kept as a call): " in capsys.readouterr().out


UNTRACEABLE = '''
import torch.nn as nn
INPUT_SHAPE = (1, 28, 28)
class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.gate = Gate()
    def forward(self, x):
        return self.gate(self.fc(x.flatten(1)))
class Top(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
    def forward(self, x):
        y = self.fc(x.flatten(1))
        if y.sum() > 0:
            return y
        return -y
def make():
    return M()
def top():
    return Top()
'''


def test_untraceable_advice_names_only_options_that_exist(tmp_path, capsys):
    f = tmp_path / "u.py"
    f.write_text(UNTRACEABLE)
    for verb in ("inspect", "synthesize", "apply"):  # untraceable code in the top-level forward
        assert main([verb, f"{f}:top", "--out" if verb != "inspect" else "--input-shape",
                     str(tmp_path / "o") if verb != "inspect" else "1,28,28",
                     *(["--pass", "magnitude-prune"] if verb == "apply" else [])]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "if y.sum() > 0" in err
        assert "`nestir inspect` / `nestir export` with --leaf" in err and "take no --leaf" in err
    # in a submodule: that submodule becomes a leaf by itself, and the training verbs say why they refuse it
    assert main(["inspect", f"{f}:make"]) == 0
    assert "opaque: gate = Gate (not traceable, kept whole" in capsys.readouterr().out
    assert main(["apply", f"{f}:make", "--out", str(tmp_path / "o2"), "--pass", "magnitude-prune", "--quiet"]) == 2
    assert "opaque node" in capsys.readouterr().err
    # the advice works where it says it does
    assert main(["inspect", f"{f}:make", "--leaf", "Gate"]) == 0
    assert "opaque: gate = Gate" in capsys.readouterr().out


def test_disk_full_during_a_run_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import nestir.ir.serialize as ser

    out = tmp_path / "a"
    argv = ["apply", "lenet-300-100", "--pass", "eliminate-dead-neurons", "--out", str(out), "--batches", "1",
            "--quiet"]

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(ser.torch, "save", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nestir: error: cannot write") and "no space left" in err and err.count("\n") == 1
    assert not list(out.glob("*.tmp")) and not (out / "model.pt").exists()
    monkeypatch.undo()
    assert main(argv) == 0 and (out / "model.pt").exists()
    first = (out / "model.pt").read_bytes()
    assert main(argv) == 0
    assert (out / "model.pt").read_bytes() == first  # identical runs, byte-identical model.pt


def test_a_log_file_gets_a_progress_line_every_30_seconds_of_a_long_phase(capsys):
    from nestir.cli.run import RichReporter

    times = iter([0, 10, 31, 40, 62, 65, 70, 71, 72, 73])
    with RichReporter() as rep:  # stderr is captured: not a terminal, so no bar to watch
        rep.clock = lambda: next(times)
        rep.phase("dense reference", 5)
        for e in range(5):
            rep.epoch(e + 1, 5, 0.5 - 0.1 * e)
        rep.phase("prune step 3 retraining", 3)  # a short phase: its step line says enough
        for e in range(3):
            rep.epoch(e + 1, 3, 0.1)
    lines = [ln.strip() for ln in capsys.readouterr().err.splitlines() if "epoch" in ln]
    assert lines == ["dense reference: epoch 2/5, loss 0.4000, 0:31",
                     "dense reference: epoch 4/5, loss 0.2000, 1:02",
                     "dense reference: epoch 5/5, loss 0.1000, 1:05"]
