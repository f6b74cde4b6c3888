"""VAE: the plain variational autoencoder (SPEC §1): the decoder sees z = μ + σ ⊙ ε in training
and μ at inference. AD reads σ² (SPEC §2); the code itself is dense."""

from __future__ import annotations

from dataclasses import dataclass

from saease.dictionary import register
from saease.kinds.variational import VariationalConfig, VariationalDictionary


@dataclass
class VAEConfig(VariationalConfig):
    pass


@register("vae")
class VAE(VariationalDictionary):
    Config = VAEConfig

    def saelens_export(self):
        if not self.linear:
            return super().saelens_export()
        from saease.kinds.sae_l1 import plain_relu_tensors

        # the mean head is a ReLU SAE encoder; the variance head only matters in training
        return {"architecture": "standard"}, plain_relu_tensors(self)
