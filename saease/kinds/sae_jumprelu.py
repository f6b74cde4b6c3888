"""SAE-JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"): per-latent learned thresholds θ,

    ẑ = pre · H(pre − θ),   pre = x W_enc + b_enc,   θ > 0 learned directly
    loss = ‖x − x̂‖² + λ Σ_j H(pre_j − θ_j)            (an L0 penalty)

H's derivative is zero almost everywhere, so θ learns through straight-through estimators:
d/dθ H(pre − θ) ≈ −K((pre − θ)/ε)/ε and d/dθ [pre·H(pre − θ)] ≈ −θ·K((pre − θ)/ε)/ε, with K the
rectangle kernel 1{|u| < ½} and ε the bandwidth. These are the exact derivatives of the
kernel-smoothed step, which `tests/test_kinds.py` checks by finite differences. Decoder rows are
unit norm, as in the paper.

θ is a plain parameter, kept ≥ `MIN_THRESHOLD` after each step (as dictionary_learning has it), not
exp(log θ): Adam moves each parameter by about lr a step, so a log-parameterised θ starting at
0.01 can only grow by a factor e^(lr·steps) — on a 350-step run, to 0.06, far below the
pre-activations' scale, whatever the L0 coefficient (measured: L0 51.2 for λ = 0.1, 1 and 30).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saease.dictionary import Dictionary, DictionaryConfig, knob, register, sq_err
from saease.errors import SaeaseError


@dataclass
class JumpReLUConfig(DictionaryConfig):
    l0_coef: float = knob(1.0, "weight λ of the L0 penalty")
    bandwidth: float = knob(0.05, "kernel bandwidth ε of the threshold's straight-through gradient")
    threshold_init: float = knob(0.01, "initial threshold θ (normalized units)")

    def __post_init__(self):
        super().__post_init__()
        if self.l0_coef < 0 or self.bandwidth <= 0 or self.threshold_init <= 0:
            raise SaeaseError(f"--l0-coef {self.l0_coef} / --bandwidth {self.bandwidth} / --threshold-init "
                              f"{self.threshold_init}: expected l0-coef ≥ 0, bandwidth > 0, threshold-init > 0")


MIN_THRESHOLD = 1e-6


class JumpReLUWithL0(torch.autograd.Function):
    """(z, Σ H(pre − θ)) with z = pre · H(pre − θ): the code and its L0, in one pass over
    pre, with the straight-through gradients for θ,

        ∂z/∂θ ≈ −θ K((pre − θ)/ε)/ε,   ∂H/∂θ ≈ −K((pre − θ)/ε)/ε,   K(u) = 1{|u| < ½},

    and ∂z/∂pre = H(pre − θ) (none through the L0). Autograd through separate JumpReLU and step
    functions would compare pre with θ, and form the kernel, twice. Masks are float tensors:
    PyTorch's CPU kernels that mix bool and float tensors run several times slower."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        fires = torch.gt(pre, threshold, out=torch.empty_like(pre))  # 1{pre > θ}, a float mask
        ctx.save_for_backward(pre, threshold, fires)
        ctx.bandwidth = bandwidth
        return pre * fires, fires.sum()

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_l0: Tensor):
        pre, threshold, fires = ctx.saved_tensors
        eps = ctx.bandwidth
        near = (pre - threshold).abs_()
        torch.lt(near, eps / 2, out=near)  # K((pre − θ)/ε), a float mask
        n_near = near.sum(0)
        grad_threshold = -(threshold * near.mul_(grad_z).sum(0) + grad_l0 * n_near) / eps
        return grad_z * fires, grad_threshold, None


@register("sae-jumprelu")
class JumpReLUSAE(Dictionary):
    Config = JumpReLUConfig
    unit_norm_decoder = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.threshold = torch.nn.Parameter(torch.full((cfg.d_latent,), float(cfg.threshold_init)))

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=MIN_THRESHOLD)  # a non-positive θ would let negative pre through

    def code_from(self, enc):
        return enc.pre * (enc.pre > self.threshold)

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        pre = self.encoder_output(x).pre
        theta, eps = self.threshold, self.cfg.bandwidth
        z, l0_sum = JumpReLUWithL0.apply(pre, theta, eps)
        mse = sq_err(self.decode_scaled(z), x).mean()
        l0 = l0_sum / len(x)
        return {"loss": mse + self.cfg.l0_coef * l0, "mse": mse, "l0": l0.detach(), "fired": z.detach().amax(0) > 0}

    def saelens_export(self):
        from saease.kinds.sae_l1 import plain_relu_tensors

        tensors = plain_relu_tensors(self)
        tensors["threshold"] = self.threshold  # codes are the same numbers in both (scale folded into W_enc)
        return {"architecture": "jumprelu"}, tensors
