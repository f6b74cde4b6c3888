"""RE and EV against L0 on real activations: is VAEase's point on or below each SAE family's frontier?

Every model is trained by the real trainer (`saease.train.trainer.train`) on one activation store,
with one held-out split and one step budget for every kind:

    sae-topk, sae-batchtopk, sae-matryoshka   a k grid            (--k-grid)
    sae-jumprelu                              a grid of initial thresholds θ₀ (--jumprelu-grid) at
                                              l0_coef --jumprelu-l0-coef: at these budgets θ₀, not
                                              the penalty, sets its L0 (the log-threshold moves
                                              ~lr per step, so θ₀ = 0.01 stays dense: L0 ≈ κ)
    sae-l1                                    a λ1 grid           (--l1-grid)
    vaease                                    its defaults: one point (no knob)

and measured on the trainer's held-out rows (its summary): RE (store units), EV, L0 = the exact
nonzeros of the code the decoder sees, AD (docs/kinds.md) beside it, dead latents. The comparison is on
the L0 axis: for each family its Pareto frontier of RE against L0 (lower-left hull) is linearly
interpolated at VAEase's L0, and VAEase is "on or below" it when its RE is ≤ that value (the
same for EV, higher is better).

Writes OUT/frontier.csv and OUT/frontier.png (RE vs L0, EV vs L0), prints a table and ends with
ONE JSON line: every point, and per family the frontier at VAEase's L0 and the verdict.

    saease harvest --model $MINILM --layer 2 --dataset $PLAYS --context-size 128 --skip-special \\
        --shuffle-windows --max-rows 100000 --out /tmp/realacts/minilm-l3      # the store
    python benchmarks/minilm_pareto.py /tmp/realacts/minilm-l3 --steps 1275 --batch-size 512

Only public settings are passed to the trainer (TrainConfig.flat), so a change to a kind's
defaults shows up here unchanged. A budget ending at a cosine restart (5·(2^n − 1) steps: 315,
635, 1275, 2555) ends at the schedule's low point.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from saease.errors import SaeaseError

FAMILIES = ("sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-matryoshka", "sae-l1")


def train_point(kind: str, store: str, out: Path, *, steps: int, batch_size: int, lr: float, d_latent: int,
                seed: int, holdout: float, threads: int, **knobs) -> dict:
    """One dictionary through the real trainer; returns its held-out summary (re, l0, ad, EV, …)."""
    from saease.store import ActivationStore
    from saease.train.config import TrainConfig
    from saease.train.trainer import train

    # Plan just enough epochs for `steps`: schedules (VAEase's KL warm-up) count progress against
    # the epochs planned, and --max-steps only cuts the run short, so a huge --epochs would keep
    # the warm-up from ever finishing.
    n_train = int((~ActivationStore(store).holdout_mask(holdout, seed)).sum())
    epochs = math.ceil(steps / math.ceil(n_train / batch_size))
    cfg = TrainConfig.flat(data=str(store), out=str(out), kind=kind, d_latent=d_latent, epochs=epochs,
                           max_steps=steps, batch_size=batch_size, lr=lr, seed=seed, holdout=holdout,
                           progress=False, threads=threads, overwrite=True, checkpoint_every=0, **knobs)
    started = time.time()
    _, summary = train(cfg)
    summary["wall_seconds"] = round(time.time() - started, 1)
    return summary


def frontier_at(points: list[dict], x: float, xkey: str = "l0", ykey: str = "re",
                higher_is_better: bool = False) -> float | None:
    """The family's Pareto frontier in (xkey, ykey) — sparser and better — linearly interpolated
    at `x`; past its densest point the frontier stays at its best value; None when `x` is sparser
    than every point (nothing to compare with)."""
    sign = -1.0 if higher_is_better else 1.0
    pts = sorted((p[xkey], sign * p[ykey]) for p in points
                 if p.get(ykey) is not None and math.isfinite(p[ykey]))
    front, best = [], math.inf
    for a, r in pts:
        if r < best:
            front.append((a, r))
            best = r
    if not front or x < front[0][0]:
        return None
    for (a0, r0), (a1, r1) in zip(front, front[1:]):
        if a0 <= x <= a1:
            y = r0 + (r1 - r0) * (x - a0) / (a1 - a0) if a1 > a0 else min(r0, r1)
            return sign * y
    return sign * front[-1][1]


def verdicts(rows: list[dict], families, metrics: dict[str, bool], target: str = "vaease") -> dict:
    """Per family: its frontier of each metric at the target's L0 and whether the target is on or
    better than it (None when the target is sparser than every point of the family)."""
    me = next((r for r in rows if r["kind"] == target), None)
    out = {}
    if me is None:
        return out
    for fam in families:
        pts = [r for r in rows if r["kind"] == fam]
        if not pts:
            continue
        v = {"l0_range": [min(p["l0"] for p in pts), max(p["l0"] for p in pts)]}
        for key, higher in metrics.items():
            f = frontier_at(pts, me["l0"], "l0", key, higher)
            v[f"frontier_{key}_at_vaease_l0"] = f
            v[f"vaease_{key}_ok"] = None if f is None else bool(me[key] >= f if higher else me[key] <= f)
            if f is not None and f != 0:
                v[f"vaease_{key}_vs_frontier_pct"] = round(100 * (me[key] - f) / abs(f), 2)
        out[fam] = v
    return out


def parse_grid(text: str, cast) -> list:
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SaeaseError(f"grid {text!r}: expected comma-separated numbers such as 0.3,1,3") from None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="RE/EV–L0 frontiers of the SAE families and VAEase's point on one store")
    p.add_argument("store", help="activation store folder (e.g. /tmp/realacts/minilm-l3)")
    p.add_argument("--out", default="benchmarks/out/minilm_pareto")
    p.add_argument("--steps", type=int, default=1275, help="optimizer steps per model (end at 5·(2^n−1))")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--d-latent", type=int, default=384)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k-grid", default="8,24,64,120", help="k for sae-topk, sae-batchtopk, sae-matryoshka")
    p.add_argument("--jumprelu-grid", default="0.3,0.6,1.2,2.4", help="threshold_init θ₀ values for sae-jumprelu")
    p.add_argument("--jumprelu-l0-coef", type=float, default=1.0, help="l0_coef of every sae-jumprelu point")
    p.add_argument("--l1-grid", default="0.4,0.8,1.5,3", help="λ1 values for sae-l1")
    p.add_argument("--vaease-sigma-init", type=float, default=None, help="σ² at init (default: the kind's own)")
    p.add_argument("--only", default=None, help="comma-separated kinds to run (default: the five families + vaease)")
    p.add_argument("--keep", action="store_true", help="keep the dictionaries under OUT/dictionaries")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1:
        raise SaeaseError("--steps and --batch-size must be positive integers")
    if a.vaease_sigma_init is not None and not 0 < a.vaease_sigma_init < 1:
        raise SaeaseError(f"--vaease-sigma-init {a.vaease_sigma_init}: expected a number in (0, 1)")
    ks = parse_grid(a.k_grid, int)
    plan = ([(kind, f"k={v}", dict(k=v)) for kind in ("sae-topk", "sae-batchtopk", "sae-matryoshka") for v in ks]
            + [("sae-jumprelu", f"θ0={v:g}", dict(threshold_init=v, l0_coef=a.jumprelu_l0_coef))
               for v in parse_grid(a.jumprelu_grid, float)]
            + [("sae-l1", f"λ1={v:g}", dict(lambda1=v)) for v in parse_grid(a.l1_grid, float)]
            + [("vaease", "defaults", {} if a.vaease_sigma_init is None else {"sigma_init": a.vaease_sigma_init})])
    if a.only:
        wanted = set(a.only.split(","))
        plan = [row for row in plan if row[0] in wanted]

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr, d_latent=a.d_latent, seed=a.seed,
                  holdout=a.holdout, threads=a.threads)
    scratch = tempfile.TemporaryDirectory(prefix="minilm_pareto-") if not a.keep else None
    dicts = Path(scratch.name) if scratch else out / "dictionaries"
    rows, started = [], time.time()
    print(f"{'kind':15} {'knob':14} {'RE':>8} {'EV':>6} {'L0':>7} {'AD':>7} {'dead':>5} {'sec':>5}",
          file=sys.stderr)
    try:
        for i, (kind, knob, kw) in enumerate(plan):
            s = train_point(kind, a.store, dicts / f"{i:02d}-{kind}", **common, **kw)
            row = {"kind": kind, "knob": knob, "re": s["re"], "explained_variance": s["explained_variance"],
                   "l0": s["l0"], "ad": s["ad"], "ad_fixed": s.get("ad_fixed"), "dead_fraction": s["dead_fraction"],
                   "steps": s["steps"], "train_seconds": s["train_seconds"]}
            rows.append(row)
            print(f"{kind:15} {knob:14} {row['re']:8.3f} {row['explained_variance']:6.3f} {row['l0']:7.1f} "
                  f"{row['ad']:7.2f} {row['dead_fraction']:5.2f} {s['wall_seconds']:5.0f}", file=sys.stderr, flush=True)
    finally:
        if scratch:
            scratch.cleanup()

    with open(out / "frontier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    verdict = verdicts(rows, FAMILIES, {"re": False, "explained_variance": True})
    compared = [v["vaease_re_ok"] for v in verdict.values() if v["vaease_re_ok"] is not None]
    plot(rows, out / "frontier.png")
    summary = {"benchmark": "minilm_pareto", "store": str(a.store), **common,
               "vaease_options": {"sigma_init": a.vaease_sigma_init}, "points": rows, "vaease_vs": verdict,
               "target_met": bool(compared) and all(compared), "families_compared": len(compared),
               "seconds": round(time.time() - started, 1),
               "csv": str(out / "frontier.csv"), "png": str(out / "frontier.png")}
    print(json.dumps(summary))
    return summary


STYLE = {"sae-topk": "^-", "sae-batchtopk": "v-", "sae-matryoshka": "s-", "sae-jumprelu": "o-", "sae-l1": "x-",
         "sae-log": "d-", "sae-gated": "p-", "vae": "D", "vaease": "*"}


def plot(rows: list[dict], path: Path, panels=(("re", "RE (store units)"), ("explained_variance", "EV"))) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5))
    for ax, (ykey, label) in zip(axes, panels):
        for kind, fmt in STYLE.items():
            pts = sorted((r["l0"], r[ykey]) for r in rows if r["kind"] == kind and r.get(ykey) is not None)
            if pts:
                ax.plot(*zip(*pts), fmt, label=kind, markersize=14 if kind == "vaease" else 6)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (nonzeros the decoder sees)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except SaeaseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
