"""nestir.synthesize end to end on your own model, DataLoaders and loss.

A small CNN of our own, DataLoaders over scikit-learn's 8x8 digits (a data set that ships with a
package, no download), label-smoothed cross-entropy instead of the plain one, a metric of our own
(top-2 accuracy), then the kept network as a PyTorch module and as ONNX.

    python examples/own_data.py [--out runs/own_data]

Under torchrun each rank gives its shard of the data (a DistributedSampler) and rank 0 writes:
    torchrun --nproc_per_node 2 examples/own_data.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import nestir
from nestir.backends import dist


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def top2(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of images whose label is among the two highest outputs (higher is better)."""
    return float((outputs.topk(2, 1).indices == targets[:, None]).any(1).float().mean())


def loaders(seed: int) -> tuple[DataLoader, DataLoader]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, val = TensorDataset(x[order[:1400]], y[order[:1400]]), TensorDataset(x[order[1400:]], y[order[1400:]])

    def sampler(ds: TensorDataset) -> DistributedSampler | None:  # each rank its shard under torchrun
        return DistributedSampler(ds, shuffle=False) if dist.active() else None

    return (DataLoader(train, batch_size=64, sampler=sampler(train)),
            DataLoader(val, batch_size=256, sampler=sampler(val)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/own_data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    joined = dist.init_from_env("cpu")  # torchrun: 2 processes on the CPU (gloo)
    train, val = loaders(args.seed)
    result = nestir.synthesize(DigitsCNN(), torch.zeros(1, 1, 8, 8), train=train, val=val,
                               loss=nn.CrossEntropyLoss(label_smoothing=0.1), metric=top2, metric_tolerance=0.005,
                               device="cpu", out=args.out, seed=args.seed, dense_epochs=15, final_epochs=10,
                               trial_epochs=5, max_growth_steps=2)
    if dist.is_main():
        b, f = result.report["baseline"], result.report["final"]
        print(f"dense {b['params']} params, top-2 accuracy {b['val_metric']:.2%} -> kept {f['params']} params "
              f"({b['params'] / f['params']:.1f}x fewer), top-2 accuracy {f['val_metric']:.2%} (selection) / "
              f"{f['val_metric_after_final_training']:.2%} (after the final training)")
        module = result.to_torch()
        nonzero = sum(int((p != 0).sum()) for p in module.parameters())
        print(f"compact module: {nonzero} non-zero parameters; wrote {args.out}/model.onnx and report.json")
    if joined:
        dist.shutdown()


if __name__ == "__main__":
    main()
