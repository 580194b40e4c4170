"""Built-in models: the paper's LeNets, their sparse seeds, and small residual/depthwise CNNs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet300100(nn.Module):
    """784-300-100-10 MLP (266K parameters) on (N, 1, 28, 28) images."""

    def __init__(self, hidden: tuple[int, int] = (300, 100), act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden[0])
        self.act1 = act()
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.act2 = act()
        self.fc3 = nn.Linear(hidden[1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet-5 (431K parameters): conv 20, pool, conv 50, pool, fc 500, fc 10."""

    def __init__(self, c1: int = 20, c2: int = 50, fc: int = 500, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.act1 = act()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.act2 = act()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 16, fc)
        self.act3 = act()
        self.fc2 = nn.Linear(fc, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc2(self.act3(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class ResNet(nn.Module):
    """A ResNet of basic blocks; ``widths``/``blocks`` per stage, downsampling shortcuts."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: tuple[int, ...] = (1, 1, 1),
                 in_ch: int = 3, classes: int = 10, imagenet_stem: bool = False) -> None:
        super().__init__()
        w0 = widths[0]
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(in_ch, w0, 7, 2, 3, bias=False), nn.BatchNorm2d(w0), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_ch, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU())
        layers, cin = [], w0
        for i, (w, b) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(b):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class MobileNetTiny(nn.Module):
    """Depthwise-separable CNN in the MobileNet style (dw 3x3 + BN + ReLU6, pw 1x1 + BN + ReLU6)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64), classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU6()]
        for cin, cout, s in zip(widths[:-1], widths[1:], (2, 2, 1), strict=False):
            layers += [nn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                       nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@dataclass(frozen=True)
class ZooEntry:
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str
    seed_density: float = 1.0  # seeds start sparse
    # synthesis defaults for this model (SynthConfig fields); options given on the command line win
    defaults: tuple[tuple[str, Any], ...] = ()


# The LeNets' teachers (the dense networks after the reference) train on distorted digits: measured on full MNIST
# (LeNet-300-100, seeds 0-2, and LeNet-5, seed 0; validation and audit only; benchmarks/README.md "Teachers trained
# on distorted digits") their ensemble was 0.3-0.7 points more accurate on validation, and the chain's networks
# 0.1-0.4 points closer to the dense reference at the same size. The reference, the report's baseline and every
# student see the digits as they are. With that headroom the LeNets ask for equal accuracy, not for "within 0.25
# points": LeNet-300-100 keeps a network only when its error plus one standard error is at most the reference's
# (tolerance 0: the three seeds kept 74-101x at audit -0.30 to +0.18, where 0.25 kept 87-128x at -0.26 to +0.56);
# LeNet-5 within 0.15 points at one standard error (at 0.1 points held-out seed 29 kept 38x at validation +0.01, where
# its 78x network was measured +0.07, bound +0.14; benchmarks/README.md "LeNet-5 at 0.1 and 0.15 points"). LeNet-5's
# chain starts from the dense reference even when growth passes: on held-out seed 30, same teachers and rule, the
# chain from the grown network kept 52.9x / 27.9x FLOPs and the one from dense 107.1x / 34.6x (test 0.69% and
# 0.72%, dense 0.72%); seed 25's chain from a grown network kept 64.1x ("Where the chain starts" has older runs).
# LeNet-5 keeps at most 120x fewer parameters: on validation its chains fall off past 120x (judged steps of eight
# full-MNIST runs: median +0.07 to +0.09 points at 80-120x, +0.19 at 120-140x, +0.24 at 140-170x; 3 of the 20 past
# 120x passed, most likely by luck), and a network kept there is one a fresh test set often puts past the
# tolerance (benchmarks/README.md "LeNet-5 keeps at most 120x")
ZOO: dict[str, ZooEntry] = {
    "lenet-300-100": ZooEntry(LeNet300100, (1, 28, 28), "MLP 784-300-100-10 (266K params)",
                              defaults=(("teacher_augment", True), ("tolerance", 0.0))),
    # LeNet-5's teachers skip the final training (measured on full MNIST, benchmarks/README.md "Teachers without
    # the final training": the 40-epoch teachers' ensemble was as accurate on validation and its students as close
    # to dense, and a run takes about 10 minutes less on 2 cores); LeNet-300-100's were 0.0-0.13 points worse
    "lenet-5": ZooEntry(LeNet5, (1, 28, 28), "Caffe LeNet-5, conv 20/50, fc 500 (431K params)",
                        defaults=(("teacher_final_epochs", 0), ("teacher_augment", True), ("tolerance", 0.0015),
                                  ("chain_from_dense", True), ("max_compression", 120.0))),
    "lenet-300-100-seed": ZooEntry(lambda: LeNet300100((30, 20), nn.LeakyReLU), (1, 28, 28),
                                   "NeST seed: MLP 784-30-20-10, leaky ReLU, sparse", 0.5),
    "lenet-5-seed": ZooEntry(lambda: LeNet5(4, 8, 20, nn.LeakyReLU), (1, 28, 28),
                             "NeST seed: LeNet-5 with conv 4/8, fc 20, leaky ReLU, sparse", 0.5),
    "resnet-cifar": ZooEntry(ResNet, (3, 32, 32), "ResNet-8 for 32x32 images: widths 16/32/64"),
    "resnet-18": ZooEntry(lambda: ResNet((64, 128, 256, 512), (2, 2, 2, 2), 3, 1000, True), (3, 224, 224),
                          "ResNet-18 for 224x224 images (11.7M params)"),
    "mobilenet-tiny": ZooEntry(MobileNetTiny, (3, 32, 32), "depthwise-separable CNN for 32x32 images"),
}
