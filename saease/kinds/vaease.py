"""VAEase (the paper's model): the decoder sees the gated sample (1 − σ) ⊙ (μ + σ ⊙ ε) in training
and (1 − σ) ⊙ μ at inference, so a latent the encoder gives σ → 1 is switched off for that
input: its dimension adapts to each sample.

Beyond the paper, all measured (docs/vaease.md):
- the KL's weight warms up over the first 2% of training (`kl_warmup`, in variational.py), so
  the gates do not all shut before the decoder has learned a direction;
- it then overshoots to 1.5 for 5% of training and returns to 1 over another 5% (`kl_peak`),
  which prunes latents shared between subspaces; shut latents are re-opened every 5% of
  training up to half of it (`reopen_every`), so what the overshoot pruned too far comes back;
- the inference code is exact by default: latents outside the input's active set (the
  two-means split of log σ² that AD counts) are zero, so L0 = AD. The soft gate 1 − σ never
  reaches 0, which made L0 several times AD; the latents the split drops already have
  σ² ≈ 1, so zeroing them costs almost no reconstruction. Training is unchanged (soft gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saease.dictionary import knob, register
from saease.kinds.variational import VariationalConfig, VariationalDictionary


@dataclass
class VAEaseConfig(VariationalConfig):
    # VAEase's own defaults for two VariationalConfig knobs (the VAE keeps 1 and 0): an overshoot
    # of the KL after its warm-up, and re-opening shut latents (docs/vaease.md, overcounting).
    kl_peak: float = knob(1.5, "the KL's weight β held right after the warm-up, before it returns to 1 "
                          "(1: no overshoot)")
    reopen_every: float = knob(0.05, "re-open the latents shut on the whole batch each time training "
                               "crosses a multiple of this fraction (0: never)")
    code: Literal["exact", "soft"] = knob(
        "exact", "exact: encode zeroes the latents outside each input's active set, so L0 = AD; "
        "soft: the paper's (1 − σ) ⊙ μ, never exactly zero")


@register("vaease")
class VAEase(VariationalDictionary):
    Config = VAEaseConfig
    gate_is_one_minus_sigma = True

    @property
    def exact_code(self) -> bool:
        return self.cfg.code == "exact"

    def saelens_export(self):
        """Architecture saease-vaease, which SAELens loads once saease.saelens_sae is imported;
        its encode calls `inference_code` with the same `code` setting."""
        fields_, tensors = super().saelens_export()
        return {**fields_, "code": self.cfg.code}, tensors
