import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nestir.driver.decide import paired, wilson


def test_paired_counts_only_disagreements():
    ref = torch.zeros(500, dtype=torch.bool)
    ref[:30] = True  # the reference misses 30 images
    same = paired(ref.clone(), ref, z=1.0, tolerance=0.005)
    assert same.delta == 0 and same.accept  # identical predictions: no difference
    assert 0 < same.se < 0.005  # but never a claim of zero uncertainty
    worse = ref.clone()
    worse[30:40] = True  # 10 more misses
    v = paired(worse, ref, z=1.0)
    assert v.delta == pytest.approx(10 / 500)
    assert not v.accept and v.bound > v.delta
    assert paired(worse, ref, z=1.0, tolerance=0.05).accept


def test_paired_bound_is_tighter_than_unpaired():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(500, generator=g) < 0.06
    cand = ref.clone()
    flip = torch.randperm(500, generator=g)[:8]
    cand[flip] = ~cand[flip]
    v = paired(cand, ref)
    p = float(cand.float().mean())
    unpaired_se = math.sqrt(2 * p * (1 - p) / 500)
    assert v.se < unpaired_se


@given(st.integers(0, 200), st.integers(1, 200))
def test_wilson_contains_the_estimate(w, extra):
    n = w + extra
    lo, hi = wilson(w, n)
    assert 0 <= lo <= w / n <= hi <= 1


def test_paired_rejects_mismatched_vectors():
    with pytest.raises(ValueError):
        paired(torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
