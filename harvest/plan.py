"""Row bookkeeping, derived from the windows and the configuration only (never from timing),
so that a rerun, a resume or another number of ranks makes exactly the same shards.

Rows are the stored positions of the windows in order (window 0's kept positions, then window
1's, ...), cut at `max_rows`. Shard k holds rows [k*shard_rows, (k+1)*shard_rows). Batch j is
the windows [j*batch_size, (j+1)*batch_size), always the same windows whoever computes it, so
its activations are bit-for-bit the same in every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Plan:
    windows: torch.Tensor          # [n_windows, context_size] int64
    keep: torch.Tensor | None      # [n_windows, context_size] bool, None: every position
    n_rows: int
    shard_rows: int
    batch_size: int
    row_start: torch.Tensor        # [n_windows + 1] first row of each window (cut at n_rows)

    @classmethod
    def build(cls, windows: torch.Tensor, keep: torch.Tensor | None, *, max_rows: int,
              shard_rows: int, batch_size: int) -> "Plan":
        n_win, ctx = windows.shape
        per_window = keep.sum(1) if keep is not None else torch.full((n_win,), ctx)
        row_start = torch.zeros(n_win + 1, dtype=torch.int64)
        row_start[1:] = per_window.cumsum(0)
        n_rows = int(row_start[-1])
        if max_rows:
            n_rows = min(n_rows, max_rows)
            row_start.clamp_(max=n_rows)
        return cls(windows, keep, n_rows, shard_rows, batch_size, row_start)

    @property
    def context_size(self) -> int:
        return self.windows.shape[1]

    @property
    def n_windows(self) -> int:
        return len(self.windows)

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    @property
    def n_batches(self) -> int:
        return -(-self.n_windows // self.batch_size)

    def shard_rows_range(self, k: int) -> tuple[int, int]:
        return k * self.shard_rows, min((k + 1) * self.shard_rows, self.n_rows)

    def batch_windows(self, j: int) -> tuple[int, int]:
        return j * self.batch_size, min((j + 1) * self.batch_size, self.n_windows)

    def batch_rows(self, j: int) -> tuple[int, int]:
        w0, w1 = self.batch_windows(j)
        return int(self.row_start[w0]), int(self.row_start[w1])

    def windows_of_rows(self, a: int, b: int) -> tuple[int, int]:
        """Windows [w0, w1) holding rows [a, b)."""
        w0 = int(torch.searchsorted(self.row_start, torch.tensor(a), right=True)) - 1
        w1 = int(torch.searchsorted(self.row_start, torch.tensor(b - 1), right=True))
        return w0, w1

    def batches_of_rows(self, a: int, b: int) -> range:
        w0, w1 = self.windows_of_rows(a, b)
        return range(w0 // self.batch_size, (w1 - 1) // self.batch_size + 1)

    def flat_positions(self, w0: int, w1: int) -> torch.Tensor:
        """Flat indices (window * context_size + pos) of the kept positions of windows [w0, w1)."""
        ctx = self.context_size
        if self.keep is None:
            return torch.arange(w0 * ctx, w1 * ctx)
        return self.keep[w0:w1].flatten().nonzero().flatten() + w0 * ctx

    def columns(self, a: int, b: int) -> dict[str, torch.Tensor]:
        """`tokens`, `seq`, `pos` of rows [a, b)."""
        w0, w1 = self.windows_of_rows(a, b)
        start = int(self.row_start[w0])
        flat = self.flat_positions(w0, w1)[a - start: b - start]
        ctx = self.context_size
        return {"tokens": self.windows.flatten()[flat], "seq": flat // ctx, "pos": flat % ctx}

    def batch_keep(self, j: int) -> torch.Tensor | None:
        """Flat bool mask over the batch's positions, None when all are kept."""
        if self.keep is None:
            return None
        w0, w1 = self.batch_windows(j)
        return self.keep[w0:w1].flatten()

    def assign(self, missing: list[int], rank: int, world: int) -> list[int]:
        """This rank's share of the missing shards: a contiguous run, so that only the batches
        at the seams are computed twice."""
        n = len(missing)
        return missing[rank * n // world:(rank + 1) * n // world]
