"""Modules that the lowering emits where torch has no equivalent layer."""

from __future__ import annotations

import torch
import torch.nn as nn

from nestir.ir.ops import partial_area_conv


class PartialAreaConv(nn.Module):
    """A conv whose input channel m reaches output channel n only at the positions where
    ``area[m, n]`` is set (NeST Algorithm 2): F_n = sum_m conv(x_m, K[n, m]) * area[m, n]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, area: torch.Tensor,
                 stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = None if bias is None else nn.Parameter(bias.clone())
        self.register_buffer("area", area.to(weight.dtype).clone())
        self.attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return partial_area_conv(x, self.weight, self.bias, self.area, self.attrs)


class CSRLinear(nn.Module):
    """A linear layer whose weight is stored in compressed sparse rows (2-D input only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.weight @ x.reshape(-1, self.in_features).T).T
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias
