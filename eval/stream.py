"""Streaming a store's rows for evaluation: one read of each shard, shared by every dictionary.

Each dictionary evaluates its own rows of the store (the rows it held out in training when the
store is its training store, else all of them), so a shard is read once and each dictionary
takes its selection of it. The next shard is read (and its sha256 checked) in a background
thread while the current one is being evaluated.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.store import ActivationStore, Shard, training_split

META = ("tokens", "seq", "pos")  # per-row columns a harvested store carries


@dataclass
class Batch:
    acts: Float[Tensor, "batch d_in"]
    rows: Int[Tensor, "batch"]  # global row index in the store
    labels: Int[Tensor, "batch"] | None
    meta: Int[Tensor, "batch 3"] | None  # token, seq, pos (None if the store has no tokens)


class Notes:
    """One-line warnings, each printed once (to stderr) and kept for the JSON summary."""

    def __init__(self, quiet: bool = False):
        self.seen: list[str] = []
        self.quiet = quiet

    def warn(self, message: str) -> None:
        if message not in self.seen:
            self.seen.append(message)
            if not self.quiet:
                print(f"warning: {message}", file=sys.stderr)


def open_store(path) -> ActivationStore:
    store = ActivationStore(path)
    if store.n_rows == 0:
        raise SaeaseError(f"{store.path}: store has no rows; nothing to evaluate (harvest or import some first)")
    return store


def training_store(dictionary: Dictionary, name: str) -> str:
    data = dictionary.cfg.source.get("store")
    if not data:
        raise SaeaseError(f"{name}: records no training store; pass --data STORE")
    return data


def eval_rows(dictionary: Dictionary, store: ActivationStore, all_rows: bool = False) -> tuple[Tensor | None, str]:
    """(mask of the rows to evaluate or None for all, "held-out" / "all").

    The held-out rows are used when `store` is the dictionary's training store and it held some
    out: the same content (its split key; a copied or moved store still is), or for dictionaries
    that record no split key the same folder (saease.store.training_split). Any other store is
    evaluated on every row.
    """
    return training_split(store, dictionary.cfg.training, dictionary.cfg.source.get("store"), all_rows)


def check_pairing(dictionary: Dictionary, name: str, store: ActivationStore, notes: Notes) -> None:
    """d_in must agree (error); a different model or hook is allowed but warned about, by name."""
    if store.d_in != dictionary.cfg.d_in:
        raise SaeaseError(f"{store.path}: d_in {store.d_in} but {name} expects d_in {dictionary.cfg.d_in}; "
                          "pass a store harvested at the dictionary's hook")
    mine, theirs = dictionary.cfg.source, store.source
    for key in ("model", "hook"):
        a, b = mine.get(key), theirs.get(key)
        if a is not None and b is not None and not _same(str(a), str(b)):
            notes.warn(f"{name} was trained on {key} {a!r} but {store.path} holds {key} {b!r}; "
                       "its metrics describe activations it was not trained on")


def _same(a: str, b: str) -> bool:
    """Same model or hook: equal names, the same folder, or a hub id and its short name
    (`EleutherAI/pythia-70m` and `pythia-70m`)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() or pb.is_dir():
        return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
    return a.lower().rsplit("/", 1)[-1] == b.lower().rsplit("/", 1)[-1]


def _shards(store: ActivationStore, prefetch: bool = True):
    """(index, first row, Shard) for every shard, reading the next one in the background."""
    offsets = store.shard_offsets
    if not prefetch or len(store.shards) < 2:
        for i in range(len(store.shards)):
            yield i, offsets[i], store.read_shard(i)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(store.read_shard, 0)
        for i in range(len(store.shards)):
            shard = pending.result()
            if i + 1 < len(store.shards):
                pending = pool.submit(store.read_shard, i + 1)
            yield i, offsets[i], shard


def _select(shard: Shard, first_row: int, mask: Tensor | None, batch_size: int):
    rows = torch.arange(first_row, first_row + len(shard.acts))
    if mask is not None:
        keep = mask[first_row:first_row + len(shard.acts)]
        rows = rows[keep]
    else:
        keep = slice(None)
    acts = shard.acts[keep]
    labels = shard.columns["labels"][keep] if "labels" in shard.columns else None
    meta = None
    if all(c in shard.columns for c in META):
        meta = torch.stack([shard.columns[c][keep].to(torch.int64) for c in META], 1)
    for s in range(0, len(acts), batch_size):
        yield Batch(acts=acts[s:s + batch_size], rows=rows[s:s + batch_size],
                    labels=None if labels is None else labels[s:s + batch_size],
                    meta=None if meta is None else meta[s:s + batch_size])


def stream(store: ActivationStore, masks: list[Tensor | None], batch_size: int = 8192, prefetch: bool = True):
    """Yield (k, Batch): batches of the rows selected by `masks[k]`, for each k, shard by shard."""
    if batch_size < 1:
        raise SaeaseError(f"--batch-size {batch_size}: expected a positive integer")
    for _, first_row, shard in _shards(store, prefetch):
        for k, mask in enumerate(masks):
            for batch in _select(shard, first_row, mask, batch_size):
                yield k, batch
