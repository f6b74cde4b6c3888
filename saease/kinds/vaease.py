"""VAEase (the paper's model, SPEC §1): the decoder sees the gated sample (1 − σ) ⊙ (μ + σ ⊙ ε) in
training and (1 − σ) ⊙ μ at inference, so a latent the encoder gives σ → 1 is switched off
for that input: its dimension adapts to each sample."""

from __future__ import annotations

from dataclasses import dataclass

from saease.dictionary import register
from saease.kinds.variational import VariationalConfig, VariationalDictionary


@dataclass
class VAEaseConfig(VariationalConfig):
    pass


@register("vaease")
class VAEase(VariationalDictionary):
    Config = VAEaseConfig
    gate_is_one_minus_sigma = True

    # saelens_export (VariationalDictionary's): architecture saease-vaease, which SAELens loads
    # once saease.saelens_sae is imported; its encode calls `inference_code`.
