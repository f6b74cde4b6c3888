"""`saease eval DICT [--data STORE]`: RE, AD, per-label AD, L0, explained variance, dead latents.

By default the metrics are computed on the rows the dictionary held out in training when
`--data` is its training store (or is not given), and on every row of any other store.
"""

from __future__ import annotations

from pathlib import Path

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.metrics import evaluate
from saease.store import ActivationStore
from train.trainer import heldout_batches, pick_device


def add_arguments(parser) -> None:
    parser.add_argument("dictionary", help="dictionary folder written by `saease train`")
    parser.add_argument("--data", help="activation store (default: the dictionary's training store)")
    parser.add_argument("--all-rows", action="store_true", help="evaluate every row, not only the held-out ones")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--device", default=None)
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def run(args) -> dict:
    device = pick_device(args.device)
    dictionary = Dictionary.load(args.dictionary, device=device)
    training = dictionary.cfg.training
    data = args.data or dictionary.cfg.source.get("store")
    if not data:
        raise SaeaseError(f"{args.dictionary}: records no training store; pass --data STORE")
    store = ActivationStore(data)
    if store.d_in != dictionary.cfg.d_in:
        raise SaeaseError(f"{store.path}: d_in {store.d_in} but {args.dictionary} expects d_in "
                          f"{dictionary.cfg.d_in}; pass a store harvested at the dictionary's hook")
    same_store = Path(store.path).resolve() == Path(dictionary.cfg.source.get("store", "")).resolve()
    holdout = training.get("holdout", 0.0) if same_store and not args.all_rows else 0.0
    metrics = evaluate(dictionary, heldout_batches(store, holdout, training.get("holdout_seed", 0), args.batch_size),
                       progress=args.progress)
    return {"dictionary": str(args.dictionary), "store": str(store.path), "kind": dictionary.kind,
            "split": "held-out" if holdout > 0 else "all", **metrics}
