"""Reconstruction error (RE), active dimensions (AD), the latent masking curve (docs/kinds.md).

AD counts, per sample, the latents on the "active" side of a two-group split of their
activity values (log σ² for the VAE kinds, log |z| for the SAE kinds). The split is the
variance criterion: sort the values and cut where the two groups' summed squared deviation
from their own means is smallest (a 1-D two-means / Otsu split; no hand-set threshold).

Everything here streams: `encode_batch` runs a dictionary once on a batch, and the
accumulators (`Metrics`, `MaskingCurve`) take the result batch by batch, so a store of any
size is evaluated without holding its codes in memory.

The masking curve (the paper's Fig. 4) orders latents from least to most used and zeroes
them one at a time in the code fed to the decoder. Usage is the mean over the evaluated rows
of |z| (SAE kinds) or of the gate 1 − σ (VAE kinds: σ → 1 marks a latent the encoder
switched off for that input, whatever μ is, so 1 − σ measures how much a latent is used).
With a linear decoder, zeroing latent j adds z_j·W_dec[j] back to the residual, so RE after
every step follows from per-latent sums (see `MaskingCurve`) instead of κ + 1 decodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from saease.dictionary import Dictionary, EncoderOutput
from saease.errors import SaeaseError

FIXED_THRESHOLD = 0.05  # the authors' alternative AD: σ² < 0.05 (VAE kinds)


# ---- the variance-criterion split ---------------------------------------------------------

def variance_split(values: Float[Tensor, "batch n"], valid: Tensor | None = None) -> Tensor:
    """Size of the *lower* group of the best two-group split of each row.

    `values` [batch, n]; `valid` [batch, n] bool marks entries that take part (others are
    ignored). Returns [batch] int: how many valid entries fall below the cut. Rows with fewer
    than two valid entries, or whose valid entries are all equal, put everything in the upper
    group (0 below the cut).
    """
    return _split(values, valid)[0]


def _split(values: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """(n_below [batch], sorted values [batch, n]; invalid entries sorted last as +inf).

    Minimising the summed within-group squared deviation is maximising the between-group term
    n_L·n_R/n·(mean_L − mean_R)², which for values centred on their row mean is
    n·S_L²/(n_L·n_R), S_L the sum of the lower group: one cumulative sum of the sorted values.
    """
    n = values.shape[-1]
    idx = torch.arange(n, device=values.device)
    n_left = (idx + 1).double()[None, :]  # split after position i: left has i+1 values
    if valid is None:  # every entry takes part
        n_valid = torch.full(values.shape[:-1], n, device=values.device)
        sorted_all = values.sort(dim=-1).values
        v = sorted_all.double()
        centred = v - v.mean(-1, keepdim=True)
        n_right = n - n_left  # [1, n]
    else:
        n_valid = valid.sum(-1)  # [batch]
        sorted_all = torch.where(valid, values, torch.inf).sort(dim=-1).values
        in_range = idx < n_valid[:, None]
        v = torch.where(in_range, sorted_all.double(), 0.0)
        centred = torch.where(in_range, v - (v.sum(-1) / n_valid.clamp_min(1))[:, None], 0.0)
        n_right = n_valid[:, None].double() - n_left  # [batch, n]
    s_left = centred.cumsum(-1)  # s_left[:, i]: centred sum of the i+1 smallest
    # |S_L| / sqrt(n_L n_R) orders the cuts as the between-group term does; 0 where no right group
    weight = torch.where(n_right >= 1, (n_left * n_right.clamp_min(1)).rsqrt(), 0.0)
    n_below = (s_left.abs() * weight).argmax(-1) + 1
    # No valid split (fewer than 2 values) or a flat row: nothing is "below".
    spread = centred.pow(2).sum(-1)
    degenerate = (n_valid < 2) | (spread <= 1e-12 * n_valid.clamp_min(1))
    return torch.where(degenerate, torch.zeros_like(n_below), n_below), sorted_all


def active_count(activity: Tensor, from_variance: bool) -> Tensor:
    """Active latents per sample from the activity values (docs/kinds.md)."""
    if from_variance:
        return variance_split(activity)  # log σ²: small = active, the lower group
    valid = torch.isfinite(activity)  # exact zeros (log 0 = −inf) never enter the split
    n_valid = valid.sum(-1)
    n_below = variance_split(activity, valid)
    # log |z|: large = active, the upper group; a flat row counts all its non-zeros active
    return n_valid - n_below


def active_mask(activity: Float[Tensor, "batch n"], from_variance: bool) -> Bool[Tensor, "batch n"]:
    """Which latents are active in each sample: the set whose size `active_count` gives.

    Equal values always fall on the same side of an optimal two-means cut, so comparing with
    the last value below the cut recovers the groups from their sizes.
    """
    valid = None if from_variance else torch.isfinite(activity)
    n_below, sorted_vals = _split(activity, valid)
    cut = sorted_vals.gather(-1, (n_below - 1).clamp_min(0)[:, None])  # last value below the cut
    below = (activity <= cut) & (n_below > 0)[:, None]
    if from_variance:
        return below
    return valid & ~below


def threshold_count(var: Tensor, threshold: float = FIXED_THRESHOLD) -> Tensor:
    """The fixed-threshold alternative for the VAE kinds: latents with σ² < threshold."""
    return (var < threshold).sum(-1)


# ---- one batch through a dictionary ------------------------------------------------------

@dataclass
class Encoded:
    """A batch run through a dictionary once; what every accumulator reads."""

    x: Float[Tensor, "batch d_in"]  # float32, in the store's units
    enc: EncoderOutput
    codes: Float[Tensor, "batch d_latent"]  # the deterministic code
    x_hat: Float[Tensor, "batch d_in"]
    dictionary: Dictionary

    @cached_property
    def active(self) -> Bool[Tensor, "batch d_latent"]:
        """The docs/kinds.md active set of each sample (computed on first use: it needs a sort)."""
        return active_mask(self.dictionary.activity(self.enc), self.dictionary.ad_from_variance)

    @cached_property
    def nonzero_per_latent(self) -> Tensor:
        """[d_latent] rows of the batch where each latent's code is non-zero."""
        return (self.codes != 0).sum(0)

    @cached_property
    def active_per_latent(self) -> Tensor:
        """[d_latent] rows of the batch where each latent is active (docs/kinds.md)."""
        return self.active.sum(0)

    @property
    def usage(self) -> Float[Tensor, "batch d_latent"]:
        """Per-sample usage for ordering the masking curve (the kind's: |z|, or 1 − σ for the
        variational kinds)."""
        return self.dictionary.usage(self.enc, self.codes)


@torch.no_grad()
def encode_batch(dictionary: Dictionary, acts: Tensor) -> Encoded:
    x = acts.to(dictionary.device, torch.float32)
    enc = dictionary.encoder_output(dictionary.scale_in(x))
    codes = dictionary.code_from(enc)
    return Encoded(x=x, enc=enc, codes=codes, x_hat=dictionary.decode(codes), dictionary=dictionary)


# ---- RE, AD and friends ------------------------------------------------------------------

@dataclass
class Metrics:
    """Streaming RE, AD (split and fixed), per-label AD, L0, explained variance, dead latents."""

    from_variance: bool
    n: int = 0
    sq_err: float = 0.0
    ad: float = 0.0
    ad_fixed: float = 0.0
    l0: float = 0.0
    sum_x: Tensor | None = None
    sum_x2: float = 0.0
    fired: Tensor | None = None
    label_sums: dict = field(default_factory=dict)  # label -> [sum of σ or |z| per latent, count]

    def update(self, b: Encoded, labels: Tensor | None = None) -> None:
        x, codes = b.x, b.codes
        self.n += len(x)
        # per-batch sums in float32 (torch sums pairwise), accumulated across batches in float64
        self.sq_err += (x - b.x_hat).pow(2).sum().item()
        self.sum_x = x.sum(0).double() + (0 if self.sum_x is None else self.sum_x)
        self.sum_x2 += x.pow(2).sum().item()
        self.l0 += b.nonzero_per_latent.sum().item()
        fired = b.nonzero_per_latent > 0
        self.fired = fired if self.fired is None else self.fired | fired
        self.ad += b.active_per_latent.sum().item()
        if self.from_variance:
            self.ad_fixed += threshold_count(b.enc.var).sum().item()
        if labels is not None:
            strength = b.enc.var.sqrt() if self.from_variance else codes.abs()
            labels = labels.to(strength.device)
            for label in labels.unique().tolist():
                rows = strength[labels == label]
                s = self.label_sums.setdefault(int(label), [torch.zeros_like(rows[0], dtype=torch.float64), 0])
                s[0] += rows.sum(0, dtype=torch.float64)
                s[1] += len(rows)

    def result(self) -> dict:
        if self.n == 0:
            raise SaeaseError("no vectors to evaluate (the store or split is empty)")
        mean = self.sum_x / self.n
        total_var = self.sum_x2 / self.n - mean.pow(2).sum().item()  # E‖x − E x‖²
        re = self.sq_err / self.n
        out = {
            "re": re,
            "ad": self.ad / self.n,
            "ad_per_label": {},
            "l0": self.l0 / self.n,
            "explained_variance": 1 - re / total_var if total_var > 0 else float("nan"),
            "dead_fraction": 1 - self.fired.float().mean().item(),
            "n": self.n,
        }
        for label, (total, count) in sorted(self.label_sums.items()):
            mean_strength = (total / count)[None]
            out["ad_per_label"][str(label)] = int(active_count(mean_strength.log(), self.from_variance).item())
        if self.from_variance:
            out["ad_fixed"] = self.ad_fixed / self.n
        return out


@torch.no_grad()
def evaluate(dictionary: Dictionary, batches, *, n_total: int | None = None, progress: bool = True) -> dict:
    """Stream `(acts, labels_or_None)` batches through the dictionary and return the AD
    metrics: re, ad, ad_per_label, l0, explained_variance, dead_fraction, n (and ad_fixed for
    the VAE kinds: σ² < 0.05)."""
    metrics = Metrics(from_variance=dictionary.ad_from_variance)
    bar = tqdm(total=n_total, unit="vec", desc="eval", disable=not progress, leave=False)
    for acts, labels in batches:
        metrics.update(encode_batch(dictionary, acts), labels)
        bar.update(len(acts))
    bar.close()
    return metrics.result()


def tensor_batches(x: Tensor, labels: Tensor | None = None, batch_size: int = 8192):
    """(acts, labels) batches of an in-memory array, for `evaluate`."""
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], None if labels is None else labels[start:start + batch_size]


# ---- the latent masking curve ------------------------------------------------------------

def _prefix_block_sums(q: Float[Tensor, "m m"]) -> Float[Tensor, "m"]:
    """D[t] = Σ_{i,j ≤ t} q[i, j] for every t (sums of the leading square blocks of q)."""
    return (2 * torch.tril(q, -1).sum(1) + q.diagonal()).cumsum(0)


class MaskingCurve:
    """RE after zeroing the 0, 1, …, κ least used latents (docs/kinds.md), streamed.

    Write e_m = x − x̂_m for the residual once the first m latents of the order o are zeroed.
    With a linear decoder (`W` = W_dec in store units), e_m = r + Σ_{i<m} z_{o_i} W[o_i], with
    r = x − x̂, so over the evaluated rows

        Σ‖e_m‖² = Σ‖r‖² + 2 Σ_{i<m} a[o_i] + Σ_{i,j<m} (M ⊙ G)[o_i, o_j]

    where a_j = Σ z_j (r · W[j]), M = Σ z zᵀ (the codes' second moments) and G = W Wᵀ. Three
    ways to get there, picked by `method` ("auto" chooses):

    - "gram": accumulate a and M in the same pass as everything else; the order is applied at
      the end. One pass; M costs κ² memory and n·κ² work, so used while κ ≤ 2·d_in.
    - "blockwise": a second pass once the order is known, walking the ordered latents in
      blocks of `block` and applying the identity inside each block. n·κ·d work, κ·block memory.
    - "decode": any decoder (the MLP ones too): a second pass that decodes κ + 1 masked codes.
    """

    METHODS = ("auto", "gram", "blockwise", "decode")

    def __init__(self, dictionary: Dictionary, method: str = "auto", block: int = 256):
        if method not in self.METHODS:
            raise SaeaseError(f"masking method {method!r}: choose from {', '.join(self.METHODS)}")
        cfg = dictionary.cfg
        linear = cfg.decoder_layers == 1
        if method == "auto":
            method = "decode" if not linear else "gram" if cfg.d_latent <= max(2 * cfg.d_in, 512) else "blockwise"
        if method != "decode" and not linear:
            raise SaeaseError(f"masking method {method!r} needs a linear decoder; use 'decode' "
                              f"(this dictionary has {cfg.decoder_layers} decoder layers)")
        self.dictionary, self.method, self.block = dictionary, method, block
        kappa, dev = cfg.d_latent, dictionary.device
        self.n = 0
        self.usage = torch.zeros(kappa, dtype=torch.float64, device=dev)
        self.W = dictionary.W_dec.detach().float() / cfg.input_scale if linear else None  # [κ, d_in]
        if method == "gram":
            self.sq_r = torch.zeros((), dtype=torch.float64, device=dev)
            self.a = torch.zeros(kappa, dtype=torch.float64, device=dev)
            self.M = torch.zeros(kappa, kappa, dtype=torch.float64, device=dev)
        self.order: Tensor | None = None
        self.totals: Tensor | None = None  # Σ‖e_m‖², m = 0..κ (second-pass methods)

    @property
    def needs_second_pass(self) -> bool:
        return self.method != "gram"

    def update(self, b: Encoded) -> None:
        """First pass: usage (for the order) and, for "gram", the sums a, M and Σ‖r‖²."""
        self.n += len(b.x)
        self.usage += b.usage.sum(0, dtype=torch.float64)
        if self.method == "gram":
            r = b.x - b.x_hat
            self.sq_r += r.pow(2).sum().double()
            self.a += (b.codes * (r @ self.W.T)).sum(0, dtype=torch.float64)
            self.M += (b.codes.T @ b.codes).double()

    def fix_order(self) -> Tensor:
        """Least used first (ties broken by latent index); call after the first pass."""
        if self.n == 0:
            raise SaeaseError("no vectors to evaluate (the store or split is empty)")
        if self.order is None:
            self.order = torch.sort(self.usage, stable=True).indices
            self.totals = torch.zeros(self.dictionary.cfg.d_latent + 1, dtype=torch.float64,
                                      device=self.usage.device)
            if self.method == "blockwise":
                W = self.W[self.order]
                self._blocks = [(s, W[s:s + self.block], (W[s:s + self.block] @ W[s:s + self.block].T).double())
                                for s in range(0, len(W), self.block)]
        return self.order

    @torch.no_grad()
    def update_second(self, b: Encoded) -> None:
        """Second pass ("blockwise", "decode"): add this batch's Σ‖e_m‖² for every m."""
        self.fix_order()
        codes = b.codes[:, self.order]
        if self.method == "decode":
            inverse = torch.empty_like(self.order)
            inverse[self.order] = torch.arange(len(self.order), device=self.order.device)
            for m in range(len(self.order) + 1):
                masked = codes.clone()
                masked[:, :m] = 0
                x_hat = self.dictionary.decode(masked[:, inverse])
                self.totals[m] += (b.x - x_hat).pow(2).sum(dtype=torch.float64)
            return
        e = b.x - b.x_hat
        self.totals[0] += e.pow(2).sum(dtype=torch.float64)
        for start, W, G in self._blocks:
            z = codes[:, start:start + len(W)]
            base = e.pow(2).sum(dtype=torch.float64)
            lin = (z * (e @ W.T)).sum(0, dtype=torch.float64).cumsum(0)
            quad = _prefix_block_sums((z.T @ z).double() * G)
            self.totals[start + 1:start + 1 + len(W)] += base + 2 * lin + quad
            e = e + z @ W

    def result(self) -> dict:
        """`left` (latents left: κ, κ−1, …, 0), `re` (RE with that many left), `order` (the
        latent zeroed at each step), `usage` (mean usage per latent), `method`."""
        order = self.fix_order()
        if self.method == "gram":
            W = self.W.double()
            q = (self.M * (W @ W.T))[order][:, order]
            totals = torch.cat([self.sq_r[None], self.sq_r + 2 * self.a[order].cumsum(0) + _prefix_block_sums(q)])
        else:
            totals = self.totals
        kappa = len(order)
        return {"left": list(range(kappa, -1, -1)), "re": (totals / self.n).clamp_min(0).tolist(),
                "order": order.tolist(), "usage": (self.usage / self.n).tolist(), "method": self.method}


@torch.no_grad()
def masking_curve(dictionary: Dictionary, x: Tensor, batch_size: int = 8192, method: str = "auto") -> dict:
    """Latent masking curve (docs/kinds.md, the paper's Fig. 4) of an in-memory array `x` [n, d_in].

    Returns `left` (latents left: κ, κ−1, …, 0), `re` (the RE with that many left), `order`
    (the latent masked at each step), `usage` and `method`; see `MaskingCurve`.
    """
    curve = MaskingCurve(dictionary, method)
    for xb, _ in tensor_batches(x, batch_size=batch_size):
        curve.update(encode_batch(dictionary, xb))
    if curve.needs_second_pass:
        curve.fix_order()
        for xb, _ in tensor_batches(x, batch_size=batch_size):
            curve.update_second(encode_batch(dictionary, xb))
    return curve.result()
