"""Small models shared by tests in several folders."""

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class TimmStyleAttention(nn.Module):
    """timm's ``Attention``: one qkv linear, reshape into heads, fused attention, merge, project."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, c // heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TinyViT(nn.Module):
    """A ViT in miniature: patch conv, flatten + transpose to tokens, a class token expanded to
    the batch, a position embedding, a ``nn.MultiheadAttention`` block, a timm-style attention
    block, an MLP block, the class token's output to the head."""

    def __init__(self, c: int = 8, heads: int = 2, tokens: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, c))
        self.ln0, self.mha = nn.LayerNorm(c), nn.MultiheadAttention(c, heads, batch_first=True)
        self.ln1, self.attn = nn.LayerNorm(c), TimmStyleAttention(c, heads)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        h = self.ln0(x)
        x = x + self.mha(h, h, h, need_weights=False)[0]
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))
        return self.head(x[:, 0])


class ChannelSplitBlock(torch.nn.Module):
    """CSPNet / DPN / ReXNet / GhostNet idioms: ``split`` of a conv's channels into a shortcut
    and a branch, a prefix slice added to and re-joined with the rest, ``chunk`` halves swapped,
    an overlapping tail slice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.c2, self.c3, self.c4 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(12, 10, 1), nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8 + 4, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        a, b = x.split((6, 6), dim=1)
        y = self.c3(torch.cat([a, self.c2(b)], 1))
        y = torch.cat([y[:, :8] + 1.0, y[:, 8:]], 1)
        p, q = y.chunk(2, dim=1)
        z = self.c4(torch.cat([q, p], 1))
        return self.fc(torch.cat([z, y[:, 6:]], 1).mean((2, 3)))


class MixedGateBlock(torch.nn.Module):
    """MixNet / GhostNet idioms: a cat of pieces made by different convs (mixed kernels, a ghost
    module's cheap half), times a squeeze-and-excitation gate made by one conv over all of them,
    plus a shortcut made by one conv; a channel slice across two of the pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 3, 5, padding=2)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.short = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8 + 4, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = y * torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        y = torch.relu(y + self.short(x))
        return self.fc(torch.cat([y, y[:, 2:6]], 1).mean((2, 3)))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleBlock(torch.nn.Module):
    """ShuffleNetV2 in small: a stride-2 unit (two branches joined, shuffled), then a stride-1
    unit (half passes through, half through a branch, joined and shuffled), then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(6, 6, 3, 2, 1, groups=6), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1),
                                nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1, groups=4),
                                nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1, groups=4),
                                nn.Conv2d(4, 4, 1), nn.ReLU())
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = channel_shuffle(torch.cat([self.b1(x), self.b2(x)], 1), 2)
        x1, x2 = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([x1, self.c2(x2)], 1), 2)
        return self.head(x).mean((2, 3))


class GlobalResponseNorm(torch.nn.Module):
    """timm's GlobalResponseNorm as written there (ConvNeXt-V2), with non-zero weight and bias."""

    def __init__(self, dim: int, eps: float = 1e-6, channels_last: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.spatial_dim, self.channel_dim = ((1, 2), -1) if channels_last else ((2, 3), 1)
        self.wb_shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)
        self.weight = nn.Parameter(torch.randn(dim))
        self.bias = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        x_g = x.norm(p=2, dim=self.spatial_dim, keepdim=True)
        x_n = x_g / (x_g.mean(dim=self.channel_dim, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(self.wb_shape), self.weight.view(self.wb_shape), x * x_n)


class GRNBlock(torch.nn.Module):
    """A ConvNeXt-V2 MLP: 1x1 conv, GELU, GRN, 1x1 conv (channels first), and the same with
    linears on channels-last tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 12, 1), nn.Conv2d(12, 6, 1)
        self.g1 = GlobalResponseNorm(12, channels_last=False)
        self.l1, self.g2, self.l2 = nn.Linear(6, 10), GlobalResponseNorm(10), nn.Linear(10, 6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.c2(self.g1(torch.nn.functional.gelu(self.c1(x))))
        y = x.permute(0, 2, 3, 1)
        y = self.l2(self.g2(torch.nn.functional.gelu(self.l1(y))))
        return self.fc(y.mean((1, 2)))


class SelectiveKernelBlock(torch.nn.Module):
    """SKNet's selective kernel (timm's SelectiveKernel, in small): two conv paths stacked, an
    attention over the paths (sum, pool, reduce, select, view into paths, softmax over them),
    the paths weighted and summed."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.p1 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU())
        self.p2 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=2, dilation=2, groups=2), nn.BatchNorm2d(8), nn.ReLU())
        self.reduce, self.select = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 16, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.stack([self.p1(x), self.p2(x)], dim=1)
        a = x.sum(1).mean((2, 3), keepdim=True)
        a = self.select(torch.relu(self.reduce(a)))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, 2, c // 2, h, w), dim=1)
        x = torch.sum(x * a, dim=1)
        return self.fc(x.mean((2, 3)))


class RadixSoftmax(torch.nn.Module):
    """timm's RadixSoftmax as written there."""

    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x):
        batch = x.size(0)
        x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
        return torch.nn.functional.softmax(x, dim=1).reshape(batch, -1)


class SplitAttnBlock(torch.nn.Module):
    """ResNeSt's split attention (timm's SplitAttn, radix 2, one cardinal group): a grouped conv
    makes the radix pieces, a view stacks them, the attention is a radix softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv, self.bn0 = nn.Conv2d(8, 12, 3, padding=1, groups=2), nn.BatchNorm2d(12)
        self.fc1, self.fc2 = nn.Conv2d(6, 4, 1), nn.Conv2d(4, 12, 1)
        self.rsoftmax = RadixSoftmax(2, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape((b, 2, rc // 2, h, w))
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.rsoftmax(self.fc2(torch.relu(self.fc1(gap)))).view(b, -1, 1, 1)
        out = (x * attn.reshape((b, 2, rc // 2, 1, 1))).sum(dim=1)
        return self.fc(out.mean((2, 3)))


class HeadsAttention(nn.Module):
    """Attention written out op by op, in the spellings real models use (no attribute nestir
    recognises as an attention module): a fused qkv reshaped into (3, heads) or separate q and kv,
    a per-head q/k LayerNorm, a rotary embedding, ``F.scaled_dot_product_attention``, ``q @ k^T``
    with softmax or the same with ``einsum``, a relative position bias (one constant per head), LeViT's per-head q|k|v
    layout (``view(B, N, H, -1).split(...)``); merged back and projected."""

    def __init__(self, dim: int = 16, h: int = 4, tokens: int = 5, *, fused: bool = True, manual: bool = False,
                 rope: bool = False, qknorm: bool = False, bias: bool = False, levit: bool = False,
                 einsum: bool = False) -> None:
        super().__init__()
        self.h, self.fused, self.manual, self.rope, self.levit, self.einsum = h, fused, manual, rope, levit, einsum
        d = dim // h
        if levit:
            self.qkv = nn.Linear(dim, h * (2 * d + d // 2))
        elif fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.qn = nn.LayerNorm(d) if qknorm else nn.Identity()
        self.kn = nn.LayerNorm(d) if qknorm else nn.Identity()
        self.rel = nn.Parameter(torch.randn(h, tokens, tokens)) if bias else None
        self.proj = nn.Linear(h * (d // 2) if levit else dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        d = c // self.h
        if self.levit:
            q, k, v = self.qkv(x).view(b, n, self.h, -1).split([d, d, d // 2], dim=3)
            q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        elif self.fused:
            q, k, v = self.qkv(x).reshape(b, n, 3, self.h, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q(x).reshape(b, n, self.h, -1).transpose(1, 2)
            kv = self.kv(x).reshape(b, -1, 2, self.h, d).permute(2, 0, 3, 1, 4)
            k, v = kv[0], kv[1]
        q, k = self.qn(q), self.kn(k)
        if self.rope:
            t = torch.arange(n, dtype=x.dtype)[:, None] * torch.arange(d // 2, dtype=x.dtype)[None] * 0.1
            cos, sin = t.cos().repeat(1, 2), t.sin().repeat(1, 2)

            def rot(u):
                a, b_ = u.chunk(2, -1)
                return torch.cat([-b_, a], -1)

            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        if self.einsum:  # MaxViT's spelling
            a = torch.einsum("B H I D, B H J D -> B H I J", q * d ** -0.5, k)
            o = torch.einsum("B H I J, B H J D -> B H I D", a.softmax(-1), v)
        elif self.manual or self.rel is not None:
            a = (q * d ** -0.5) @ k.transpose(-2, -1)
            if self.rel is not None:
                a = a + self.rel.unsqueeze(0)
            o = a.softmax(-1) @ v
        else:
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, -1))


class HeadsNet(nn.Module):
    """Tokens in, a :class:`HeadsAttention` block and an MLP block, mean-pooled to a head."""

    def __init__(self, **kw) -> None:
        super().__init__()
        self.emb, self.attn = nn.Linear(6, 16), HeadsAttention(**kw)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        x = self.emb(x)
        x = x + self.attn(x)
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class SwinLike(nn.Module):
    """timm's Swin in miniature: channels-last tokens (B, H, W, C), a zero ``F.pad``, a cyclic
    shift (``torch.roll``), windows folded into the batch dim (``view(-1, ...)``), window attention
    written out with a relative position bias and a shift mask, the windows unfolded and rolled
    back, an MLP, patch merging (``reshape``, ``permute``, ``flatten(3)``) and its LayerNorm."""

    def __init__(self, c: int = 8, heads: int = 2, ws: int = 2, hw: int = 4) -> None:
        super().__init__()
        self.c, self.heads, self.ws = c, heads, ws
        self.emb, self.norm1 = nn.Linear(3, c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.rel = nn.Parameter(torch.randn(heads, ws * ws, ws * ws))
        n_w = (hw // ws) ** 2
        self.register_buffer("mask", torch.where(torch.rand(n_w, ws * ws, ws * ws) < 0.3, -100.0, 0.0))
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.merge_norm, self.reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)
        self.head = nn.Linear(2 * c, 3)

    def forward(self, x):
        x = self.emb(x)
        b, hh, ww, c = x.shape
        ws, nh = self.ws, self.heads
        h = torch.roll(F.pad(self.norm1(x), (0, 0, 0, 0, 0, 0)), shifts=(-1, -1), dims=(1, 2))
        w = h.view(b, hh // ws, ws, ww // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        bw, n, _ = w.shape
        q, k, v = self.qkv(w).reshape(bw, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4).unbind(0)
        a = (q * (c // nh) ** -0.5) @ k.transpose(-2, -1) + self.rel.unsqueeze(0)
        n_w = self.mask.shape[0]
        a = (a.view(-1, n_w, nh, n, n) + self.mask.unsqueeze(1).unsqueeze(0)).view(-1, nh, n, n)
        o = self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))
        o = o.view(-1, hh // ws, ww // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
        x = x + torch.roll(o, shifts=(1, 1), dims=(1, 2))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        x = x.reshape(b, hh // 2, 2, ww // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.head(self.reduction(self.merge_norm(x)).mean((1, 2)))
