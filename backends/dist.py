"""``torch.distributed`` in one place: which rank this process is, and the few collectives that
keep every rank's decisions identical (sums of statistics, concatenation of per-sample results,
the rank-0 copy of the weights).

With no initialised process group (or a group of one) every function is the identity, so the
library calls them unconditionally. Collectives run on CPU tensors under gloo and on the
tensors' own device otherwise (NCCL)."""

from __future__ import annotations

import torch


def active() -> bool:
    """An initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0, the only rank that writes checkpoints and outputs (also true with no group)."""
    return rank() == 0


def _host(t: torch.Tensor) -> bool:
    import torch.distributed as dist

    return dist.get_backend() == "gloo" and t.device.type != "cpu"


def all_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place; one collective for the whole list (every rank
    must pass tensors of the same shapes in the same order). In their own floating-point type
    when they share one (fp32 gradients travel as fp32), else in float64 (counts, mixed lists)."""
    if not active() or not tensors:
        return
    import torch.distributed as dist

    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 and tensors[0].is_floating_point() else torch.float64
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])
    buf = flat.cpu() if _host(flat) else flat
    dist.all_reduce(buf)
    flat = buf.to(flat.device)
    i = 0
    for t in tensors:
        k = t.numel()
        t.copy_(flat[i:i + k].view_as(t).to(t.dtype))
        i += k


def sum_float(*values: float) -> tuple[float, ...]:
    """Python numbers summed over the ranks."""
    if not active():
        return tuple(values)
    t = torch.tensor(values, dtype=torch.float64)
    all_sum([t])
    return tuple(float(v) for v in t)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors concatenated along dim 0 in rank order (their lengths may differ)."""
    if not active():
        return t
    import torch.distributed as dist

    n = world()
    lengths = torch.zeros(n, dtype=torch.long)
    lengths[rank()] = t.shape[0]
    all_sum([lengths])
    top = int(lengths.max())
    pad = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
    pad[: t.shape[0]] = t
    src = pad.cpu() if _host(pad) else pad
    if src.dtype == torch.bool:
        src = src.to(torch.uint8)
    parts = [torch.empty_like(src) for _ in range(n)]
    dist.all_gather(parts, src)
    out = torch.cat([p[: int(k)] for p, k in zip(parts, lengths, strict=True)])
    return out.to(t.device, t.dtype)


def broadcast(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s copy, in place."""
    if not active():
        return
    import torch.distributed as dist

    for t in tensors:
        buf = t.cpu() if _host(t) else t
        dist.broadcast(buf, src)
        if buf is not t:
            t.copy_(buf)


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (the first ranks take one more when ``n`` does
    not divide evenly; a share may be empty)."""
    w, r = world(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def gather_object(obj: object) -> list[object]:
    """Every rank's Python object (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    import torch.distributed as dist

    box: list[object] = [None] * world()
    dist.all_gather_object(box, obj)
    return box


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s Python object (picklable) on every rank."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def init_from_env(device: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is present, gloo on the CPU otherwise.
    ``device="cpu"`` asks for gloo even where CUDA is present. Returns whether this call
    initialised it (the caller then destroys it)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available() and (device is None or device == "auto" or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shutdown() -> None:
    """Leave the process group: every rank waits for the others first, so that none tears its
    connections down while another still talks to it (gloo then aborts the process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
