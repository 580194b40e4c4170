"""Accuracy decisions that hold on unseen data.

A synthesis run takes dozens of keep-or-reject decisions on one small validation split. Comparing
a raw validation accuracy with a threshold keeps whichever step was lucky on those images, so the
final model's validation error is optimistic. Two tools against that:

- :func:`paired` compares a candidate with a fixed reference (the dense model) *on the same
  images*. Only the images on which the two disagree carry information, so the standard error of
  the difference is far smaller than that of either error rate, and a step is accepted only when
  an upper confidence bound of the difference stays within the tolerance.
- :func:`pooled` does the same for several candidates at once (a block of the pruning chain):
  under a monotone error curve (a more pruned network is no more accurate) the mean error of the
  networks at and beyond a point bounds that point's error from above, with less noise than one
  network alone because their training noise averages out.
- :func:`wilson` is the confidence interval of an error rate measured once on an audit split that
  no decision read: the unbiased estimate a report gives next to the selection estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """Paired comparison of a candidate with the reference on ``n`` validation images."""

    delta: float  # candidate error - reference error (fraction)
    se: float  # standard error of delta
    bound: float  # delta + z * se: the upper confidence bound
    tolerance: float
    n: int

    @property
    def accept(self) -> bool:
        return self.bound <= self.tolerance + 1e-12

    @property
    def point_ok(self) -> bool:
        """The point estimate alone is within the tolerance (no confidence margin)."""
        return self.delta <= self.tolerance + 1e-12

    def describe(self) -> str:
        return (f"error {100 * self.delta:+.2f} pts vs reference, bound {100 * self.bound:+.2f} "
                f"(+{100 * (self.bound - self.delta):.2f}), tolerance {100 * self.tolerance:.2f}")


def paired(candidate_wrong: torch.Tensor, reference_wrong: torch.Tensor, *, z: float = 1.0,
           tolerance: float = 0.0) -> Verdict:
    """Paired difference of two per-image 0/1 error vectors on the same images.

    ``delta`` is the difference of the two error rates; its standard error comes from the
    per-image differences d_i = c_i - r_i in {-1, 0, 1} (McNemar's setting), with one
    discordant image of prior weight so that a run of identical predictions does not claim
    zero uncertainty."""
    c = candidate_wrong.detach().to("cpu", torch.float64).flatten()
    r = reference_wrong.detach().to("cpu", torch.float64).flatten()
    if c.shape != r.shape or c.numel() == 0:
        raise ValueError(f"paired comparison needs two equal, non-empty vectors, got {tuple(c.shape)} "
                         f"and {tuple(r.shape)}")
    n = c.numel()
    d = c - r
    delta = float(d.mean())
    discordant = float((d != 0).sum()) + 1.0  # +1: a prior discordant pair
    var = max(discordant / n - delta * delta, 0.0) / n
    se = math.sqrt(var)
    return Verdict(delta, se, delta + z * se, tolerance, n)


def pooled(candidates_wrong: list[torch.Tensor], reference_wrong: torch.Tensor, *, z: float = 1.0,
           tolerance: float = 0.0) -> Verdict:
    """Paired comparison of the *mean* of several candidates with the reference, per image:
    d_i = mean_j c_ij - r_i. Its mean is the mean of the candidates' error differences and its
    standard error comes from the spread of d_i over the images, so the correlation between the
    candidates (they err on many of the same images) is accounted for. One candidate gives
    exactly :func:`paired`."""
    if not candidates_wrong:
        raise ValueError("pooled comparison needs at least one candidate")
    r = reference_wrong.detach().to("cpu", torch.float64).flatten()
    cs = [c.detach().to("cpu", torch.float64).flatten() for c in candidates_wrong]
    if any(c.shape != r.shape for c in cs) or r.numel() == 0:
        raise ValueError(f"pooled comparison needs equal, non-empty vectors, got {[tuple(c.shape) for c in cs]} "
                         f"and {tuple(r.shape)}")
    n = r.numel()
    d = torch.stack(cs).mean(0) - r
    delta = float(d.mean())
    second = float((d * d).sum()) + 1.0  # +1: a prior discordant image, as in paired()
    se = math.sqrt(max(second / n - delta * delta, 0.0) / n)
    return Verdict(delta, se, delta + z * se, tolerance, n)


def wilson(wrong: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of an error rate (``wrong`` of ``n``), 95% by default."""
    if n <= 0:
        return (0.0, 1.0)
    p = wrong / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))
