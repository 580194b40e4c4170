"""The data under ``torch.distributed``: each rank reads its loader, and every rank must end up
with the same data set in which every sample counts once, however the loaders were made.

- Loaders that are not sharded (every rank reads all the data, in any order): every rank takes
  rank 0's copy; nothing is doubled.
- Shards of a ``DistributedSampler`` (equal lengths, samples dealt out in turn): dealt back into
  the sampler's order, and the samples it repeated to make the shards equal are dropped, so that
  an unshuffled sampler gives back the data set in its own order.
- Other shards (unequal lengths): joined in rank order."""

from __future__ import annotations

import hashlib

import torch

from nestir.backends import dist


def _sample_digests(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    xs, ys = x.detach().cpu().contiguous(), y.detach().cpu().contiguous()
    xb, yb = xs.reshape(xs.shape[0], -1).numpy(), ys.reshape(ys.shape[0], -1).numpy()
    return [hashlib.sha1(a.tobytes() + b.tobytes()).digest() for a, b in zip(xb, yb, strict=True)]


def union(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """This rank's ``(x, y)`` made into the ranks' common data set; a note says what was found."""
    if not dist.active():
        return x, y, ""
    mine = _sample_digests(x, y)
    whole = hashlib.sha256(b"".join(sorted(mine))).hexdigest()  # the multiset of samples, any order
    infos = dist.gather_object((len(mine), whole))
    sizes = [int(n) for n, _ in infos]  # type: ignore[misc]
    w = dist.world()
    if len({d for _, d in infos}) == 1:  # type: ignore[misc]
        # not sharded: every rank read the same samples; rank 0's copy and order for all
        xs = [x.clone()]
        ys = [y.clone()]
        dist.broadcast(xs + ys, 0)
        return xs[0], ys[0], (f"the loaders are not sharded (each of the {w} ranks read the same {sizes[0]} "
                              "samples): every sample counts once, and nestir splits each batch over the ranks")
    xa, ya = dist.gather_cat(x), dist.gather_cat(y)
    if len(set(sizes)) != 1:
        return xa, ya, f"shards of {sizes} samples joined in rank order"
    n = sizes[0]
    # a DistributedSampler deals index i of its (padded) list to rank i % w, position i // w
    order = torch.arange(n * w).view(w, n).t().reshape(-1)
    xa, ya = xa[order], ya[order]
    digests = _sample_digests(xa, ya)
    for pad in range(w - 1, 0, -1):  # it pads by repeating the first indices of its list at the end
        if digests[-pad:] == digests[:pad]:
            return (xa[:-pad], ya[:-pad],
                    f"{w} DistributedSampler shards: {pad} repeated sample(s) the sampler added are dropped")
    return xa, ya, f"{w} shards of {n} samples dealt back into the sampler's order"
