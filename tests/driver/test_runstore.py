"""The run directory's record of a dense phase: the network in training is saved at most every
PARTIAL_EVERY seconds, read back verified, refused to another run, and dropped once trained."""

import pytest
import torch

import nestir
import nestir.driver.runstore as runstore
from nestir.driver.runstore import RunStore
from nestir.ir.errors import NestirError


def graph() -> nestir.Graph:
    torch.manual_seed(0)
    return nestir.trace(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), torch.zeros(2, 4))


def state(g: nestir.Graph) -> dict:
    from nestir.ir.serialize import graph_state

    return {"stage": 1, "epoch": 2, "graph": graph_state(g), "optimizer": {"state": {}, "param_groups": []},
            "generator": torch.Generator().manual_seed(3).get_state(), "rng": torch.get_rng_state()}


def test_the_network_in_training_is_saved_at_most_every_interval(tmp_path, monkeypatch):
    rec = RunStore(str(tmp_path)).dense_progress("k")
    g, built = graph(), []

    def make() -> dict:
        built.append(1)
        return state(g)

    rec.save_partial(0, make)  # less than PARTIAL_EVERY after the record was made: nothing written
    assert rec.partial(0) is None and not built
    monkeypatch.setattr(runstore, "PARTIAL_EVERY", 0.0)
    rec.save_partial(0, make)
    back = rec.partial(0)
    assert back is not None and built == [1] and (back["stage"], back["epoch"]) == (1, 2)
    assert torch.equal(back["graph"]["_1"].params["weight"], g["_1"].params["weight"])
    assert torch.equal(back["generator"], torch.Generator().manual_seed(3).get_state())
    with pytest.raises(NestirError, match="trained for another run"):
        RunStore(str(tmp_path)).dense_progress("other").partial(0)
    rec.done(0, g)  # trained: saved whole, the state in training removed
    assert rec.partial(0) is None and (tmp_path / "dense" / "000.pt").exists()


def test_a_tampered_or_foreign_state_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runstore, "PARTIAL_EVERY", 0.0)
    rec = RunStore(str(tmp_path)).dense_progress("k")
    rec.save_partial(1, lambda: state(graph()))
    path = tmp_path / "dense" / "001.partial.pt"
    ck = torch.load(path, weights_only=True)
    ck["epoch"] = 5  # not what was checksummed
    torch.save(ck, path)
    with pytest.raises(NestirError, match="integrity check"):
        rec.partial(1)
    torch.save({"format": "something else"}, path)
    with pytest.raises(NestirError, match="not dense network 1"):
        rec.partial(1)
