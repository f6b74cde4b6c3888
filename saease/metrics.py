"""Reconstruction error (RE), active dimensions (AD) and friends (SPEC §2).

AD counts, per sample, the latents on the "active" side of a two-group split of their
activity values (log σ² for the VAE kinds, log |z| for the SAE kinds). The split is the
variance criterion: sort the values and cut where the two groups' summed squared deviation
from their own means is smallest (a 1-D two-means / Otsu split; no hand-set threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from saease.dictionary import Dictionary
from saease.errors import SaeaseError


def variance_split(values: Float[Tensor, "batch n"], valid: Tensor | None = None) -> Tensor:
    """Size of the *lower* group of the best two-group split of each row.

    `values` [batch, n]; `valid` [batch, n] bool marks entries that take part (others are
    ignored). Returns [batch] int: how many valid entries fall below the cut. Rows with fewer
    than two valid entries, or whose valid entries are all equal, put everything in the upper
    group (0 below the cut).
    """
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    values = values.double()
    n_valid = valid.sum(-1)  # [batch]
    sorted_vals, _ = torch.where(valid, values, torch.inf).sort(dim=-1)
    idx = torch.arange(values.shape[-1], device=values.device)
    in_range = idx < n_valid[:, None]
    sorted_vals = torch.where(in_range, sorted_vals, 0.0)
    s1 = sorted_vals.cumsum(-1)  # s1[:, i] = sum of the i+1 smallest
    s2 = sorted_vals.pow(2).cumsum(-1)
    tot1 = s1.gather(-1, (n_valid - 1).clamp_min(0)[:, None])
    tot2 = s2.gather(-1, (n_valid - 1).clamp_min(0)[:, None])
    n_left = (idx + 1).double()[None, :]  # split after position i: left has i+1 values
    n_right = n_valid[:, None].double() - n_left
    sse_left = s2 - s1.pow(2) / n_left
    sse_right = (tot2 - s2) - (tot1 - s1).pow(2) / n_right.clamp_min(1)
    sse = sse_left + sse_right
    ok = n_right >= 1  # both groups non-empty
    sse = torch.where(ok, sse, torch.inf)
    best = sse.argmin(-1)
    n_below = best + 1
    # No valid split (fewer than 2 values) or a flat row: nothing is "below".
    spread = tot2.squeeze(-1) - tot1.squeeze(-1).pow(2) / n_valid.clamp_min(1)
    degenerate = (n_valid < 2) | (spread <= 1e-12 * n_valid.clamp_min(1))
    return torch.where(degenerate, torch.zeros_like(n_below), n_below)


def active_count(activity: Tensor, is_vae: bool) -> Tensor:
    """Active latents per sample from the activity values (SPEC §2)."""
    if is_vae:
        return variance_split(activity)  # log σ²: small = active, the lower group
    valid = torch.isfinite(activity)  # exact zeros (log 0 = −inf) never enter the split
    n_valid = valid.sum(-1)
    n_below = variance_split(activity, valid)
    # log |z|: large = active, the upper group; a flat row counts all its non-zeros active
    return n_valid - n_below


def threshold_count(var: Tensor, threshold: float = 0.05) -> Tensor:
    """The fixed-threshold alternative for the VAE kinds: latents with σ² < threshold."""
    return (var < threshold).sum(-1)


@dataclass
class _Accumulator:
    n: int = 0
    sq_err: float = 0.0
    ad: float = 0.0
    ad_fixed: float = 0.0
    l0: float = 0.0
    sum_x: Tensor | None = None
    sum_x2: float = 0.0
    fired: Tensor | None = None
    label_sums: dict = field(default_factory=dict)  # label -> [sum of σ or |z| per latent, count]


@torch.no_grad()
def evaluate(dictionary: Dictionary, batches, *, n_total: int | None = None, progress: bool = True) -> dict:
    """Stream `(acts, labels_or_None)` batches through the dictionary and return the SPEC §2
    metrics: re, ad, ad_per_label, l0, explained_variance, dead_fraction, n (and ad_fixed for
    the VAE kinds: σ² < 0.05)."""
    acc = _Accumulator()
    is_vae = dictionary.cfg.is_vae
    bar = tqdm(total=n_total, unit="vec", desc="eval", disable=not progress, leave=False)
    for acts, labels in batches:
        x = acts.to(dictionary.device, torch.float32)
        enc = dictionary.encoder_output(dictionary.scale_in(x))
        codes = dictionary.code_from(enc)
        x_hat = dictionary.decode(codes)
        acc.n += len(x)
        acc.sq_err += (x - x_hat).pow(2).sum().item()
        acc.sum_x = x.sum(0) if acc.sum_x is None else acc.sum_x + x.sum(0)
        acc.sum_x2 += x.pow(2).sum().item()
        nonzero = codes != 0
        acc.l0 += nonzero.sum().item()
        fired = nonzero.any(0)
        acc.fired = fired if acc.fired is None else acc.fired | fired
        acc.ad += active_count(dictionary.activity(enc), is_vae).sum().item()
        if is_vae:
            acc.ad_fixed += threshold_count(enc.var).sum().item()
        if labels is not None:
            strength = enc.var.sqrt() if is_vae else codes.abs()
            labels = labels.to(strength.device)
            for label in labels.unique().tolist():
                rows = strength[labels == label]
                s = acc.label_sums.setdefault(int(label), [torch.zeros_like(rows[0]), 0])
                s[0] += rows.sum(0)
                s[1] += len(rows)
        bar.update(len(x))
    bar.close()
    if acc.n == 0:
        raise SaeaseError("no vectors to evaluate (the store or split is empty)")
    mean = acc.sum_x / acc.n
    total_var = acc.sum_x2 / acc.n - mean.pow(2).sum().item()  # E‖x − E x‖²
    re = acc.sq_err / acc.n
    out = {
        "re": re,
        "ad": acc.ad / acc.n,
        "ad_per_label": {},
        "l0": acc.l0 / acc.n,
        "explained_variance": 1 - re / total_var if total_var > 0 else float("nan"),
        "dead_fraction": 1 - acc.fired.float().mean().item(),
        "n": acc.n,
    }
    for label, (total, count) in sorted(acc.label_sums.items()):
        mean_strength = (total / count)[None]
        out["ad_per_label"][str(label)] = int(active_count(mean_strength.log(), is_vae).item())
    if is_vae:
        out["ad_fixed"] = acc.ad_fixed / acc.n
    return out


def tensor_batches(x: Tensor, labels: Tensor | None = None, batch_size: int = 8192):
    """(acts, labels) batches of an in-memory array, for `evaluate`."""
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], None if labels is None else labels[start:start + batch_size]


@torch.no_grad()
def masking_curve(dictionary: Dictionary, x: Tensor, batch_size: int = 8192) -> dict:
    """Latent masking curve (SPEC §2, the paper's Fig. 4).

    Latents are ordered from least to most used (mean activity over `x`: σ-based 1 − σ for the
    VAE kinds, |z| for the SAE kinds) and zeroed one at a time in that order in the code fed to
    the decoder; RE is recorded after each step. Returns `left` (latents left: κ, κ−1, …, 0),
    `re` (the RE with that many left) and `order` (the latent masked at each step).
    """
    kappa = dictionary.cfg.d_latent
    usage = torch.zeros(kappa, dtype=torch.float64, device=dictionary.device)
    codes_all = []
    for xb, _ in tensor_batches(x, batch_size=batch_size):
        xb = xb.to(dictionary.device, torch.float32)
        enc = dictionary.encoder_output(dictionary.scale_in(xb))
        codes = dictionary.code_from(enc)
        usage += ((1 - enc.var.sqrt()) if dictionary.cfg.is_vae else codes.abs()).double().sum(0)
        codes_all.append(codes)
    order = usage.argsort()  # least used first
    keep = torch.ones(kappa, device=dictionary.device)
    res = []
    for step in range(kappa + 1):
        if step > 0:
            keep[order[step - 1]] = 0
        sq = 0.0
        for (xb, _), codes in zip(tensor_batches(x, batch_size=batch_size), codes_all):
            xb = xb.to(dictionary.device, torch.float32)
            sq += (dictionary.decode(codes * keep) - xb).pow(2).sum().item()
        res.append(sq / len(x))
    return {"left": list(range(kappa, -1, -1)), "re": res, "order": order.tolist()}
