"""Scoring streams the user's loader: one batch on the device at a time, memory that does not
grow with the number of batches, a cap on the batches read, bad batches refused by index."""

import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn as nn

import nestir
from nestir.driver.batches import Stream
from nestir.ir.errors import DataError, PassError


class Loader:
    """A re-iterable loader that makes its batches on the fly and records how many are alive."""

    def __init__(self, n: int, size: int = 32) -> None:
        self.n, self.size, self.alive, self.peak, self.read = n, size, [], 0, 0

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            x = torch.rand(self.size, 20, generator=gen)
            y = torch.randint(0, 5, (self.size,), generator=gen)
            self.alive = [r for r in self.alive if r() is not None]
            self.alive.append(weakref.ref(x))
            self.peak = max(self.peak, len(self.alive))
            self.read += 1
            yield x, y
            del x, y
            gc.collect()


def mlp_graph() -> nestir.Graph:
    torch.manual_seed(0)
    return nestir.trace(nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5)), torch.zeros(2, 20))


PIPE = ["grow-connection:fraction=0.2", "bridge-neuron:count=2", "magnitude-prune:fraction=0.2,neuron_fraction=0.1"]


def test_apply_holds_a_few_batches_whatever_the_loader_length():
    peaks = {}
    for n in (4, 60):
        loader = Loader(n)
        nestir.apply(mlp_graph(), PIPE, data=loader, device="cpu")
        assert loader.read >= n  # every batch was read
        peaks[n] = loader.peak
    assert peaks[60] <= peaks[4] <= 3


def test_batches_option_caps_what_each_pass_reads():
    loader = Loader(50)
    nestir.apply(mlp_graph(), ["grow-connection:fraction=0.2"], data=loader, device="cpu", batches=3)
    assert loader.read <= 2 * 3  # the up-front check reads one batch; the pass reads three


def test_a_bad_batch_is_refused_with_its_index():
    good = [(torch.rand(4, 20), torch.randint(0, 5, (4,)))] * 2
    bad = good + [(torch.rand(4, 21), torch.randint(0, 5, (4,)))]
    with pytest.raises(DataError, match="batch 2"):
        nestir.apply(mlp_graph(), ["grow-connection:fraction=0.2"], data=bad, device="cpu")
    with pytest.raises(DataError, match="no batches"):
        nestir.apply(mlp_graph(), ["grow-connection:fraction=0.2"], data=[], device="cpu")
    with pytest.raises(PassError, match="pairs"):
        Stream(torch.zeros(3))


def test_a_one_shot_generator_can_be_read_twice():
    gen = ((torch.rand(4, 20), torch.randint(0, 5, (4,))) for _ in range(3))
    s = Stream(gen)
    assert len(list(s)) == len(list(s)) == 3


PEAK = """
import resource, sys, torch, torch.nn as nn, nestir
n = int(sys.argv[1])
class Big:
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(n):
            yield torch.rand(2048, 784, generator=g), torch.randint(0, 10, (2048,), generator=g)
g = nestir.trace(nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), torch.zeros(2, 784))
nestir.apply(g, ["grow-connection:fraction=0.1", "bridge-neuron:count=2"], data=Big(), device="cpu")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_peak_memory_of_scoring_200_batches_is_that_of_4():
    """200 batches of 6.4 MB would add 1.3 GB if they were held; streaming holds one."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    peak = {}
    for n in (4, 200):
        p = subprocess.run([sys.executable, "-c", PEAK, str(n)], capture_output=True, text=True, env=env,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        peak[n] = int(p.stdout.split()[-1]) / 1024  # MB
    assert peak[200] <= peak[4] + 64, peak
