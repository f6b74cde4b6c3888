"""Next-token loss recovered against L0 on a decoder with a real loss: every kind, one budget.

The model is the repository's plays model (a 4-block GPT-NeoX, the Pythia architecture, trained on
Shakespeare's plays; docs/quickstart.md). The pipeline reuses the quick start's own stages:

    harvest   blocks.2.hook_resid_post (the middle block) over the three training plays of
              recipes/assets/plays-text/harvest → OUT/activations/train, and over the two held-out
              plays → OUT/activations/heldout              (recipes.quickstart._harvest)
    train     every kind through the real trainer (`saease.train.trainer.train`), the same steps,
              batch, lr and κ for all; 2–3 knob settings spanning L0 per SAE family, the VAE and
              VAEase at their defaults (one point each)
    eval      `saease eval` on the held-out plays: RE, EV, L0 (exact nonzeros of the code the
              decoder sees), AD, and next-token loss recovered with each dictionary spliced in
              at the hook (on --loss-seqs held-out 128-token windows)

Then, per family, the Pareto frontier of loss recovered against L0 (sparser and higher), linearly
interpolated at VAEase's L0; VAEase is "on or above" it when its loss recovered is ≥ that value
(the same for RE, lower is better, and EV). Writes OUT/frontier.csv and OUT/frontier.png and ends
with ONE JSON line.

    python benchmarks/lm_frontier.py --out /tmp/lm_frontier                 # ~131k rows, 635 steps × 512
    python benchmarks/lm_frontier.py --quick --out /tmp/lm_frontier-quick   # smoke test (tests/)

Only public settings reach the trainer, so changes to a kind's defaults show up unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_pareto import plot, train_point, verdicts  # noqa: E402

from saease.errors import SaeaseError  # noqa: E402

FAMILIES = ("sae-topk", "sae-batchtopk", "sae-matryoshka", "sae-jumprelu", "sae-l1", "sae-log", "sae-gated", "vae")
# knob grids spanning L0 ≈ 8–120 on this model (κ = 512); --quick keeps the first and last
GRIDS = {
    "sae-topk": ("k", [8, 32, 96]),
    "sae-batchtopk": ("k", [8, 32, 96]),
    "sae-matryoshka": ("k", [8, 32, 96]),
    "sae-jumprelu": ("threshold_init", [0.3, 0.8, 2.0]),  # l0_coef 1 (its default); θ₀ sets L0 at this budget
    "sae-l1": ("lambda1", [0.3, 1.0, 3.0]),
    "sae-log": ("lambda1", [0.03, 0.1, 0.3]),
    "sae-gated": ("lambda1", [0.1, 0.4, 1.6]),
}


def plan(quick: bool, only: set | None) -> list[tuple[str, str, dict]]:
    rows = []
    for kind, (knob, values) in GRIDS.items():
        for v in (values[0], values[-1]) if quick else values:
            rows.append((kind, f"{knob}={v:g}", {knob: v}))
    rows += [("vae", "defaults", {}), ("vaease", "defaults", {})]
    return [r for r in rows if not only or r[0] in only]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="loss recovered vs L0 for every kind on the plays model's middle block")
    p.add_argument("--out", default="benchmarks/out/lm_frontier")
    p.add_argument("--rows", type=int, default=0, help="training rows (0: every token of the three plays, ~131k)")
    p.add_argument("--eval-rows", type=int, default=0, help="held-out rows for RE/EV/L0/AD (0: all, ~68k)")
    p.add_argument("--steps", type=int, default=635, help="optimizer steps per dictionary (end at 5·(2^n−1))")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--d-latent", type=int, default=512)
    p.add_argument("--loss-seqs", type=int, default=32, help="held-out 128-token windows for loss recovered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated kinds (default: every kind)")
    p.add_argument("--reuse-stores", action="store_true", help="keep OUT/activations if already harvested")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test size: 4,096 rows, κ 128, 20 steps × 256, 2 knobs per family, 2 loss windows")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.eval_rows, a.d_latent = a.rows or 4096, a.eval_rows or 2048, 128
        a.steps, a.batch_size, a.loss_seqs = 20, 256, min(a.loss_seqs, 2)
    if a.steps < 1 or a.batch_size < 1 or a.loss_seqs < 1 or a.d_latent < 1:
        raise SaeaseError("--steps, --batch-size, --loss-seqs and --d-latent must be positive integers")

    import torch

    from saease.recipes import plays_model
    from saease.recipes.quickstart import _cli, _harvest, _middle_layer

    torch.set_num_threads(a.threads)
    started = time.time()
    out = Path(a.out)
    model = str(plays_model.model_path(progress=False))
    layer = _middle_layer(model)
    stores = {}
    for name, part, rows in (("train", "harvest", a.rows), ("heldout", "heldout", a.eval_rows)):
        folder = out / "activations" / name
        if a.reuse_stores and (folder / "manifest.json").is_file():
            stores[name] = str(folder)
        else:
            stores[name] = _harvest(model, layer, plays_model.text_folder(part), folder, rows, False)["store"]
    harvest_seconds = round(time.time() - started, 1)

    common = dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr, d_latent=a.d_latent, seed=a.seed,
                  holdout=0.1, threads=a.threads)
    todo = plan(a.quick, set(a.only.split(",")) if a.only else None)
    folders, trained = [], []
    for i, (kind, knob, kw) in enumerate(todo):
        folder = out / "dictionaries" / f"{i:02d}-{kind}"
        trained.append(train_point(kind, stores["train"], folder, **common, **kw))
        folders.append(str(folder))
        print(f"trained {kind:15} {knob:20} L0 {trained[-1]['l0']:7.1f} ({trained[-1]['wall_seconds']:.0f} s)",
              file=sys.stderr, flush=True)

    t_eval = time.time()
    evaluation = _cli("eval", *folders, "--data", stores["heldout"], "--loss", "--loss-seqs", a.loss_seqs,
                      "--seed", a.seed, "--no-masking", "--no-progress")
    evals = evaluation["dictionaries"] if "dictionaries" in evaluation else [evaluation]
    eval_seconds = round(time.time() - t_eval, 1)

    rows = []
    for (kind, knob, _), e, t in zip(todo, evals, trained):
        rows.append({"kind": kind, "knob": knob, "loss_recovered": e["loss_recovered"], "re": e["re"],
                     "explained_variance": e["explained_variance"], "l0": e["l0"], "ad": e["ad"],
                     "ce_spliced": e["ce_spliced"], "ce_clean": e["ce_clean"], "ce_zero_ablated": e["ce_zero_ablated"],
                     "dead_fraction": e["dead_fraction"], "train_seconds": t["train_seconds"]})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frontier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'kind':15} {'knob':20} {'LR':>6} {'RE':>8} {'EV':>6} {'L0':>7} {'AD':>7}", file=sys.stderr)
    for r in rows:
        print(f"{r['kind']:15} {r['knob']:20} {r['loss_recovered']:6.3f} {r['re']:8.4f} "
              f"{r['explained_variance']:6.3f} {r['l0']:7.1f} {r['ad']:7.2f}", file=sys.stderr)
    verdict = verdicts(rows, FAMILIES, {"loss_recovered": True, "re": False, "explained_variance": True})
    compared = [v["vaease_loss_recovered_ok"] for v in verdict.values() if v["vaease_loss_recovered_ok"] is not None]
    plot(rows, out / "frontier.png", panels=(("loss_recovered", "next-token loss recovered"), ("re", "RE"),
                                             ("explained_variance", "EV")))
    summary = {"benchmark": "lm_frontier", "model": model, "hook": f"blocks.{layer}.hook_resid_post",
               "train_store": stores["train"], "heldout_store": stores["heldout"], **common,
               "loss_seqs": a.loss_seqs, "quick": a.quick, "points": rows, "vaease_vs": verdict,
               "target_met": bool(compared) and all(compared), "families_compared": len(compared),
               "harvest_seconds": harvest_seconds, "eval_seconds": eval_seconds,
               "seconds": round(time.time() - started, 1),
               "csv": str(out / "frontier.csv"), "png": str(out / "frontier.png")}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    try:
        main()
    except SaeaseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
