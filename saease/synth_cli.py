"""`saease synth subspaces|manifolds|superposition --out STORE`: the synthetic datasets as stores."""

from __future__ import annotations

import argparse

from saease import synth
from saease.errors import SaeaseError
from saease.store import write_store


def int_list(text: str) -> list[int]:
    try:
        dims = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers such as 4,4,4") from None
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["subspaces", "manifolds", "superposition"],
                        help="which synthetic dataset")
    parser.add_argument("--out", required=True, help="store folder to write")
    parser.add_argument("--n", type=int, default=None,
                        help="points (subspaces: 500000; superposition: 200000)")
    parser.add_argument("--n-per", type=int, default=200_000, help="points per manifold (manifolds)")
    parser.add_argument("--dims", type=int_list, default=None,
                        help="manifold dimensions (subspaces: 4,4,4; manifolds: 5,5,10,10)")
    parser.add_argument("--ambient", type=int, default=None,
                        help="ambient dimension (subspaces: 40; manifolds: 100; superposition: 512)")
    parser.add_argument("--n-features", type=int, default=4096, help="true feature directions (superposition)")
    parser.add_argument("--mean-active", type=float, default=12.0,
                        help="mean features per vector (superposition)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> dict:
    if (args.n is not None and args.n < 1) or args.n_per < 1:
        raise SaeaseError(f"--n {args.n} / --n-per {args.n_per}: expected positive integers")
    if args.dataset == "subspaces":
        dims = args.dims or [4, 4, 4]
        x, labels = synth.subspaces(args.n or 500_000, dims, args.ambient or 40, args.seed)
        extra, params = {}, {"n": len(x), "dims": dims}
    elif args.dataset == "manifolds":
        dims = args.dims or [5, 5, 10, 10]
        x, labels = synth.manifolds(args.n_per, dims, args.ambient or 100, args.seed)
        extra, params = {}, {"n_per": args.n_per, "dims": dims}
    else:
        x, counts, directions = synth.superposition(args.n or 200_000, args.n_features, args.ambient or 512,
                                                    args.mean_active, args.seed)
        labels, extra = None, {"n_active": counts}
        params = {"n": len(x), "n_features": args.n_features, "mean_active": args.mean_active}
    source = {"synthetic": args.dataset, "seed": args.seed, "ambient": x.shape[1], **params}
    store = write_store(args.out, x, labels=labels, source=source, **extra)
    if args.dataset == "superposition":
        from saease.store import atomic_write_bytes
        import safetensors.torch
        atomic_write_bytes(store.path / "features.safetensors", safetensors.torch.save({"directions": directions}))
    return {"store": str(store.path), "n": store.n_rows, "d_in": store.d_in, **params}
