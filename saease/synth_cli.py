"""`saease synth subspaces|manifolds|superposition --out STORE`: the synthetic datasets as stores."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from saease import synth
from saease.cli import dataclass_args, option
from saease.errors import SaeaseError
from saease.store import write_store


def int_list(text: str) -> list[int]:
    try:
        dims = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers such as 4,4,4") from None
    return dims


@dataclass
class SynthConfig:
    """`saease synth`'s flags."""

    dataset: Literal["subspaces", "manifolds", "superposition"] = option(doc="which synthetic dataset")
    out: str = option(doc="store folder to write")
    n: int | None = option(None, "points (subspaces: 500000; superposition: 200000)")
    n_per: int = option(200_000, "points per manifold (manifolds)")
    dims: list[int] | None = option(None, "manifold dimensions (subspaces: 4,4,4; manifolds: 5,5,10,10)",
                                    type=int_list)
    ambient: int | None = option(None, "ambient dimension (subspaces: 40; manifolds: 100; superposition: 512)")
    n_features: int = option(4096, "true feature directions (superposition)")
    mean_active: float = option(12.0, "mean features per vector (superposition)")
    seed: int = option(0, "random seed")


Config = SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dataclass_args(parser, SynthConfig, positional=("dataset",))


def run(cfg: SynthConfig) -> dict:
    if (cfg.n is not None and cfg.n < 1) or cfg.n_per < 1:
        raise SaeaseError(f"--n {cfg.n} / --n-per {cfg.n_per}: expected positive integers")
    if cfg.dataset == "subspaces":
        dims = cfg.dims or [4, 4, 4]
        x, labels = synth.subspaces(cfg.n or 500_000, dims, cfg.ambient or 40, cfg.seed)
        extra, params = {}, {"n": len(x), "dims": dims}
    elif cfg.dataset == "manifolds":
        dims = cfg.dims or [5, 5, 10, 10]
        x, labels = synth.manifolds(cfg.n_per, dims, cfg.ambient or 100, cfg.seed)
        extra, params = {}, {"n_per": cfg.n_per, "dims": dims}
    else:
        x, counts, directions = synth.superposition(cfg.n or 200_000, cfg.n_features, cfg.ambient or 512,
                                                    cfg.mean_active, cfg.seed)
        labels, extra = None, {"n_active": counts}
        params = {"n": len(x), "n_features": cfg.n_features, "mean_active": cfg.mean_active}
    source = {"synthetic": cfg.dataset, "seed": cfg.seed, "ambient": x.shape[1], **params}
    store = write_store(cfg.out, x, labels=labels, source=source, **extra)
    if cfg.dataset == "superposition":
        from saease.store import atomic_write_bytes
        import safetensors.torch
        atomic_write_bytes(store.path / "features.safetensors", safetensors.torch.save({"directions": directions}))
    return {"store": str(store.path), "n": store.n_rows, "d_in": store.d_in, **params}
