"""RE–AD Pareto frontiers on real activations: does VAEase's point lie on or below the baselines'?

Trains, on one activation store and one held-out split, with the same step budget for every kind:
SAE-ℓ1 and SAE-log over a λ1 grid, SAE-TopK over a k grid (each a curve), the VAE and VAEase
(no knob: one point each). Every model is measured on the held-out rows, RE in store units:

    re, ad          SPEC §2 (deterministic code; AD = per-sample two-means split of the activity)
    l0              nonzeros in the code the decoder sees
    re_gated        RE when only the AD-active latents are kept (a hard gate: what AD claims)
    ad_fixed        VAE kinds: latents with σ² < 0.05

Writes OUT/pareto.csv and OUT/pareto.png (RE vs AD, RE_gated vs AD, RE vs L0), prints a table and
ends with ONE JSON line: every point plus, for each baseline family, whether VAEase's point is
dominated (some point of the family has AD ≤ and RE ≤ VAEase's) and the family's frontier RE
interpolated at VAEase's AD.

    python benchmarks/realacts/extract_minilm.py --out /tmp/realacts/minilm-l3   # the store
    python benchmarks/minilm_pareto.py /tmp/realacts/minilm-l3 --steps 635 --batch-size 512

The loop mirrors train/trainer.py (Adam, CosineAnnealingWarmRestarts T0=5 T_mult=2 stepped per
batch, b_dec started at the data mean, inputs scaled to mean norm sqrt(d)) but counts steps, not
epochs, so that a budget can end at a cosine restart (5·(2^n − 1): 315, 635, 1275, 2555, 5115), and
keeps the store in memory. `--vaease-sigma-init` tries the initialisation this study looked at
(see docs/realacts.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch

from saease.dictionary import Dictionary, make_config
from saease.errors import SaeaseError
from saease.metrics import active_count, evaluate, tensor_batches, variance_split
from saease.store import ActivationStore, holdout_mask


def train_point(kind: str, x_train: torch.Tensor, *, steps: int, batch_size: int, lr: float, d_latent: int,
                seed: int, **dict_kw) -> tuple[Dictionary, float]:
    torch.manual_seed(seed)
    scale = math.sqrt(x_train.shape[1]) / x_train[:65536].norm(dim=-1).mean().item()
    cfg = make_config(kind, d_in=x_train.shape[1], d_latent=d_latent, input_scale=scale, **dict_kw)
    model = Dictionary.build(cfg).train()
    gen = torch.Generator().manual_seed(seed)
    order, at = torch.randperm(len(x_train), generator=gen), 0
    with torch.no_grad():
        model.b_dec.copy_(model.scale_in(x_train[order[:batch_size]]).mean(0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=5, T_mult=2)
    noise = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(steps):
        if at + batch_size > len(order):
            order, at = torch.randperm(len(x_train), generator=gen), 0
        loss = model.loss(x_train[order[at:at + batch_size]], generator=noise)["loss"]
        at += batch_size
        if not torch.isfinite(loss):
            raise SaeaseError(f"{kind}: loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval(), time.time() - started


@torch.no_grad()
def measure(model: Dictionary, x_test: torch.Tensor) -> dict:
    out = evaluate(model, tensor_batches(x_test), progress=False)
    out.pop("ad_per_label", None)
    gated_sq, n = 0.0, 0
    for xb, _ in tensor_batches(x_test):
        enc = model.encoder_output(model.scale_in(xb))
        activity = model.activity(enc)
        if model.ad_from_variance:  # small log σ² = active
            n_active, key = variance_split(activity), activity
        else:  # large log|z| = active; zeros (−inf) never
            n_active, key = active_count(activity, False), torch.where(torch.isfinite(activity), -activity, torch.inf)
        gate = key.argsort(-1).argsort(-1) < n_active[:, None]
        gated_sq += (xb - model.decode(model.code_from(enc) * gate)).pow(2).sum().item()
        n += len(xb)
    out["re_gated"] = gated_sq / n
    return out


def frontier_at(points: list[dict], ad: float) -> float | None:
    """The family's Pareto frontier (lower-left hull in AD, RE), linearly interpolated at `ad`."""
    pts = sorted((p["ad"], p["re"]) for p in points)
    front, best = [], math.inf
    for a, r in pts:
        if r < best:
            front.append((a, r))
            best = r
    if not front or ad < front[0][0]:
        return None  # VAEase is sparser than every point of the family
    for (a0, r0), (a1, r1) in zip(front, front[1:]):
        if a0 <= ad <= a1:
            return r0 + (r1 - r0) * (ad - a0) / (a1 - a0) if a1 > a0 else min(r0, r1)
    return front[-1][1]


def parse_grid(text: str, cast) -> list:
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SaeaseError(f"grid {text!r}: expected comma-separated numbers such as 0.3,1,3") from None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="RE–AD frontiers of the five kinds on one store")
    p.add_argument("store", help="activation store folder (e.g. /tmp/realacts/minilm-l3)")
    p.add_argument("--out", default="benchmarks/out/minilm_pareto")
    p.add_argument("--steps", type=int, default=635, help="optimizer steps per model (end at 5·(2^n−1))")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--d-latent", type=int, default=300)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l1-grid", default="1,3,10", help="λ1 values for sae-l1 (λ2 = --lambda2)")
    p.add_argument("--log-grid", default="0.01,0.03,0.1", help="λ1 values for sae-log")
    p.add_argument("--lambda2", type=float, default=0.2)
    p.add_argument("--k-grid", default="8,16,30,60", help="k values for sae-topk")
    p.add_argument("--vaease-sigma-init", type=float, default=None, help="σ² at init (core: 0.5)")
    p.add_argument("--only", default=None, help="comma-separated kinds to run (default: all five)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1:
        raise SaeaseError("--steps and --batch-size must be positive integers")
    if a.vaease_sigma_init is not None and not 0 < a.vaease_sigma_init < 1:
        raise SaeaseError(f"--vaease-sigma-init {a.vaease_sigma_init}: expected a number in (0, 1)")
    torch.set_num_threads(a.threads)

    store = ActivationStore(a.store)
    x = store.read_all().float()
    test = holdout_mask(store.n_rows, a.holdout, a.seed)
    x_train, x_test = x[~test].contiguous(), x[test].contiguous()
    common = dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr, d_latent=a.d_latent, seed=a.seed)
    plan = ([("sae-l1", f"λ1={v:g}", dict(lambda1=v, lambda2=a.lambda2)) for v in parse_grid(a.l1_grid, float)]
            + [("sae-log", f"λ1={v:g}", dict(lambda1=v, lambda2=a.lambda2)) for v in parse_grid(a.log_grid, float)]
            + [("sae-topk", f"k={v}", dict(k=v)) for v in parse_grid(a.k_grid, int)]
            + [("vae", "-", {}),
               ("vaease", "-", {} if a.vaease_sigma_init is None else {"sigma_init": a.vaease_sigma_init})])
    if a.only:
        wanted = set(a.only.split(","))
        plan = [row for row in plan if row[0] in wanted]

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'kind':9} {'knob':9} {'RE':>7} {'AD':>6} {'L0':>6} {'RE_gated':>9} {'EV':>6} {'dead':>5} {'sec':>6}",
          file=sys.stderr)
    for kind, knob, kw in plan:
        model, sec = train_point(kind, x_train, **common, **kw)
        m = measure(model, x_test)
        row = {"kind": kind, "knob": knob, "re": m["re"], "ad": m["ad"], "l0": m["l0"], "re_gated": m["re_gated"],
               "ad_fixed": m.get("ad_fixed"), "explained_variance": m["explained_variance"],
               "dead_fraction": m["dead_fraction"], "train_seconds": round(sec, 1)}
        rows.append(row)
        print(f"{kind:9} {knob:9} {row['re']:7.2f} {row['ad']:6.2f} {row['l0']:6.1f} {row['re_gated']:9.2f} "
              f"{row['explained_variance']:6.3f} {row['dead_fraction']:5.2f} {sec:6.0f}", file=sys.stderr, flush=True)

    with open(out / "pareto.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    verdict = {}
    vaease = next((r for r in rows if r["kind"] == "vaease"), None)
    if vaease:
        for fam in ("sae-l1", "sae-log", "sae-topk", "vae"):
            pts = [r for r in rows if r["kind"] == fam]
            if pts:
                verdict[fam] = {
                    "dominated": any(p["ad"] <= vaease["ad"] and p["re"] <= vaease["re"] for p in pts),
                    "frontier_re_at_vaease_ad": frontier_at(pts, vaease["ad"]),
                    "dominated_gated": any(p["ad"] <= vaease["ad"] and p["re_gated"] <= vaease["re_gated"] for p in pts),
                }
    plot(rows, out / "pareto.png")
    summary = {"store": str(store.path), "n_train": len(x_train), "n_test": len(x_test), **common,
               "vaease_options": {"sigma_init": a.vaease_sigma_init},
               "points": rows, "vaease_vs": verdict,
               "target_met": bool(verdict) and not any(v["dominated"] for v in verdict.values()),
               "csv": str(out / "pareto.csv"), "png": str(out / "pareto.png")}
    print(json.dumps(summary))
    return summary


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    style = {"sae-l1": "o-", "sae-log": "s-", "sae-topk": "^-", "vae": "D", "vaease": "*"}
    for ax, (xkey, ykey, title) in zip(axes, [("ad", "re", "RE vs AD (SPEC §2)"),
                                              ("ad", "re_gated", "RE with only the AD latents vs AD"),
                                              ("l0", "re", "RE vs L0 (nonzeros seen by the decoder)")]):
        for kind, fmt in style.items():
            pts = sorted((r[xkey], r[ykey]) for r in rows if r["kind"] == kind)
            if pts:
                ax.plot(*zip(*pts), fmt, label=kind, markersize=14 if kind == "vaease" else 6)
        ax.set_xlabel(xkey.upper())
        ax.set_ylabel(ykey.replace("_", " ").upper())
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except SaeaseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
