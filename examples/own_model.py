"""Apply nestir passes to your own model: a small residual CNN written here.

    python examples/own_model.py
"""

import torch.nn as nn
import torch.nn.functional as F

import nestir
from nestir.backends.train import Trainer, evaluate
from nestir.driver.data import load, split


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.b1 = Block(16, 32, 2)
        self.b2 = Block(32, 32, 2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.b2(self.b1(F.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


train, val = split(load("mnist5k"), 0.1, seed=0)
g = nestir.trace(SmallResNet(), train.x[:2])
print(g.summary())
info = g.groups()  # the residual adds couple b1.conv2, b1.down and b2.conv2 into one group
print({grp.id: grp.producers for grp in info.resizable()})

trainer = Trainer(g, lr=2e-3)
for _ in range(2):
    trainer.epoch(train.x, train.y, 64)
print("dense:", nestir.stats(g)["params"], "params, val error", evaluate(g, val.x, val.y).error)

batches = [(train.x[i:i + 128], train.y[i:i + 128]) for i in range(0, 512, 128)]
g = nestir.apply(g, ["magnitude-prune:fraction=0.5,neuron_fraction=0.3", "eliminate-dead-neurons"], batches)
trainer = Trainer(g, lr=1e-3)
for _ in range(2):
    trainer.epoch(train.x, train.y, 64)
print("pruned:", nestir.stats(g)["params"], "params, val error", evaluate(g, val.x, val.y).error)

g = nestir.apply(g, ["add-feature-map:count=2,candidates=8", "grow-connection:fraction=0.1"], batches)
print("grown:", nestir.stats(g)["params"], "params")
module = g.to_torch()  # a compact torch.fx.GraphModule of standard layers
g.to_onnx("runs/own_model.onnx")
print("wrote runs/own_model.onnx")
