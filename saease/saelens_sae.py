"""SAELens SAE classes for saease's variational kinds: architectures `saease-vaease` and
`saease-vae`. Importing this module (it needs sae_lens) registers them with SAELens's own
registry, so that

    import saease.saelens_sae                      # once, before loading
    sae = sae_lens.SAE.load_from_disk("exported")  # a folder from `saease saelens export`

loads an exported VAEase (or a VAE exported with `variance_head=True`) as a SAELens SAE that
`HookedSAETransformer` splices like any other. SAELens has no plugin discovery, hence the
explicit import; importing it twice is harmless.

Both classes hold the tensors `saelens_export` writes, in the store's units:
W_enc, b_enc (mean head), W_sig, b_sig (spread head), W_dec, b_dec. They encode

    μ = ReLU(x W_enc + b_enc)     σ² = spread(x W_sig + b_sig)     code = inference_code(μ, σ²)

where `spread` and the kind's `inference_code` come from saease/kinds/, so the SAELens code is
saease's by construction ((1 − σ) ⊙ μ for VAEase, zero outside the active set with its default
`code: exact`; μ for the VAE). `hook_sae_acts_pre` shows
the mean head's pre-activation, `hook_sae_var` σ² (what AD reads), `hook_sae_acts_post` the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from sae_lens import SAE, SAEConfig, register_sae_class
from sae_lens.registry import SAE_CLASS_REGISTRY
from torch import nn
from transformer_lens.hook_points import HookPoint

from saease.dictionary import kind_class
from saease.kinds.variational import spread


class VariationalSAE(SAE):
    """A saease variational dictionary with a linear encoder, as a SAELens inference SAE."""

    kind: ClassVar[str]  # the saease kind whose inference code this runs
    b_enc: nn.Parameter
    W_sig: nn.Parameter
    b_sig: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()  # W_enc, W_dec, b_dec
        like = {"dtype": self.dtype, "device": self.device}
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, **like))
        self.W_sig = nn.Parameter(torch.zeros(self.cfg.d_in, self.cfg.d_sae, **like))
        self.b_sig = nn.Parameter(torch.zeros(self.cfg.d_sae, **like))
        self.hook_sae_var = HookPoint()  # registered by setup(), which the base __init__ calls next

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ²) of input `x`."""
        sae_in = self.process_sae_in(x)
        mu = F.relu(self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc))
        return mu, self.hook_sae_var(spread(sae_in @ self.W_sig + self.b_sig))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mu, var = self.heads(x)
        exact = getattr(self.cfg, "code", "soft") == "exact"
        return self.hook_sae_acts_post(kind_class(self.kind).inference_code(mu, var, exact=exact))

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """σ² per latent (small = active), which saease's AD reads."""
        return self.heads(x)[1]

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)


@dataclass
class VAEaseSAEConfig(SAEConfig):
    # exact: latents outside the active set are zero (what saease writes by default); soft: the
    # paper's code (and that of folders written before the field existed)
    code: str = "soft"

    @classmethod
    def architecture(cls) -> str:
        return "saease-vaease"


class VAEaseSAE(VariationalSAE):
    kind = "vaease"


@dataclass
class VAESAEConfig(SAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "saease-vae"


class VAESAE(VariationalSAE):
    kind = "vae"


ARCHITECTURES = {"saease-vaease": (VAEaseSAE, VAEaseSAEConfig), "saease-vae": (VAESAE, VAESAEConfig)}


def register() -> None:
    """Register saease's architectures with SAELens (idempotent; done on import)."""
    for name, (sae_class, config_class) in ARCHITECTURES.items():
        if SAE_CLASS_REGISTRY.get(name, (sae_class,))[0] is not sae_class:
            raise RuntimeError(f"SAELens architecture {name!r} is already registered to "
                               f"{SAE_CLASS_REGISTRY[name][0].__name__}")
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, sae_class, config_class)


register()
