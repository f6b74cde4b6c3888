"""The paper's synthetic datasets (Sec. 5.1), labelled by the manifold each point lies on.

- `subspaces`: a union of random linear subspaces, x = U_i c with U_i orthonormal, c ~ N(0, I).
- `manifolds`: each manifold the image of N(0, I_r) under a random 2-layer MLP
  (hidden width r, leaky-ReLU slope 0.2) into the ambient space.
- `superposition`: many unit feature directions in R^d; each vector a sparse, per-sample
  varying number of them with random magnitudes (a ground truth that looks like LLM data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saease.errors import SaeaseError


def _check_dims(dims: list[int], ambient: int) -> None:
    if not dims or any(int(r) < 1 for r in dims):
        raise SaeaseError(f"dims {dims}: expected a list of positive integers such as 4,4,4")
    if max(dims) > ambient:
        raise SaeaseError(f"dims {dims} exceed the ambient dimension {ambient}")


def subspaces(n: int = 500_000, dims=(4, 4, 4), ambient: int = 40, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n points, each on one of len(dims) random linear subspaces of R^ambient (chosen at random)."""
    dims = [int(r) for r in dims]
    _check_dims(dims, ambient)
    gen = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(ambient, r, generator=gen))[0] for r in dims]
    labels = torch.randint(len(dims), (n,), generator=gen)
    x = torch.empty(n, ambient)
    for i, basis in enumerate(bases):
        rows = labels == i
        x[rows] = torch.randn(int(rows.sum()), dims[i], generator=gen) @ basis.T
    return x, labels


def manifolds(n_per: int = 200_000, dims=(5, 5, 10, 10), ambient: int = 100, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n_per points on each of len(dims) nonlinear manifolds of R^ambient of dimensions `dims`."""
    dims = [int(r) for r in dims]
    _check_dims(dims, ambient)
    gen = torch.Generator().manual_seed(seed)
    xs, labels = [], []
    for i, r in enumerate(dims):
        w1 = torch.randn(r, r, generator=gen) / r ** 0.5
        b1 = torch.randn(r, generator=gen) * 0.1
        w2 = torch.randn(r, ambient, generator=gen) / r ** 0.5
        c = torch.randn(n_per, r, generator=gen)
        xs.append(F.leaky_relu(c @ w1 + b1, 0.2) @ w2)
        labels.append(torch.full((n_per,), i))
    x, y = torch.cat(xs), torch.cat(labels)
    perm = torch.randperm(len(x), generator=gen)
    return x[perm], y[perm]


def superposition(n: int = 200_000, n_features: int = 4096, d: int = 512, mean_active: float = 12.0,
                  seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse combinations of `n_features` random unit directions in R^d.

    Each vector uses a Poisson(mean_active) number (≥ 1) of features chosen with Zipf-like
    frequencies, each with a magnitude drawn from Exp(1) + 0.5. Returns (x [n, d],
    n_active [n] the true per-sample count, directions [n_features, d])."""
    if n_features < 1 or d < 1 or mean_active <= 0:
        raise SaeaseError("superposition needs n_features ≥ 1, d ≥ 1 and mean_active > 0")
    # Offset the seed: with the trainer's default seed, torch.manual_seed(seed) draws the very
    # numbers an initial W_dec is made of, which would hand the true directions to the model.
    gen = torch.Generator().manual_seed(seed + 0x5EED)
    directions = F.normalize(torch.randn(n_features, d, generator=gen), dim=-1)
    freq = 1.0 / torch.arange(1, n_features + 1).double() ** 0.5
    counts = torch.poisson(torch.full((n,), float(mean_active)), generator=gen).long().clamp(1, n_features)
    x = torch.empty(n, d)
    for start in range(0, n, 8192):
        c = counts[start:start + 8192]
        k_max = int(c.max())
        idx = torch.multinomial(freq.expand(len(c), -1), k_max, replacement=False, generator=gen)
        mags = torch.empty(len(c), k_max).exponential_(1.0, generator=gen) + 0.5
        mags = mags * (torch.arange(k_max)[None] < c[:, None])
        x[start:start + 8192] = torch.einsum("bk,bkd->bd", mags, directions[idx])
    return x, counts, directions
