"""SAE-ℓ1: ẑ = ReLU(x W_enc + b_enc), loss ‖x − x̂‖² + λ1 Σ|ẑ| + λ2 ‖W_dec‖²_F (the paper's SAE;
defaults are its Table 3 settings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from saease.dictionary import Dictionary, DictionaryConfig, knob, register, sq_err


@dataclass
class L1Config(DictionaryConfig):
    lambda1: float = knob(0.32, "sparsity weight λ1")
    lambda2: float = knob(0.2, "decoder Frobenius weight λ2")


@register("sae-l1")
class L1SAE(Dictionary):
    Config = L1Config
    supports_mlp_decoder = True

    def code_from(self, enc):
        return F.relu(enc.pre)

    def penalty(self, z):
        return z.abs().sum(-1).mean()

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        z = self.code_from(self.encoder_output(x))
        mse = sq_err(self.decode_scaled(z), x).mean()
        sparsity, decoder_norm = self.penalty(z), self.W_dec.pow(2).sum()
        return {"loss": mse + self.cfg.lambda1 * sparsity + self.cfg.lambda2 * decoder_norm, "mse": mse,
                "sparsity": sparsity, "decoder_norm": decoder_norm, "fired": z.detach().amax(0) > 0}

    def saelens_export(self):
        return {"architecture": "standard"}, plain_relu_tensors(self)


def plain_relu_tensors(d: Dictionary) -> dict:
    """W_enc, b_enc, W_dec, b_dec in the store's units (the input scale folded in)."""
    s = float(d.cfg.input_scale)
    return {"W_enc": d.W_enc * s, "b_enc": d.b_enc, "W_dec": d.W_dec / s, "b_dec": d.b_dec / s}
