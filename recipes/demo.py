"""`saease demo`: the two-minute offline quickstart — VAEase adapts its sparsity per manifold, a VAE can't.

    make a labelled union of random linear subspaces  →  train VAEase and a VAE on it
    →  print active dimensions per manifold  →  plot the latent masking curves

Nothing is downloaded. With the defaults (60,000 points on subspaces of dimensions 2, 4 and 6 in
R^40, κ = 20, 30 epochs) it takes well under a minute on one CPU core: VAEase finds each
subspace's own dimension, while the VAE keeps one fixed set of latents active for every input.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from saease.cli import dataclass_args, option
from saease.recipes.reproduce import LABELS, ad_table, heldout_rows, per_sample_ad, plot_masking_curves
from saease.errors import SaeaseError
from saease.synth_cli import int_list

KINDS = ("vaease", "vae")


@dataclass
class DemoConfig:
    """`saease demo`'s flags."""

    out: str = option("saease-demo", "folder for the store, dictionaries and plot")
    n: int = option(60_000, "points")
    epochs: int = option(30, "training epochs per model (cosine restarts every 10, 20, 40 epochs: 10, 30, 70 "
                             "end a cycle)")
    dims: list[int] = option([2, 4, 6], "subspace dimensions", type=int_list)
    ambient: int = option(40, "ambient dimension")
    d_latent: int = option(20, "latent width κ")
    seed: int = option(0, "seed for the data, init and training")
    threads: int = option(1, "torch CPU threads (1 is fastest for a model this small)")
    progress: bool = option(True, "show training progress bars")


Config = DemoConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dataclass_args(parser, DemoConfig)


def run(cfg: DemoConfig) -> dict:
    if cfg.n < 100 or cfg.epochs < 1:
        raise SaeaseError(f"--n {cfg.n} / --epochs {cfg.epochs}: expected at least 100 points and 1 epoch")
    if cfg.threads < 1:
        raise SaeaseError(f"--threads {cfg.threads}: expected a positive integer")
    from saease.train.devices import torch_threads

    with torch_threads(cfg.threads):
        return _demo(cfg)


def show(cfg: DemoConfig, summary: dict) -> dict:
    """The table, then the rest of the summary (without --json)."""
    print(f"Active dimensions per subspace (true dimensions {summary['dims']}), held-out points:\n"
          f"{summary['table']}\n")
    return {k: v for k, v in summary.items() if k != "table"}


def _demo(cfg: DemoConfig) -> dict:
    from saease.dictionary import Dictionary
    from saease.metrics import masking_curve
    from saease.store import write_store
    from saease.synth import subspaces
    from saease.train.config import TrainConfig
    from saease.train.trainer import train

    started = time.time()
    out = Path(cfg.out)
    x, labels = subspaces(cfg.n, cfg.dims, cfg.ambient, seed=cfg.seed)
    store = write_store(out / "data", x, labels=labels,
                        source={"synthetic": "subspaces", "dims": cfg.dims, "seed": cfg.seed})

    # The paper's linear-subspace settings (docs/reproduce.md), at a laptop-sized scale; T0 = 10 epochs.
    steps_per_epoch = -(-int(store.n_rows * 0.9) // 1024)
    base = TrainConfig.flat(data=str(store.path), d_latent=cfg.d_latent, encoder_layers=4, epochs=cfg.epochs,
                       batch_size=1024, lr=0.01, t0=10 * steps_per_epoch, t_mult=2, normalize=False,
                       seed=cfg.seed, device="cpu", progress=cfg.progress, overwrite=True,
                       checkpoint_every=0, threads=cfg.threads)
    results, curves = {}, {}
    for kind in KINDS:
        model, results[kind] = train(base.with_(kind=kind, out=str(out / kind)))
        results[kind]["ad_per_label_per_sample"] = per_sample_ad(model)
    test = heldout_rows(out / "vaease")
    for kind in KINDS:
        curves[kind] = masking_curve(Dictionary.load(out / kind), test)
    plot = plot_masking_curves(curves, out / "masking.png", f"masking curves, subspaces {cfg.dims}")

    return {
        "out": str(out), "plot": plot, "table": ad_table(results, cfg.dims, None), "dims": cfg.dims, "n": cfg.n,
        "epochs": cfg.epochs,
        "seconds": round(time.time() - started, 1),
        "results": {LABELS[k]: {"ad_per_manifold": [r["ad_per_label"][str(i)] for i in range(len(cfg.dims))],
                                "ad_per_manifold_per_sample": [r["ad_per_label_per_sample"][str(i)] for i in range(len(cfg.dims))],
                                "ad": r["ad"], "re": r["re"], "dictionary": r["out"]} for k, r in results.items()},
    }
