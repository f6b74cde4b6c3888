"""Fig. 3: SAE-log's 1-D loss has two local minima where VAEase's has one (Theorem 4.7, Cor. 4.8).

One scalar sample x, decoder x̂ = w·z, with the decoder weight w optimized out in closed form
(App. D.1, E.3, E.4):

    SAE-log  L(z)   = min_w (x − w z)² + λ1 log(|z| + ε) + λ2 w²  = λ2 x² / (λ2 + z²) + λ1 log(|z| + ε)
    VAEase   L(μ)   = min_{w,σ} ½ [log 2πγ + (x − w(1−σ)μ)²/γ + w²σ²(1−σ)²/γ + σ² − log σ² + μ² − 1]
                      with w = μ x / ((1−σ)(μ² + σ²)) and σ on a fine grid in (0, 1)

λ1 = λ2 = 0.1, ε = 1e-4, γ = 0.1 (App. D.1). Theorem 4.7 puts VAEase's unique minimum at
σ² = γ/x², μ² = 1 − σ². Writes docs/figures/fig3.png and prints the minima, then one JSON line.

    python benchmarks/fig3.py [--x 1.0] [--out docs/figures/fig3.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

LAMBDA1 = LAMBDA2 = 0.1
EPS = 1e-4
GAMMA = 0.1


def sae_log_loss(z: torch.Tensor, x: float) -> torch.Tensor:
    return LAMBDA2 * x**2 / (LAMBDA2 + z**2) + LAMBDA1 * torch.log(z.abs() + EPS)


def vaease_loss(mu: torch.Tensor, x: float, n_sigma: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Profile loss over μ (w and σ minimized out) and the minimizing σ for each μ."""
    sigma = torch.linspace(1e-4, 1 - 1e-4, n_sigma, dtype=torch.float64)[None, :]
    m = mu.double()[:, None]
    w = m * x / ((1 - sigma) * (m**2 + sigma**2))
    loss = 0.5 * (math.log(2 * math.pi * GAMMA) + (x - w * (1 - sigma) * m) ** 2 / GAMMA
                  + w**2 * sigma**2 * (1 - sigma) ** 2 / GAMMA + sigma**2 - torch.log(sigma**2) + m**2 - 1)
    best, idx = loss.min(dim=1)
    return best, sigma[0, idx]


def local_minima(grid: torch.Tensor, values: torch.Tensor) -> list[float]:
    """Grid points lower than both neighbours (an end point counts if lower than its one neighbour)."""
    v = values
    lower_left = torch.cat([torch.tensor([True]), v[1:] < v[:-1]])
    lower_right = torch.cat([v[:-1] < v[1:], torch.tensor([True])])
    return grid[lower_left & lower_right].tolist()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--x", type=float, default=1.0, help="the scalar data point (needs x² > γ = 0.1)")
    p.add_argument("--out", default="docs/figures/fig3.png")
    args = p.parse_args(argv)

    z = torch.linspace(0, 3, 3001, dtype=torch.float64)
    sae = sae_log_loss(z, args.x)
    vae, sigma = vaease_loss(z, args.x)
    sae_min, vae_min = local_minima(z, sae), local_minima(z, vae)
    i = int(vae.argmin())
    predicted = {"sigma2": GAMMA / args.x**2, "mu": math.sqrt(1 - GAMMA / args.x**2)}

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(z, sae, color="tab:blue")
    a.plot(sae_min, sae_log_loss(torch.tensor(sae_min, dtype=torch.float64), args.x), "o", color="red")
    a.set(title=f"SAE-log (λ1 = λ2 = {LAMBDA1}): {len(sae_min)} local minima", xlabel="z", ylabel="loss")
    b.plot(z, vae, color="tab:green")
    b.plot(vae_min, vae[[int(torch.searchsorted(z, torch.tensor(m, dtype=torch.float64))) for m in vae_min]],
           "o", color="red")
    b.set(title=f"VAEase (γ = {GAMMA}): {len(vae_min)} minimum", xlabel="μ", ylabel="loss (w, σ optimized out)")
    fig.suptitle(f"Fig. 3: 1-D loss slices for one sample x = {args.x}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"SAE-log local minima at z = {[round(m, 3) for m in sae_min]}")
    print(f"VAEase local minima at μ = {[round(m, 3) for m in vae_min]} (σ² = {float(sigma[i]) ** 2:.4f}); "
          f"Theorem 4.7 predicts μ = {predicted['mu']:.3f}, σ² = {predicted['sigma2']:.4f}")
    summary = {"figure": "fig3", "out": args.out, "x": args.x, "sae_log_minima": sae_min, "vaease_minima": vae_min,
               "vaease_sigma2_at_min": float(sigma[i]) ** 2, "theorem_4_7": predicted}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
