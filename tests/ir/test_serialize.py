import pytest
import torch

import nestir
from nestir.driver.zoo import LeNet5
from nestir.ir.errors import ModelFileError, NestirError
from nestir.ir.serialize import load_graph, save_graph


def test_roundtrip_and_weights_only(tmp_path):
    g = nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28))
    g["conv1"].params["mask"][0] = False
    p = tmp_path / "m.pt"
    save_graph(g, str(p), {"step": 3})
    torch.load(p, weights_only=True)  # opening never runs code
    h, extra = load_graph(str(p))
    assert extra == {"step": 3}
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(h.to_torch()(x), g.to_torch()(x))


def test_truncated_and_tampered_files_are_refused(tmp_path):
    g = nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28))
    p = tmp_path / "m.pt"
    save_graph(g, str(p))
    data = p.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_graph(str(tmp_path / "t.pt"))
    state = torch.load(p, weights_only=True)
    state["nodes"][1]["params"]["weight"][0, 0, 0, 0] += 1.0
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(ModelFileError, match="integrity"):
        load_graph(str(tmp_path / "x.pt"))
    with pytest.raises(ModelFileError, match="does not exist"):
        load_graph(str(tmp_path / "missing.pt"))


def test_opaque_graph_cannot_be_saved(tmp_path):
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, -1)

    g = nestir.trace(M(), torch.zeros(2, 3))
    with pytest.raises(NestirError, match="opaque"):
        save_graph(g, str(tmp_path / "m.pt"))
    assert not (tmp_path / "m.pt").exists()


def test_equal_graphs_give_byte_identical_files(tmp_path):
    """The zip's inner folder is not named after the random temporary file."""
    import zipfile

    g = nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28))
    for name in ("a.pt", "b.pt", "model.pt"):
        save_graph(g, str(tmp_path / name), {"step": 1})
    data = (tmp_path / "a.pt").read_bytes()
    assert data == (tmp_path / "b.pt").read_bytes() == (tmp_path / "model.pt").read_bytes()
    assert all(n.startswith("archive/") for n in zipfile.ZipFile(tmp_path / "a.pt").namelist())


def test_saved_files_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    g = nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28))
    save_graph(g, str(tmp_path / "a.pt"), {})
    (tmp_path / "b").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.pt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b").st_mode)  # not mkstemp's 0600


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed"),
])
def test_disk_full_is_a_clear_error_and_damages_nothing(tmp_path, monkeypatch, failure):
    import nestir.ir.serialize as ser
    from nestir.ir.errors import OutputError

    g = nestir.trace(LeNet5(), torch.zeros(1, 1, 28, 28))
    p = tmp_path / "model.pt"
    save_graph(g, str(p))
    before = p.read_bytes()
    real = torch.save

    def full(obj, f, *a, **k):  # writes half a file, then the device is full
        real(obj, f, *a, **k)
        f.seek(0)
        f.truncate(100)
        raise failure

    monkeypatch.setattr(ser.torch, "save", full)
    g["conv1"].params["weight"].add_(1.0)
    with pytest.raises(OutputError, match="no space left"):
        save_graph(g, str(p))
    assert p.read_bytes() == before  # the old file is untouched
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.pt"]  # and no temporary file is left
    load_graph(str(p))


def test_other_writer_failures_propagate(tmp_path, monkeypatch):
    import nestir.ir.serialize as ser

    def broken(obj, f, *a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(ser.torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        ser.atomic_save({"a": 1}, str(tmp_path / "x.pt"))
    assert list(tmp_path.iterdir()) == []


def test_bytes_do_not_depend_on_which_equal_strings_are_one_object(tmp_path):
    """pickle writes a repeated object as a back-reference: equal content must still give equal bytes."""
    from nestir.ir.serialize import atomic_save

    name = "".join(["mlp.py", ":make"])  # a fresh string object equal to the literal
    atomic_save({"name": name, "extra": {"model": name}, "w": torch.ones(2)}, str(tmp_path / "a.pt"))
    atomic_save({"name": "mlp.py:make", "extra": {"model": "".join(["mlp.py:", "make"])}, "w": torch.ones(2)},
                str(tmp_path / "b.pt"))
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_nestir_load_opens_a_saved_model_and_inspect_reads_it(tmp_path, capsys):
    from nestir.cli import main

    torch.manual_seed(0)
    g = nestir.trace(LeNet5(), torch.rand(2, 1, 28, 28))
    path = tmp_path / "model.pt"
    save_graph(g, str(path))
    h = nestir.load(str(path))
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(h.to_torch()(x), g.to_torch()(x), atol=1e-6)
    assert main(["inspect", str(path)]) == 0
    assert "IR nodes" in capsys.readouterr().out
    with pytest.raises(ModelFileError, match="does not exist"):
        nestir.load(str(tmp_path / "missing.pt"))
