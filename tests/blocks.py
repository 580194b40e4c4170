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


class ChannelsLastBlock(torch.nn.Module):
    """ConvNeXt- and PoolFormer-style blocks: a depthwise conv, a permute to channels-last, a
    LayerNorm over the last axis, an MLP, a layer scale and a permute back; then a GroupNorm(1, C)
    token mixer with a layer scale read through ``view`` (a folded constant), a GroupNorm with a
    group per channel and a channel shift."""

    def __init__(self, c: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.ln = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.gn = nn.GroupNorm(1, c)
        self.mix = nn.Conv2d(c, c, 1)
        self.ls = nn.Parameter(torch.rand(c) + 0.5)
        self.inorm = nn.GroupNorm(c, c)
        self.shift = nn.Parameter(torch.randn(c, 1, 1))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(h))))
        x = x + (self.gamma * h).permute(0, 3, 1, 2)
        x = x + self.ls.view(1, -1, 1, 1) * self.mix(self.gn(x))
        x = self.inorm(x) + self.shift
        return self.head(x.mean((2, 3)))
