"""saease.train.loader: shuffled streaming batches — every training row once per epoch, mixed across
shards, restartable at any batch, split across processes, read ahead in a thread."""

from __future__ import annotations

import threading

import pytest
import torch

from saease.errors import SaeaseError
from saease.store import holdout_mask, write_store
from saease.train.loader import ShuffledBatches
from test_train_support import one_thread  # noqa: F401  (autouse)


def id_store(path, n=1050, d=4, shard_rows=100, dtype="float32"):
    """A store whose first column is the row's global index (exact in float32 and, < 2048, float16)."""
    acts = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    acts[:, 0] = torch.arange(n, dtype=torch.float32)
    return write_store(path, acts, shard_rows=shard_rows, dtype=dtype)


def ids(batch) -> list[int]:
    return batch.x[:, 0].long().tolist()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return id_store(tmp_path_factory.mktemp("loader") / "store")


def loader(store, **kw):
    kw = {"batch_size": 64, "holdout": 0.1, "seed": 3, "buffer_shards": 3, **kw}
    return ShuffledBatches(store, kw.pop("batch_size"), **kw)


def test_every_training_row_once_per_epoch_and_no_heldout_row(store):
    b = loader(store)
    test = store.holdout_mask(0.1, 3)
    train_ids = sorted((~test).nonzero().flatten().tolist())
    for epoch in range(2):
        batches = [x for x in b.batches(epoch + 1, start_epoch=epoch) if x.epoch == epoch]
        seen = [i for x in batches for i in ids(x)]
        assert sorted(seen) == train_ids
        assert len(batches) == b.steps_per_epoch() == -(-len(train_ids) // 64)
        assert all(len(x.x) == 64 for x in batches[:-1]) and 0 < len(batches[-1].x) <= 64
        assert [x.index for x in batches] == list(range(len(batches)))


def test_batches_mix_shards_and_epochs_differ(store):
    b = loader(store)
    batches = list(b.batches(2))
    shards_per_batch = [len({i // 100 for i in ids(x)}) for x in batches]
    assert max(shards_per_batch) >= 3  # a batch draws on the whole mixing buffer
    first = [ids(x) for x in batches if x.epoch == 0]
    second = [ids(x) for x in batches if x.epoch == 1]
    assert first != second
    assert [ids(x) for x in loader(store).batches(1)] == first  # fixed by the seed


@pytest.mark.parametrize("start", [(0, 1), (0, 5), (0, 7), (0, 14), (1, 0), (1, 12), (0, 15)])
def test_restart_at_any_batch_gives_the_same_batches(store, start):
    b = loader(store)
    assert b.steps_per_epoch() == 15
    full = [(x.epoch, x.index, ids(x)) for x in b.batches(2)]
    at = start if start[1] < 15 else (start[0] + 1, 0)  # past an epoch's last batch: the next epoch
    offset = next(i for i, (e, j, _) in enumerate(full) if (e, j) == at)
    resumed = [(x.epoch, x.index, ids(x)) for x in loader(store).batches(2, *start)]
    assert resumed == full[offset:]


def test_processes_take_distinct_slices_of_the_same_global_batch(store):
    single = [ids(x) for x in loader(store).batches(1)]
    ranks = [list(loader(store, rank=r, world_size=3).batches(1)) for r in range(3)]
    assert all(len(r) == len(single) for r in ranks)
    for j, whole in enumerate(single):
        parts = [ids(r[j]) for r in ranks]
        assert sum(parts, []) == whole  # contiguous slices, in rank order: disjoint and complete
        assert sum(r[j].share for r in ranks) == pytest.approx(1.0)
        assert all(len(p) >= len(whole) // 3 for p in parts)


def test_float16_store_gives_float32_batches_in_store_units(tmp_path):
    s = id_store(tmp_path / "s", n=300, shard_rows=64, dtype="float16")
    x = next(iter(ShuffledBatches(s, 32, seed=0).batches(1))).x
    assert x.dtype == torch.float32
    rows = s.read_all()[x[:, 0].long()]
    assert torch.equal(x, rows)


def test_stopping_early_ends_the_reader_threads(store):
    before = threading.active_count()
    it = loader(store, prefetch=2).batches(5)
    next(it)
    it.close()
    assert threading.active_count() <= before


def test_a_damaged_shard_raises_in_the_trainer(tmp_path):
    s = id_store(tmp_path / "s", n=300, shard_rows=100)
    path = s.path / s.shards[1]["file"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SaeaseError, match="sha256"):
        list(ShuffledBatches(s, 32, buffer_shards=1).batches(1))


def test_sample_spreads_over_shards_and_skips_heldout_rows(store):
    b = loader(store)
    x = b.sample(max_rows=200, max_shards=4)
    rows = x[:, 0].long()
    assert 150 <= len(x) <= 200 and len({int(r) // 100 for r in rows}) == 4
    assert not store.holdout_mask(0.1, 3)[rows].any()
