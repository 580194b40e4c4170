"""Run under ``torchrun --nproc_per_node N`` by tests/driver/test_distributed.py (gloo, CPU).

``python tests/dist_worker.py apply OUT``: this rank's shard of the batches from
:func:`batches`; writes the gradient statistics and the graph after :data:`PIPELINE`.
``python tests/dist_worker.py synthesize OUT``: nestir.synthesize with this rank's loaders."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import nestir
from nestir.backends import dist
from nestir.backends.gradstats import collect
from nestir.ir.serialize import digest_tree, graph_state

PIPELINE = ["grow-connection:fraction=0.2", "bridge-neuron:count=2", "add-feature-map:count=1",
            "split-neuron:count=1", "partial-area-mask:fraction=0.2",
            "magnitude-prune:fraction=0.3,neuron_fraction=0.2"]
BRIDGES = [("fc2", "fc1")]
SYNTH = {"dense_epochs": 2, "final_epochs": 1, "trial_epochs": 1, "initial_epochs": 1, "epochs": 1,
         "shift_epochs": 1, "prune_epochs": 1, "max_growth_steps": 1, "max_prune_steps": 3}


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def graph() -> nestir.Graph:
    torch.manual_seed(0)
    g = nestir.trace(CNN().eval(), torch.zeros(2, 1, 8, 8))
    for n in g.parametric():  # half the connections dormant, so that growth has something to add
        gen = torch.Generator().manual_seed(len(n.name))
        n.params["mask"] = torch.rand(n.params["mask"].shape, generator=gen) < 0.5
        n.params["weight"] = n.params["weight"] * n.params["mask"]
    return g


def batches(n: int = 8, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(size, 1, 8, 8, generator=gen), torch.randint(0, 10, (size,), generator=gen))
            for _ in range(n)]


def shard(items: list) -> list:
    part = dist.shard(len(items))
    return items[part]


def main() -> None:
    verb, out = sys.argv[1], sys.argv[2]
    assert dist.init_from_env("cpu") and dist.world() == 2
    r = dist.rank()
    if verb == "shards":  # the data sets nestir.driver.shards.union makes of differently sharded loaders
        from torch.utils.data import DistributedSampler

        from nestir.driver.api import collect_loader

        gen = torch.Generator().manual_seed(5)
        x, y = torch.rand(397, 1, 8, 8, generator=gen), torch.randint(0, 10, (397,), generator=gen)
        ds, g = TensorDataset(x, y), graph()
        made = {
            "plain": DataLoader(ds, batch_size=64),
            "plain_shuffled": DataLoader(ds, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(r)),
            "sampler": DataLoader(ds, batch_size=64, sampler=DistributedSampler(ds, shuffle=False)),
            "sampler_shuffled": DataLoader(ds, batch_size=64, sampler=DistributedSampler(ds, shuffle=True)),
        }
        torch.save({k: (d.x, d.y) for k, d in ((k, collect_loader(v, k, g, None)) for k, v in made.items())},
                   os.path.join(out, f"rank{r}.pt"))
    elif verb == "apply":
        g = graph()
        mine = shard(batches())
        st = collect(g, mine, bridges=BRIDGES)
        after = nestir.apply(g, PIPELINE, data=mine, device="cpu", seed=3)
        torch.save({"loss": st.loss, "batches": st.batches, "weight_grad": st.weight_grad, "bridge": st.bridge,
                    "graph": graph_state(after)}, os.path.join(out, f"rank{r}.pt"))
    else:
        gen = torch.Generator().manual_seed(2)
        x = torch.rand(600, 1, 8, 8, generator=gen)
        y = (x.mean((1, 2, 3)) * 20).long().clamp(0, 9)  # a learnable rule
        tr, va = dist.shard(400), slice(400 + dist.shard(200).start, 400 + dist.shard(200).stop)
        res = nestir.synthesize(CNN(), torch.zeros(1, 1, 8, 8),
                                train=DataLoader(TensorDataset(x[tr], y[tr]), batch_size=32),
                                val=DataLoader(TensorDataset(x[va], y[va]), batch_size=50),
                                loss=nn.CrossEntropyLoss(label_smoothing=0.1),
                                out=os.path.join(out, "run"), device="cpu", seed=0, **SYNTH)
        with open(os.path.join(out, f"rank{r}.json"), "w") as f:
            json.dump({"digest": digest_tree(graph_state(res.graph)), "params": res.report["final"]["params"],
                       "phases": len(res.report["phases"]), "val_error": res.report["final"]["val_error"]}, f)
    dist.shutdown()


if __name__ == "__main__":
    main()
