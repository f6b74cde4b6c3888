"""VAEase (the paper's model): the decoder sees the gated sample (1 − σ) ⊙ (μ + σ ⊙ ε) in training
and (1 − σ) ⊙ μ at inference, so a latent the encoder gives σ → 1 is switched off for that
input: its dimension adapts to each sample.

Beyond the paper, all measured (docs/vaease.md):
- the KL's weight warms up over the first 2% of training (`kl_warmup`, in variational.py), so
  the gates do not all shut before the decoder has learned a direction;
- optionally (`--kl-peak 1.5 --reopen-every 0.05`, off by default) the KL then overshoots and
  latents shut on every row since the previous re-opening are re-opened: fewer overcounted
  subspaces, but on Zipfian data the overshoot prunes rare features, so it is not the default
  (docs/vaease.md);
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
