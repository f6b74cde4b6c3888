"""Shared by the training tests (no tests here): one torch thread per test, and small stores."""

from __future__ import annotations

import pytest
import torch

from saease.store import write_store


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps run fastest on one thread (two contend on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_store(path, n=1200, d=16, shard_rows=300, scale=1.0, dtype="float32", seed=0):
    """`n` vectors near a 6-dimensional subspace of R^d, offset from the origin."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, 6, generator=g) @ torch.randn(6, d, generator=g)) * 3 + 1
    return write_store(path, x * scale, shard_rows=shard_rows, dtype=dtype)
