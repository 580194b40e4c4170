"""torchrun with 2 gloo processes on the CPU: statistics summed over the ranks equal one process's
on the union of their shards, a pass pipeline makes the same edits on both ranks and under one
process, and a synthesis ends with the same graph on both ranks."""

import json
import os
import subprocess
import sys

import pytest
import torch

import nestir
from nestir.backends.gradstats import collect
from nestir.ir.serialize import digest_tree, graph_state

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import dist_worker as W  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
WORKER = os.path.join(os.path.dirname(__file__), "..", "dist_worker.py")


def torchrun(verb: str, out) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, verb,
           str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def same_graph(a: dict, b: dict, exact: bool) -> None:
    assert [n["name"] for n in a["nodes"]] == [n["name"] for n in b["nodes"]]
    for na, nb in zip(a["nodes"], b["nodes"], strict=True):
        assert na["params"].keys() == nb["params"].keys(), na["name"]
        for k, t in na["params"].items():
            u = nb["params"][k]
            assert t.shape == u.shape, (na["name"], k)
            if t.dtype == torch.bool or exact:
                assert torch.equal(t, u), (na["name"], k)
            else:
                torch.testing.assert_close(t, u, rtol=1e-4, atol=1e-5, msg=f"{na['name']}.{k}")


def test_two_ranks_sum_statistics_and_edit_alike(tmp_path):
    torchrun("apply", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # one process on the union of the two shards
    g = W.graph()
    data = W.batches()
    one = collect(g, data, bridges=W.BRIDGES)
    for r in (r0, r1):
        assert r["batches"] == one.batches == len(data)
        assert r["loss"] == pytest.approx(one.loss, rel=1e-5)
        for k, t in one.weight_grad.items():
            torch.testing.assert_close(r["weight_grad"][k], t, rtol=1e-4, atol=1e-6)
        for k, t in one.bridge.items():
            torch.testing.assert_close(r["bridge"][k], t, rtol=1e-4, atol=1e-6)
    # both ranks end with the identical graph, and it is the one-process graph
    assert digest_tree(r0["graph"]) == digest_tree(r1["graph"])
    single = nestir.apply(g, W.PIPELINE, data=data, device="cpu", seed=3)
    same_graph(r0["graph"], graph_state(single), exact=False)
    before = nestir.stats(g)
    assert nestir.stats(single)["params"] != before["params"]  # the pipeline did edit


def test_two_rank_synthesis_ends_with_identical_graphs(tmp_path):
    torchrun("synthesize", tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["final"]["params"] == r0["params"] <= report["baseline"]["params"]
    assert (tmp_path / "run" / "model.onnx").exists()


def test_every_sample_counts_once_however_the_loaders_are_sharded(tmp_path):
    torchrun("shards", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(397, 1, 8, 8, generator=gen), torch.randint(0, 10, (397,), generator=gen)
    for kind in r0:
        assert torch.equal(r0[kind][0], r1[kind][0]) and torch.equal(r0[kind][1], r1[kind][1]), kind  # ranks agree
        got_x, got_y = r0[kind]
        assert got_x.shape[0] == 397, kind  # not doubled, no padding sample
        if kind in ("plain", "sampler"):  # an unshuffled source comes back in its own order
            assert torch.equal(got_x, x) and torch.equal(got_y, y), kind
        else:  # the same samples
            key = lambda t: sorted(map(tuple, t.flatten(1).tolist()))  # noqa: E731
            assert key(got_x) == key(x), kind
