"""SAE-Matryoshka (Bussmann et al. 2025; Nabeshima 2024): a BatchTopK SAE whose reconstruction
loss is averaged over nested prefixes of the dictionary: with prefix sizes m_1 < … < m_n = κ,

    loss = 1/n Σ_i ‖x − (ẑ[:, :m_i] W_dec[:m_i] + b_dec)‖²

so the first m_1 latents must reconstruct x on their own, the first m_2 refine it, and so on:
general features settle early in the dictionary and are not split into narrower ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saease.dictionary import register, sq_err
from saease.errors import SaeaseError
from saease.kinds.sae_batchtopk import BatchTopKConfig, BatchTopKSAE


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    prefixes: list[int] = field(default_factory=list, metadata={
        "help": "nested prefix sizes, ascending, ending at κ (default: κ/16, κ/8, κ/4, κ/2, κ)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.prefixes:
            self.prefixes = sorted({max(1, self.d_latent // f) for f in (16, 8, 4, 2)} | {self.d_latent})
        p = [int(m) for m in self.prefixes]
        if p != sorted(set(p)) or p[0] < 1 or p[-1] != self.d_latent:
            raise SaeaseError(f"--prefixes {' '.join(map(str, self.prefixes))}: expected ascending distinct sizes "
                              f"ending at d_latent = {self.d_latent}")
        self.prefixes = p


@register("sae-matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    Config = MatryoshkaConfig

    def prefix_errors(self, z, x):
        """‖x − x̂_m‖² per row for each prefix size m, in prefix order (the last is the whole code)."""
        x_hat, start, out = self.b_dec.expand_as(x), 0, []
        for m in self.cfg.prefixes:
            x_hat = x_hat + z[:, start:m] @ self.W_dec[start:m]
            out.append(sq_err(x_hat, x))
            start = m
        return out

    def reconstruction_loss(self, z, x):
        errors = [e.mean() for e in self.prefix_errors(z, x)]
        return sum(errors) / len(errors), errors[-1]
