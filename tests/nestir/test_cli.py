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
