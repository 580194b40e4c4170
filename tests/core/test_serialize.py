import pytest
import torch

import nestir
from nestir.errors import ModelFileError, NestirError
from nestir.serialize import load_graph, save_graph
from nestir.zoo import LeNet5


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
            return torch.softmax(x, -1)

    g = nestir.trace(M(), torch.zeros(2, 3))
    with pytest.raises(NestirError, match="opaque"):
        save_graph(g, str(tmp_path / "m.pt"))
    assert not (tmp_path / "m.pt").exists()
