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

    def reconstruction_loss(self, z, x):
        """The prefixes' mean of ‖x − x̂_m‖² (x̂_m decodes the kept latents below m), and the whole
        code's. Each range between prefix sizes is decoded once; x̂_m is the running sum."""
        x_hat, errors = self.b_dec, []
        for part in z.split_by_latent(self.cfg.prefixes[:-1]):
            x_hat = x_hat + part.decode(self.W_dec)
            errors.append(sq_err(x_hat, x).mean())
        return sum(errors) / len(errors), x_hat, errors[-1]
