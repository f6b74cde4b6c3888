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
from pathlib import Path


from saease.recipes.reproduce import LABELS, ad_table, heldout_rows, per_sample_ad, plot_masking_curves
from saease.errors import SaeaseError
from saease.synth_cli import int_list

KINDS = ("vaease", "vae")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="saease-demo", help="folder for the store, dictionaries and plot")
    parser.add_argument("--n", type=int, default=60_000, help="points")
    parser.add_argument("--epochs", type=int, default=30,
                        help="training epochs per model (cosine restarts every 10, 20, 40 epochs: 10, 30, 70 end a cycle)")
    parser.add_argument("--dims", type=int_list, default=[2, 4, 6], help="subspace dimensions")
    parser.add_argument("--ambient", type=int, default=40, help="ambient dimension")
    parser.add_argument("--d-latent", type=int, default=20, help="latent width κ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for a model this small)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def run(args) -> dict:
    if args.n < 100 or args.epochs < 1:
        raise SaeaseError(f"--n {args.n} / --epochs {args.epochs}: expected at least 100 points and 1 epoch")
    if args.threads < 1:
        raise SaeaseError(f"--threads {args.threads}: expected a positive integer")
    from saease.train.devices import torch_threads

    with torch_threads(args.threads):
        return _demo(args)


def _demo(args) -> dict:
    from saease.dictionary import Dictionary
    from saease.metrics import masking_curve
    from saease.store import write_store
    from saease.synth import subspaces
    from saease.train.config import TrainConfig
    from saease.train.trainer import train

    started = time.time()
    out = Path(args.out)
    x, labels = subspaces(args.n, args.dims, args.ambient, seed=args.seed)
    store = write_store(out / "data", x, labels=labels,
                        source={"synthetic": "subspaces", "dims": args.dims, "seed": args.seed})

    # The paper's linear-subspace settings (docs/reproduce.md), at a laptop-sized scale; T0 = 10 epochs.
    steps_per_epoch = -(-int(store.n_rows * 0.9) // 1024)
    base = TrainConfig.flat(data=str(store.path), d_latent=args.d_latent, encoder_layers=4, epochs=args.epochs,
                       batch_size=1024, lr=0.01, t0=10 * steps_per_epoch, t_mult=2, normalize=False,
                       seed=args.seed, device="cpu", progress=args.progress, overwrite=True,
                       checkpoint_every=0, threads=args.threads)
    results, curves = {}, {}
    for kind in KINDS:
        model, results[kind] = train(base.with_(kind=kind, out=str(out / kind)))
        results[kind]["ad_per_label_per_sample"] = per_sample_ad(model)
    test = heldout_rows(out / "vaease")
    for kind in KINDS:
        curves[kind] = masking_curve(Dictionary.load(out / kind), test)
    plot = plot_masking_curves(curves, out / "masking.png", f"masking curves, subspaces {args.dims}")

    table = ad_table(results, args.dims, None)
    as_json = getattr(args, "json", False)
    if not as_json:  # the dispatcher prints the rest of the summary
        print(f"Active dimensions per subspace (true dimensions {args.dims}), held-out points:\n{table}\n")
    return {
        "out": str(out), "plot": plot, **({"table": table} if as_json else {}), "dims": args.dims, "n": args.n, "epochs": args.epochs,
        "seconds": round(time.time() - started, 1),
        "results": {LABELS[k]: {"ad_per_manifold": [r["ad_per_label"][str(i)] for i in range(len(args.dims))],
                                "ad_per_manifold_per_sample": [r["ad_per_label_per_sample"][str(i)] for i in range(len(args.dims))],
                                "ad": r["ad"], "re": r["re"], "dictionary": r["out"]} for k, r in results.items()},
    }
