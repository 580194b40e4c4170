"""Small models shared by tests in several folders."""

import torch
import torch.nn as nn


class GroupedBlock(torch.nn.Module):
    """A ResNeXt bottleneck: 1x1 conv, grouped 3x3 conv (``groups`` groups), 1x1 conv, residual."""

    def __init__(self, width: int = 16, groups: int = 4, out: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(8, width, 1), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, out, 3, padding=1, groups=groups), nn.BatchNorm2d(out)
        self.c3, self.fc = nn.Conv2d(out, 8, 1), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc((x + self.c3(h)).mean((2, 3)))
