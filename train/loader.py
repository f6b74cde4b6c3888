"""Streaming a store's training rows in shuffled batches without holding the store in memory.

Each epoch visits the shards in a seeded random order, `buffer_shards` at a time. The
training rows of such a group, plus the rows left over from the group before, form the
mixing buffer: it is shuffled and cut into batches, and what does not fill a whole batch
carries over into the next group (the epoch's last group ends with one short batch). Every
training row is seen exactly once per epoch, and memory holds about two groups (the one
being served, the next one being read) whatever the store's size.

The shuffle is computed on row indices before any data is read (`plan`), so a resumed run
can start at any (epoch, batch) and get exactly the batches it would have had.

Reading is done ahead of the trainer: a background thread reads the next group's shards
while another cuts batches (in pinned memory when the trainer is on CUDA), `prefetch`
batches ahead.

With several processes (torchrun), every process plans the same global batches and takes
its own contiguous slice of each, so the processes train on distinct rows and together on
exactly the batch one process would have used. `Batch.share` is the slice's fraction of the
global batch (the trainer weights its loss by it).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saease.store import ActivationStore


@dataclass
class Group:
    """One mixing buffer of an epoch, as row indices (nothing read yet)."""

    epoch: int
    shards: list[int]  # the store shards read for it
    carried: Int[Tensor, "m"]  # global ids of rows carried over from the group before (m < batch_size)
    ids: Int[Tensor, "n"]  # global ids in buffer order: carried rows, then each shard's training rows
    perm: Int[Tensor, "n"]  # the shuffle: batch j holds ids[perm[j*B:(j+1)*B]]
    first_batch: int  # index, within the epoch, of this group's first batch
    n_batches: int


@dataclass
class Batch:
    epoch: int
    index: int  # batch index within the epoch
    x: Float[Tensor, "rows d_in"]
    share: float  # this process's fraction of the global batch's rows


class ShuffledBatches:
    def __init__(self, store: ActivationStore, batch_size: int, *, holdout: float = 0.0, seed: int = 0,
                 buffer_shards: int = 4, rank: int = 0, world_size: int = 1, prefetch: int = 4,
                 dtype: torch.dtype | None = torch.float32, pin_memory: bool = False):
        self.store = store
        self.batch_size = batch_size
        self.buffer_shards = max(1, buffer_shards)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.prefetch = max(1, prefetch)
        self.dtype = dtype  # of the batches handed out (None: the store's own)
        self.pin_memory = pin_memory
        test = store.holdout_mask(holdout, seed)
        self.offsets = store.shard_offsets
        # Per shard, the local indices of its training rows (int32: 4 bytes a row).
        self.train_index = [(~test[self.offsets[i]:self.offsets[i + 1]]).nonzero().flatten().to(torch.int32)
                            for i in range(len(store.shards))]
        del test
        self.n_train = int(sum(len(t) for t in self.train_index))

    # ---- the plan: indices only -----------------------------------------------------------

    def steps_per_epoch(self) -> int:
        """Global batches per epoch (with several processes, a last batch with fewer rows than
        processes is skipped)."""
        steps, rest = divmod(self.n_train, self.batch_size)
        return steps + (1 if rest >= self.world_size else 0)

    def plan(self, epoch: int) -> Iterator[Group]:
        """The epoch's groups in order, computed from the seed alone."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.store.shards), generator=gen).tolist()
        chunks = [order[i:i + self.buffer_shards] for i in range(0, len(order), self.buffer_shards)]
        carried, first = torch.empty(0, dtype=torch.long), 0
        for g, shards in enumerate(chunks):
            ids = torch.cat([carried] + [self.offsets[s] + self.train_index[s].long() for s in shards])
            perm = torch.randperm(len(ids), generator=gen)
            n_batches = len(ids) // self.batch_size
            if g == len(chunks) - 1 and len(ids) % self.batch_size:
                n_batches += 1  # the epoch ends with one short batch
            yield Group(epoch, shards, carried, ids, perm, first, n_batches)
            carried = ids[perm[n_batches * self.batch_size:]]
            first += n_batches

    def _plan_from(self, epoch: int, batch: int, epochs: int) -> Iterator[tuple[Group, int]]:
        """(group, first batch to serve from it) from batch `batch` of `epoch` to the end."""
        for e in range(epoch, epochs):
            for group in self.plan(e):
                start = batch - group.first_batch if e == epoch else 0
                if start < group.n_batches or (group.n_batches == 0 and start <= 0):
                    yield group, max(start, 0)

    # ---- reading --------------------------------------------------------------------------

    def _read(self, group: Group) -> Tensor:
        """The group's buffer: room for its carried rows, then its shards' rows (all of them,
        held-out ones too: cheaper than picking), in store dtype."""
        sizes = [self.store.shards[s]["rows"] for s in group.shards]
        buffer = torch.empty(len(group.carried) + sum(sizes), self.store.d_in, dtype=self.store_dtype)
        at = len(group.carried)
        for s, rows in zip(group.shards, sizes):
            buffer[at:at + rows] = self.store.read_shard(s).acts
            at += rows
        return buffer

    def _rows(self, ids: Tensor) -> Tensor:
        """The rows with these global ids, in this order (reads the shards that hold them)."""
        out = torch.empty(len(ids), self.store.d_in, dtype=self.store_dtype)
        shard_of = torch.searchsorted(torch.tensor(self.offsets), ids, right=True) - 1
        for s in shard_of.unique().tolist():
            mask = shard_of == s
            out[mask] = self.store.read_shard(s).acts[ids[mask] - self.offsets[s]]
        return out

    @property
    def store_dtype(self) -> torch.dtype:
        from saease.store import DTYPES

        return DTYPES[self.store.dtype]

    def sample(self, max_rows: int = 65536, max_shards: int = 8) -> Float[Tensor, "n d_in"]:
        """Up to `max_rows` training rows from up to `max_shards` shards spread over the store."""
        n = len(self.store.shards)
        picks = torch.linspace(0, n - 1, min(n, max_shards)).round().long().unique().tolist()
        per = -(-max_rows // len(picks))
        parts = [self.store.read_shard(s).acts[self.train_index[s][:per].long()].float() for s in picks]
        return torch.cat(parts)[:max_rows]

    # ---- serving --------------------------------------------------------------------------

    def batches(self, epochs: int, start_epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Every batch from (start_epoch, start_batch) to the end of epoch `epochs` − 1, read
        ahead in background threads. Close the iterator (or run it out) to stop the threads."""
        reader = ReadAhead(self._serve(epochs, start_epoch, start_batch), depth=self.prefetch)
        try:
            yield from reader
        finally:
            reader.close()

    def _serve(self, epochs: int, start_epoch: int, start_batch: int) -> Iterator[Batch]:
        plan = self._plan_from(start_epoch, start_batch, epochs)
        with ThreadPoolExecutor(1, thread_name_prefix="saease-shards") as pool:
            upcoming = next(plan, None)
            pending = pool.submit(self._read, upcoming[0]) if upcoming else None
            carried = None  # the rows left over from the group just served
            while upcoming is not None:
                (group, start), buffer = upcoming, pending.result()
                upcoming = next(plan, None)  # start reading the next group's shards now
                pending = pool.submit(self._read, upcoming[0]) if upcoming else None
                if carried is None or len(carried) != len(group.carried):
                    carried = self._rows(group.carried)  # the first group after a resume
                m = len(carried)
                buffer[:m] = carried
                # where each of the group's rows sits in the buffer, in `group.ids` order
                starts = m + torch.tensor([0] + [self.store.shards[s]["rows"] for s in group.shards]).cumsum(0)
                where = torch.cat([torch.arange(m)] + [starts[i] + self.train_index[s].long()
                                                       for i, s in enumerate(group.shards)])
                B = self.batch_size
                for j in range(start, group.n_batches):
                    rows = where[group.perm[j * B:(j + 1) * B]]
                    n = len(rows)
                    if n < self.world_size:
                        continue  # too few rows to give every process one
                    lo, hi = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
                    yield Batch(group.epoch, group.first_batch + j, self._gather(buffer, rows[lo:hi]), (hi - lo) / n)
                carried = buffer[where[group.perm[group.n_batches * B:]]]
                del buffer

    def _gather(self, buffer: Tensor, rows: Tensor) -> Tensor:
        """buffer[rows] in the batches' dtype (in pinned memory for CUDA)."""
        x = buffer.index_select(0, rows)
        if self.dtype is not None and x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x.pin_memory() if self.pin_memory else x


_DONE = object()


class ReadAhead:
    """Runs an iterator in a daemon thread, up to `depth` items ahead of the consumer.
    An exception in the iterator is raised in the consumer."""

    def __init__(self, iterator: Iterator, depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(iterator,), daemon=True, name="saease-batches")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    break
            else:
                self._put(_DONE)
        except BaseException as err:  # handed to the consumer
            self._put(err)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
