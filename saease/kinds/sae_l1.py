"""SAE-ℓ1: ẑ = ReLU(x W_enc + b_enc), loss ‖x − x̂‖² + λ1 Σ|ẑ| + λ2 ‖W_dec‖²_F (the paper's SAE;
defaults are its Table 3 settings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saease.dictionary import Dictionary, DictionaryConfig, knob, register, sq_err


@dataclass
class L1Config(DictionaryConfig):
    lambda1: float = knob(0.32, "sparsity weight λ1")
    lambda2: float = knob(0.2, "decoder Frobenius weight λ2")


class ReLUSum(torch.autograd.Function):
    """(z, Σ z) with z = ReLU(pre): the code and its ℓ1 norm (Σ|z| = Σ z, as z ≥ 0), fused.

    Autograd through relu → abs → sum allocates and passes over a batch × κ tensor for each
    op, and abs's backward takes two more (sign, multiply); here the backward is
    (∂z + ∂Σ) ⊙ 1{z > 0}, the mask a float tensor (PyTorch's CPU kernels that mix bool and float
    tensors run several times slower than float ones). `tests/test_kinds.py` checks it against
    autograd."""

    @staticmethod
    def forward(ctx, pre: Tensor):
        z = torch.relu(pre)
        ctx.save_for_backward(z)
        return z, z.sum()

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_sum: Tensor):
        (z,) = ctx.saved_tensors
        return (grad_z + grad_sum).mul_(torch.sign(z))  # sign(z) = 1{z > 0} as z ≥ 0, a float mask


@register("sae-l1")
class L1SAE(Dictionary):
    Config = L1Config
    supports_mlp_decoder = True

    def code_from(self, enc):
        return F.relu(enc.pre)

    def code_and_penalty(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """The training code ReLU(pre) and its penalty summed over the batch: Σ|z|."""
        return ReLUSum.apply(pre)

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        z, penalty_sum = self.code_and_penalty(self.encoder_output(x).pre)
        mse = sq_err(self.decode_scaled(z), x).mean()
        sparsity, decoder_norm = penalty_sum / len(x), self.W_dec.pow(2).sum()
        return {"loss": mse + self.cfg.lambda1 * sparsity + self.cfg.lambda2 * decoder_norm, "mse": mse,
                "sparsity": sparsity, "decoder_norm": decoder_norm, "fired": z.detach().amax(0) > 0}

    def saelens_export(self):
        return {"architecture": "standard"}, plain_relu_tensors(self)


def plain_relu_tensors(d: Dictionary) -> dict:
    """W_enc, b_enc, W_dec, b_dec in the store's units (the input scale folded in)."""
    s = float(d.cfg.input_scale)
    return {"W_enc": d.W_enc * s, "b_enc": d.b_enc, "W_dec": d.W_dec / s, "b_dec": d.b_dec / s}
