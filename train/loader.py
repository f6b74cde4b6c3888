"""Streaming a store's training rows in shuffled batches without holding it in memory.

Each epoch visits the shards in a seeded random order, `buffer_shards` at a time; the
training rows of those shards are mixed, shuffled and cut into batches, and the leftover
rows carry over into the next group. Every training row is seen exactly once per epoch.
"""

from __future__ import annotations

import torch

from saease.store import ActivationStore, holdout_mask


class ShuffledBatches:
    def __init__(self, store: ActivationStore, batch_size: int, *, holdout: float = 0.0, seed: int = 0,
                 buffer_shards: int = 4):
        self.store = store
        self.batch_size = batch_size
        self.buffer_shards = max(1, buffer_shards)
        self.seed = seed
        test = holdout_mask(store.n_rows, holdout, seed)
        offsets = store.shard_offsets
        self.train_rows = [~test[offsets[i]:offsets[i + 1]] for i in range(len(store.shards))]
        self.n_train = int(sum(int(m.sum()) for m in self.train_rows))

    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)

    def epoch(self, epoch: int):
        """Yield float32 batches [≤ batch_size, d_in] covering every training row once."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.store.shards), generator=gen).tolist()
        leftover = torch.empty(0, self.store.d_in)
        for g in range(0, len(order), self.buffer_shards):
            group = [self.store.read_shard(i).acts[self.train_rows[i]].float() for i in order[g:g + self.buffer_shards]]
            buffer = torch.cat([leftover, *group])
            buffer = buffer[torch.randperm(len(buffer), generator=gen)]
            n_full = len(buffer) // self.batch_size * self.batch_size
            for start in range(0, n_full, self.batch_size):
                yield buffer[start:start + self.batch_size]
            leftover = buffer[n_full:]
        if len(leftover):
            yield leftover
