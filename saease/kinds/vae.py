"""VAE: the plain variational autoencoder (docs/kinds.md): the decoder sees z = μ + σ ⊙ ε in training
and μ at inference. AD reads σ² (docs/kinds.md); the code itself is dense."""

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

    def saelens_export(self, variance_head: bool = False):
        """By default SAELens's standard architecture: the code μ = ReLU(x W_enc + b_enc) is a
        ReLU SAE's, so plain SAELens loads it; the variance head (σ², which AD reads) is left
        out. With `variance_head`, architecture saease-vae keeps it (needs saease.saelens_sae)."""
        if variance_head or not self.linear:
            return super().saelens_export()
        from saease.kinds.sae_l1 import plain_relu_tensors

        return {"architecture": "standard"}, plain_relu_tensors(self)
