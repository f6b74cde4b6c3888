"""SAE-TopK: ẑ = the k largest of ReLU(x W_enc + b_enc) per row, loss ‖x − x̂‖² (+ the auxiliary-k
loss that revives dead latents), decoder rows kept at unit norm.

Dead latents (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): a latent that has
not fired for `dead_after` training rows is dead. The auxiliary loss asks the `aux_k` largest
dead pre-activations to reconstruct the residual e = x − x̂ (held fixed), so their encoder and
decoder rows get a gradient again: aux = ‖e − ê‖², weighted by `aux_coef`·min(1, dead/aux_k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from saease.dictionary import Dictionary, DictionaryConfig, knob, register, sq_err, topk_mask
from saease.errors import SaeaseError


@dataclass
class TopKConfig(DictionaryConfig):
    k: int = knob(30, "active latents kept per row")
    aux_k: int | None = knob(None, "dead latents the auxiliary loss uses (default: d_in/2, at most κ)")
    aux_coef: float = knob(1 / 32, "weight of the auxiliary-k loss (0 turns it off)")
    dead_after: int = knob(1_000_000, "training rows without firing after which a latent counts as dead")

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.k <= self.d_latent:
            raise SaeaseError(f"--k {self.k}: expected 1 ≤ k ≤ d_latent = {self.d_latent}")
        if self.aux_k is not None and self.aux_k < 1:
            raise SaeaseError(f"--aux-k {self.aux_k}: expected a positive integer")
        if self.aux_coef < 0 or self.dead_after < 1:
            raise SaeaseError(f"--aux-coef {self.aux_coef} / --dead-after {self.dead_after}: expected "
                              "aux-coef ≥ 0 and dead-after ≥ 1")


@register("sae-topk")
class TopKSAE(Dictionary):
    Config = TopKConfig
    unit_norm_decoder = True

    def __init__(self, cfg):
        super().__init__(cfg)
        # training rows since each latent last fired (saved, so a resumed run sees the same dead set)
        self.register_buffer("rows_since_fired", torch.zeros(cfg.d_latent, dtype=torch.long))

    def code_from(self, enc):
        return topk_mask(F.relu(enc.pre), self.cfg.k)

    def train_code(self, enc):
        """The code the training loss decodes (BatchTopK: top k·B over the whole batch)."""
        return self.code_from(enc)

    def reconstruction_loss(self, z, x):
        """(the reconstruction term of the loss, ‖x − x̂‖² of the whole code), both batch means."""
        mse = sq_err(self.decode_scaled(z), x).mean()
        return mse, mse

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        enc = self.encoder_output(x)
        z = self.train_code(enc)
        recon, mse = self.reconstruction_loss(z, x)
        fired = (z > 0).any(0)
        terms = {"mse": mse, "fired": fired, "l0": (z != 0).sum(-1).float().mean()}
        aux = self.aux_loss(enc, z, x)
        terms["loss"] = recon if aux is None else recon + aux
        if aux is not None:
            terms["aux"] = aux.detach()
        with torch.no_grad():  # dead-latent bookkeeping, over the global batch
            fired_any = self.sum_(fired.long())
            rows = self.sum_(torch.tensor(len(x), device=x.device))
            self.rows_since_fired.add_(rows).masked_fill_(fired_any > 0, 0)
        return terms

    def aux_loss(self, enc, z, x):
        """The auxiliary-k loss on the dead latents (None when none are dead or it is off)."""
        c = self.cfg
        dead = self.rows_since_fired >= c.dead_after
        n_dead = int(dead.sum())
        if c.aux_coef == 0 or n_dead == 0:
            return None
        aux_k = min(c.aux_k or max(c.d_in // 2, 1), n_dead)
        residual = (x - self.decode_scaled(z)).detach()
        dead_pre = F.relu(enc.pre).masked_fill(~dead, 0)
        z_aux = topk_mask(dead_pre, aux_k)
        weight = c.aux_coef * min(1.0, n_dead / aux_k)
        return weight * sq_err(z_aux @ self.W_dec, residual).mean()

    def saelens_export(self):
        from saease.kinds.sae_l1 import plain_relu_tensors

        return {"architecture": "topk", "k": self.cfg.k, "rescale_acts_by_decoder_norm": False}, \
            plain_relu_tensors(self)
