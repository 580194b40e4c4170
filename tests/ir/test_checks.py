"""The Python API refuses bad arguments with a NestirError subclass naming the problem, before any
work: data that does not fit the graph, pipelines and graphs of the wrong kind, bad devices and
option values, paths that cannot be written."""

import math

import pytest
import torch

import nestir
from nestir import passes
from nestir.driver.zoo import LeNet5
from nestir.ir.errors import ArgumentError, DataError, LoweringError, OutputError, PassError

G = ["grow-connection:fraction=0.1"]
P = ["magnitude-prune:fraction=0.1,neuron_fraction=0.1"]


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    g = nestir.trace(LeNet5(), torch.rand(1, 1, 28, 28))
    g["fc1"].params["mask"][:, ::2] = False  # something to grow: grow-connection reads the data
    return g


X = torch.rand(8, 1, 28, 28)
Y = torch.arange(8) % 10

CASES = [
    ("batch sizes differ", lambda g: nestir.apply(g, G, data=(X, Y[:4])), DataError, "8 inputs but 4 targets"),
    ("label out of range", lambda g: nestir.apply(g, G, data=(X, Y + 10)), DataError, "out of range"),
    ("negative label", lambda g: nestir.apply(g, P, data=(X, Y - 3)), DataError, "negative label"),
    ("float labels", lambda g: nestir.apply(g, G, data=(X, Y.float())), DataError, "1-D integer"),
    ("2-D labels", lambda g: nestir.apply(g, G, data=(X, Y[:, None])), DataError, "1-D integer"),
    ("wrong image shape", lambda g: nestir.apply(g, G, data=(torch.rand(8, 1, 20, 20), Y)), DataError,
     "(1, 20, 20) per sample"),
    ("integer images", lambda g: nestir.apply(g, G, data=((X * 255).long(), Y)), DataError, "floating point"),
    ("float64 images", lambda g: nestir.apply(g, G, data=(X.double(), Y)), DataError, "torch.float64"),
    ("NaN images", lambda g: nestir.apply(g, G, data=(torch.full_like(X, math.nan), Y)), DataError, "NaN"),
    ("empty batch", lambda g: nestir.apply(g, G, data=(X[:0], Y[:0])), DataError, "empty"),
    ("no batches", lambda g: nestir.apply(g, G, data=[]), DataError, "no batches"),
    ("data is a tensor", lambda g: nestir.apply(g, G, data=X), PassError, "pair of tensors"),
    ("pipeline=42", lambda g: nestir.apply(g, 42), PassError, "pipeline must be"),
    ("pipeline item 42", lambda g: nestir.apply(g, [42]), PassError, "pipeline item"),
    ("a module as the graph", lambda g: nestir.apply(LeNet5(), G, data=(X, Y)), ArgumentError, "nestir.trace"),
    ("device tpu", lambda g: nestir.apply(g, G, data=(X, Y), device="tpu"), ArgumentError, "tpu"),
    ("seed not an int", lambda g: nestir.apply(g, G, data=(X, Y), seed="a"), ArgumentError, "seed"),
    ("loss not callable", lambda g: nestir.apply(g, G, data=(X, Y), loss=3), ArgumentError, "loss"),
    ("NaN fraction", lambda g: nestir.apply(g, ["grow-connection:fraction=nan"], data=(X, Y)), PassError, "finite"),
    ("NaN fraction object", lambda g: passes.get("grow-connection", fraction=math.nan), PassError, "finite"),
    ("count=2.5", lambda g: passes.get("split-neuron", count=2.5), PassError, "integer"),
    ("count=True", lambda g: passes.get("split-neuron", count=True), PassError, "bool"),
    ("spec not a string", lambda g: passes.parse(42), PassError, "string"),
    ("pass called on a module", lambda g: passes.get("eliminate-dead-neurons")(LeNet5()), ArgumentError, "Graph"),
    ("pass with bad data", lambda g: passes.get("grow-connection")(g, passes.PassContext(data=[(X, Y + 10)])),
     DataError, "out of range"),
    ("verify a module", lambda g: nestir.verify(LeNet5()), ArgumentError, "nestir.trace"),
    ("opaque_nodes of a module", lambda g: nestir.opaque_nodes(LeNet5()), ArgumentError, "Graph"),
    ("stats of an int", lambda g: nestir.stats(42), ArgumentError, "stats"),
    ("to_onnx path not a path", lambda g: g.to_onnx(42), ArgumentError, "file path"),
    ("to_onnx into a directory", lambda g: g.to_onnx("."), ArgumentError, "is a directory"),
    ("to_onnx old opset", lambda g: g.to_onnx("never.onnx", opset=3), LoweringError, "opset 3"),
]


@pytest.mark.parametrize("what,call,error,words", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_raise_a_nestir_error_naming_the_problem(graph, what, call, error, words):
    before = {n.name: {k: t.clone() for k, t in n.params.items()} for n in graph}
    with pytest.raises(error) as e:
        call(graph)
    assert words in str(e.value), str(e.value)
    for n in graph:  # the caller's graph is untouched
        for k, t in n.params.items():
            assert torch.equal(t, before[n.name][k])


def test_unwritable_onnx_paths(graph, tmp_path, monkeypatch):
    import errno

    import nestir.ir.serialize as ser

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="does not exist"):
        graph.to_onnx(str(tmp_path / "file" / "m.onnx"))

    def denied(*a, **k):  # a read-only directory (tests may run as root, who can write anywhere)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ser.tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match="not writable"):
        graph.to_onnx(str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_good_arguments_still_work(graph):
    g2 = nestir.apply(graph, G + P, data=[(X, Y), (X[:3], Y[:3])])
    assert nestir.stats(g2)["params"] != nestir.stats(graph)["params"]
    g3 = nestir.apply(graph, G, data=(X, torch.rand(8, 10)), loss=lambda out, t: ((out - t) ** 2).mean())
    assert isinstance(g3, nestir.Graph)
