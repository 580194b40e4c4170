"""Training on your loaders as loaders: what each epoch's fresh pass of the train loader costs
against training on the first read held in memory (``loader_epochs=False``), in wall time and
peak memory, and what the fresh passes buy when the loader augments.

Each setting runs in its own process (peak RSS is per process): nestir.synthesize, pruning only,
LeNet-5 on 6,000 MNIST training images through a DataLoader whose Dataset shifts each image by up to
2 pixels at random on every read (an augmentation), validation on 3,000 others, test on t10k
(reporting only). Same seed, same (small) budget; loader_epochs on vs off. One seed: a cost
measurement, with the accuracy as a sanity check, not a comparison of methods.

Run: python benchmarks/loader_epochs.py  -> results/loader_epochs.json, results/loader_epochs.md"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST = os.path.join(HERE, "..", "..", "shared", "data", "mnist")
BUDGET = {"dense_epochs": 6, "final_epochs": 6, "trial_epochs": 3, "prune_epochs": 2, "max_prune_steps": 8,
          "max_trials": 3}
TRAIN, VAL = 6000, 3000


def child(loader_epochs: bool) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    import nestir
    from nestir.driver.data import load_idx
    from nestir.driver.zoo import ZOO

    class Shifted(Dataset):
        def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            return torch.roll(self.x[i], (dy, dx), dims=(1, 2)), self.y[i]

    torch.manual_seed(0)
    full, test = load_idx(MNIST, "train"), load_idx(MNIST, "test")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
    tr, va = order[:TRAIN], order[TRAIN:TRAIN + VAL]
    train = DataLoader(Shifted(full.x[tr], full.y[tr]), batch_size=64, shuffle=True)
    val = DataLoader(torch.utils.data.TensorDataset(full.x[va], full.y[va]), batch_size=500)
    t0 = time.perf_counter()
    r = nestir.synthesize(ZOO["lenet-5"].factory(), torch.zeros(1, 1, 28, 28), train=train, val=val,
                          method="prune", device="cpu", seed=0, loader_epochs=loader_epochs, **BUDGET)
    wall = time.perf_counter() - t0
    err = float((r.graph.to_torch()(test.x).argmax(1) != test.y).float().mean())
    base = float((r.baseline.to_torch()(test.x).argmax(1) != test.y).float().mean())
    return {"loader_epochs": loader_epochs, "wall_seconds": round(wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "params": r.report["final"]["params"], "dense_params": r.report["baseline"]["params"],
            "test_error": err, "dense_test_error": base, "threads": torch.get_num_threads()}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2] == "1")))
        return
    sys.path.insert(0, HERE)
    from common import machine, save

    rows = []
    for on in (True, False):
        p = subprocess.run([sys.executable, __file__, "--child", "1" if on else "0"], capture_output=True,
                           text=True, check=True)
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    save("loader_epochs.json", {"machine": machine(), "budget": BUDGET, "runs": rows})
    lines = ["| training data | wall (s) | peak RSS (MB) | dense test error | kept params (of dense) | "
             "kept test error |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {'a pass of the loader each epoch' if r['loader_epochs'] else 'the first read, in memory'}"
                     f" | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:.0f} | {100 * r['dense_test_error']:.2f}% | "
                     f"{r['params']:,} ({r['dense_params'] / r['params']:.1f}x fewer) | {100 * r['test_error']:.2f}% |")
    with open(os.path.join(HERE, "results", "loader_epochs.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
