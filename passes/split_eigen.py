"""Minimum eigenpairs of per-neuron splitting matrices S_i = sum_s C[s,i] x_s x_s^T, matrix-free."""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def matvec(X: torch.Tensor, C: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """S_i v_i for every neuron i at once: (n, d). Two matmuls; no d x d matrix is formed."""
    return (C * (X @ V.T)).T @ X


def dense_min_eigen(X: torch.Tensor, C: torch.Tensor, reduce: Reduce = _same) -> tuple[torch.Tensor, torch.Tensor]:
    S = reduce(torch.einsum("si,sd,se->ide", C, X, X))
    vals, vecs = torch.linalg.eigh(S)
    return vals[:, 0], vecs[:, :, 0]


def lanczos_min_eigen(X: torch.Tensor, C: torch.Tensor, iters: int, gen: torch.Generator,
                      reduce: Reduce = _same) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lanczos with full re-orthogonalization, ``iters`` steps for all neurons.
    ``reduce`` sums each matrix-vector product over the holders of the samples (the ranks)."""
    n, d = C.shape[1], X.shape[1]
    k = min(iters, d)
    q = torch.randn((n, d), generator=gen).to(X.device, X.dtype)
    q = q / q.norm(dim=1, keepdim=True)
    Q = torch.zeros(k, n, d, device=X.device, dtype=X.dtype)  # basis vectors, contiguous per step
    alpha = torch.zeros(n, k, device=X.device, dtype=X.dtype)
    beta = torch.zeros(n, k, device=X.device, dtype=X.dtype)
    for j in range(k):
        Q[j] = q
        w = reduce(matvec(X, C, q))
        alpha[:, j] = (w * q).sum(1)
        basis = Q[: j + 1]
        w = w - (basis * (basis * w).sum(2, keepdim=True)).sum(0)  # full re-orthogonalization
        b = w.norm(dim=1)
        beta[:, j] = b
        q = w / b.clamp_min(1e-30)[:, None]
    T = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    vals, vecs = torch.linalg.eigh(T)
    v = (Q * vecs[:, :, 0].T.unsqueeze(2)).sum(0)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return vals[:, 0], v


def min_eigen(X: torch.Tensor, C: torch.Tensor, iters: int, dense_limit: int, gen: torch.Generator,
              reduce: Reduce = _same) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda_min, unit eigenvector) per neuron; exact when d <= ``dense_limit``. ``reduce``
    sums a partial S_i (or S_i v_i) over the ranks when the samples are split between them."""
    if X.shape[1] <= dense_limit:
        return dense_min_eigen(X, C, reduce)
    return lanczos_min_eigen(X, C, iters, gen, reduce)
