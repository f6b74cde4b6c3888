"""Superposition: do the five kinds find the true per-sample feature count and the true directions?

    python benchmarks/superposition.py                        # CPU-sized: d = 128, 512 features
    python benchmarks/superposition.py --d 512 --n-features 4096 --mean-active 12 --n 200000

Data (`saease synth superposition`): each vector a sparse, per-sample varying number of random
unit feature directions with random positive magnitudes, so every row has a true active count
n_active and the true directions are known. All kinds get the same linear encoder/decoder
(the paper's LLM architecture) with κ = number of true features. VAEase has no sparsity knob;
the SAE kinds' knob (λ1 for ℓ1/log with a fixed λ2, k for TopK) is swept over a grid; the run whose L0
(exact nonzeros of the code) is closest to VAEase's is reported as "matched L0", the field's axis,
and the run whose RE is closest as "matched RE" (every grid point is printed: the RE–AD tradeoff).

Reported per kind, on held-out rows: RE, AD (variance-split active count, docs/kinds.md), the mean
|AD − n_active| per sample, and feature recovery: the mean over true directions of the largest
|cosine| with any decoder row of W_dec. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import torch.nn.functional as F

from saease.recipes.reproduce import LABELS, ORDER, fmt
from saease.dictionary import Dictionary
from saease.metrics import active_count
from saease.store import write_store
from saease.synth import superposition
from saease.train.config import TrainConfig
from saease.train.trainer import train


def floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers such as 0.1,0.3") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60_000, help="vectors")
    p.add_argument("--d", type=int, default=128, help="ambient dimension (LLM-like: 512)")
    p.add_argument("--n-features", type=int, default=512, help="true feature directions (= κ)")
    p.add_argument("--mean-active", type=float, default=6.0, help="mean true features per vector")
    p.add_argument("--epochs", type=int, default=30, help="epochs per model (T0 = 10 epochs: 10, 30, 70 end a cycle)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--l1-lambdas", type=floats, default=[0.1, 0.3, 1.0, 3.0], help="SAE-ℓ1 λ1 grid")
    p.add_argument("--log-lambdas", type=floats, default=[0.01, 0.03, 0.1, 0.3], help="SAE-log λ1 grid")
    p.add_argument("--lambda2", type=float, default=0.01, help="SAE-ℓ1/log decoder weight λ2 (keeps |z| from shrinking "
                   "while W_dec grows)")
    p.add_argument("--topk-ks", type=lambda s: [int(v) for v in s.split(",")], default=[3, 6, 12, 24],
                   help="TopK k grid")
    p.add_argument("--out", default="/tmp/saease-superposition")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--data-seed", type=int, default=0,
                   help="data seed (saease.synth.superposition offsets it, so equal to --seed is safe)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    return p.parse_args(argv)


@torch.no_grad()
def score(dictionary: Dictionary, x: torch.Tensor, n_active: torch.Tensor, directions: torch.Tensor) -> dict:
    """RE, AD, mean |AD − true count| per sample, and feature recovery of one dictionary."""
    enc = dictionary.encoder_output(dictionary.scale_in(x))
    codes = dictionary.code_from(enc)
    re = (dictionary.decode(codes) - x).pow(2).sum(-1).mean().item()
    ad = active_count(dictionary.activity(enc), dictionary.ad_from_variance).double()
    cos = F.normalize(directions, dim=-1) @ F.normalize(dictionary.W_dec.detach(), dim=-1).T  # [features, κ]
    best = cos.abs().max(dim=1).values
    return {"re": re, "ad": ad.mean().item(), "true_count": n_active.double().mean().item(),
            "ad_error": (ad - n_active.double()).abs().mean().item(),
            "l0": (codes != 0).double().sum(-1).mean().item(),
            "recovery": best.mean().item(), "recovered_0.9": (best > 0.9).double().mean().item()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    x, counts, directions = superposition(args.n, args.n_features, args.d, args.mean_active, seed=args.data_seed)
    store = write_store(out / "data", x, source={"synthetic": "superposition", "seed": args.data_seed},
                        n_active=counts)
    test = store.holdout_mask(0.1, args.seed)  # the rows the trainer holds out
    x_test, n_test = x[test], counts[test]
    print(f"superposition: n = {args.n}, d = {args.d}, {args.n_features} features, mean active "
          f"{args.mean_active} (held-out true count {n_test.double().mean():.2f}), κ = {args.n_features}, "
          f"{args.epochs} epochs", flush=True)

    steps_per_epoch = -(-int(store.n_rows * 0.9) // args.batch_size)
    base = TrainConfig.flat(data=str(store.path), d_latent=args.n_features, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, t0=10 * steps_per_epoch, t_mult=2,
                       holdout=0.1, seed=args.seed, device="cpu", progress=args.progress, overwrite=True,
                       checkpoint_every=0, threads=args.threads)
    runs = [("vaease", {}), ("vae", {})]
    runs += [("sae-l1", {"lambda1": v, "lambda2": args.lambda2}) for v in args.l1_lambdas]
    runs += [("sae-log", {"lambda1": v, "lambda2": args.lambda2}) for v in args.log_lambdas]
    runs += [("sae-topk", {"k": k}) for k in args.topk_ks]
    started, grid = time.time(), []
    for kind, knob in runs:
        tag = kind + "".join(f"-{k}{v:g}" for k, v in knob.items())
        model, summary = train(base.with_(kind=kind, out=str(out / tag), **knob))
        # the trainer's own RE on its held-out rows: the same rows as x_test, so the same number
        row = {"kind": kind, "knob": knob, **score(model, x_test, n_test, directions), "trainer_re": summary["re"]}
        grid.append(row)
        print(f"  {LABELS[kind]:7s} {json.dumps(knob):18s} RE {fmt(row['re']):8s} AD {row['ad']:6.2f} "
              f"|AD − true| {row['ad_error']:5.2f}  recovery {row['recovery']:.3f}", flush=True)

    # Matched L0 (the field's axis), and matched RE beside it: per kind, the grid point whose L0
    # (RE) is closest in log scale to VAEase's. The VAE has no knob and no exact zeros.
    vaease = next(r for r in grid if r["kind"] == "vaease")
    matched = {}
    for axis in ("l0", "re"):
        matched[axis] = {}
        for kind in ORDER:
            rows = [r for r in grid if r["kind"] == kind]
            if rows:
                matched[axis][kind] = min(rows, key=lambda r: abs(math.log(max(r[axis], 1e-12) / vaease[axis])))
        print(f"\nAt matched {'L0' if axis == 'l0' else 'RE'} (closest grid point to VAEase's "
              f"{fmt(vaease[axis])}), true mean count {n_test.double().mean():.2f}:")
        print("| model | knob | L0 | RE | AD | mean abs(AD − true count) | feature recovery | directions > 0.9 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for kind, r in matched[axis].items():
            knob = ", ".join(f"{k} = {v:g}" for k, v in r["knob"].items()) or "—"
            print(f"| {LABELS[kind]} | {knob} | {r['l0']:.2f} | {fmt(r['re'])} | {r['ad']:.2f} | {r['ad_error']:.2f} | "
                  f"{r['recovery']:.3f} | {r['recovered_0.9']:.0%} |")
    summary = {"benchmark": "superposition", "n": args.n, "d": args.d, "n_features": args.n_features,
               "mean_active": args.mean_active, "epochs": args.epochs, "seconds": round(time.time() - started, 1),
               "matched_l0": matched["l0"], "matched_re": matched["re"], "grid": grid}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
