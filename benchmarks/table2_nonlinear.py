"""Table 2, nonlinear half: the five kinds on a union of nonlinear manifolds (paper Sec. 5.1).

    python benchmarks/table2_nonlinear.py                                   # the paper's scale (GPU-sized)
    python benchmarks/table2_nonlinear.py --n-per 25000 --epochs 30 --encoder-hidden 120   # CPU-sized

Paper settings (docs/reproduce.md, App. D.2): 4 manifolds of dimensions 5, 5, 10, 10 in R^100, 200,000
points each (each the image of N(0, I_r) under a random 2-layer leaky-ReLU MLP); κ = 60; decoder a
2-layer MLP with leaky-ReLU 0.2 (`decoder_layers=2`); encoder 3 residual blocks of 3 linear layers,
hidden 8κ (`encoder="residual"`, `encoder_layers=3`); 310 epochs, batch 1024, Adam lr 0.005,
CosineAnnealingWarmRestarts T0 = 10 epochs; SAE-ℓ1 λ = (5e-4, 1e-5), SAE-log λ = (5e-6, 1e-5),
TopK k = 10 (the largest manifold). Prints per-manifold AD and RE per kind beside the paper's
row, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


from saease.recipes.reproduce import PAPER_TABLE2, ad_table, per_manifold_results, kinds_arg, train_kinds
from saease.store import write_store
from saease.synth import manifolds
from saease.synth_cli import int_list
from saease.train.config import TrainConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-per", type=int, default=200_000, help="points per manifold (paper: 200000)")
    p.add_argument("--epochs", type=int, default=310, help="epochs (paper: 310)")
    p.add_argument("--dims", type=int_list, default=[5, 5, 10, 10], help="manifold dimensions (paper: 5,5,10,10)")
    p.add_argument("--ambient", type=int, default=100, help="ambient dimension d (paper: 100)")
    p.add_argument("--d-latent", type=int, default=60, help="κ (paper: 60)")
    p.add_argument("--encoder-hidden", type=int, default=None,
                   help="residual blocks' width (paper: 8κ = 480; smaller trains ~16× faster on a CPU at 2κ)")
    p.add_argument("--kinds", type=kinds_arg, default=kinds_arg("all"), help="'all' or e.g. vaease,vae")
    p.add_argument("--t0-epochs", type=float, default=10, help="cosine restart period T0, in epochs (paper: 10)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", default="/tmp/saease-table2-nonlinear", help="folder for the store and dictionaries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default=None)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    return p.parse_args(argv)


def configs(args, store) -> dict[str, TrainConfig]:
    steps_per_epoch = -(-int(store.n_rows * 0.9) // args.batch_size)
    base = TrainConfig.flat(data=str(store.path), d_latent=args.d_latent, encoder="residual", encoder_layers=3,
                       encoder_hidden=args.encoder_hidden, decoder_layers=2, epochs=args.epochs, batch_size=args.batch_size, lr=0.005,
                       t0=max(1, round(args.t0_epochs * steps_per_epoch)), t_mult=2, normalize=False,
                       holdout=0.1, seed=args.seed, device=args.device, progress=args.progress,
                       overwrite=True, checkpoint_every=0, threads=args.threads)
    per_kind = {"vaease": {}, "vae": {}, "sae-l1": dict(lambda1=5e-4, lambda2=1e-5),
                "sae-log": dict(lambda1=5e-6, lambda2=1e-5), "sae-topk": dict(k=max(args.dims))}
    return {k: base.with_(kind=k, out=str(Path(args.out) / k), **per_kind[k]) for k in args.kinds}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x, labels = manifolds(args.n_per, args.dims, args.ambient, seed=args.seed)
    store = write_store(Path(args.out) / "data", x, labels=labels,
                        source={"synthetic": "manifolds", "dims": args.dims, "seed": args.seed})
    hidden = args.encoder_hidden or 8 * args.d_latent
    print(f"Table 2 (nonlinear): {args.n_per} points per manifold, dims {args.dims} in R^{args.ambient}, "
          f"κ = {args.d_latent}, residual width {hidden}, {args.epochs} epochs; mean ‖x‖² = "
          f"{x.pow(2).sum(-1).mean():.3g}", flush=True)
    started = time.time()
    results = train_kinds(configs(args, store))
    paper = PAPER_TABLE2["nonlinear"] if args.dims == [5, 5, 10, 10] and args.ambient == 100 else None
    print(ad_table(results, args.dims, paper))
    summary = {"benchmark": "table2_nonlinear", "n_per": args.n_per, "epochs": args.epochs, "dims": args.dims,
               "ambient": args.ambient, "d_latent": args.d_latent, "encoder_hidden": hidden,
               "seconds": round(time.time() - started, 1),
               "results": per_manifold_results(results, len(args.dims)),
               "paper": paper}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
