"""SAE-Gated (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs"): one
path decides which latents fire, another how strongly, sharing encoder directions:

    π_gate = x W_enc + b_gate               ẑ = 1{π_gate > 0} ⊙ ReLU(π_mag)
    π_mag  = x (W_enc ⊙ exp r_mag) + b_mag
    loss = ‖x − x̂‖² + λ Σ_j ReLU(π_gate)_j ‖W_dec[j]‖ + ‖x − (ReLU(π_gate) W̄_dec + b̄_dec)‖²

The last (auxiliary) term decodes the gate's activations through a frozen copy of the decoder
(W̄, b̄: no gradient), so the gate path learns to reconstruct although the step 1{·} passes no
gradient; the penalty weighs each latent by its decoder norm, so rescaling rows cannot dodge it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saease.dictionary import Dictionary, DictionaryConfig, EncoderOutput, knob, register, sq_err
from saease.errors import SaeaseError


@dataclass
class GatedConfig(DictionaryConfig):
    lambda1: float = knob(0.1, "sparsity weight λ of the gate's decoder-norm-weighted ℓ1")

    def __post_init__(self):
        super().__post_init__()
        if self.lambda1 < 0:
            raise SaeaseError(f"--lambda1 {self.lambda1}: expected ≥ 0")


class GatedCode(torch.autograd.Function):
    """From the shared projection `proj` = h W_enc: the code 1{π_gate > 0} ⊙ ReLU(π_mag) and the
    gate's activations ReLU(π_gate), fused. The step passes no gradient, so ∂π_mag = ∂z ⊙ 1{z > 0}
    and ∂π_gate = ∂ReLU(π_gate) ⊙ 1{π_gate > 0}; autograd through the same expression keeps
    π_gate, π_mag, both masks and their products. `tests/test_kinds.py` checks it against autograd."""

    @staticmethod
    def forward(ctx, proj: Tensor, r_mag: Tensor, b_mag: Tensor, b_gate: Tensor):
        scale = r_mag.exp()
        gate_acts = torch.add(proj, b_gate).relu_()
        # 1{π_gate > 0} as sign(ReLU(π_gate)): a float mask, as mixing bool and float tensors
        # runs several times slower in PyTorch's CPU kernels
        z = torch.addcmul(b_mag, proj, scale).relu_().mul_(torch.sign(gate_acts))
        ctx.save_for_backward(proj, scale, z, gate_acts)
        return z, gate_acts

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_gate_acts: Tensor):
        proj, scale, z, gate_acts = ctx.saved_tensors
        grad_mag = grad_z * torch.sign(z)  # z ≥ 0, so sign(z) = 1{z > 0}
        grad_gate = grad_gate_acts * torch.sign(gate_acts)
        grad_r = (grad_mag * proj).sum(0) * scale
        grad_b_mag, grad_b_gate = grad_mag.sum(0), grad_gate.sum(0)
        return grad_mag.mul_(scale).add_(grad_gate), grad_r, grad_b_mag, grad_b_gate


@register("sae-gated")
class GatedSAE(Dictionary):
    Config = GatedConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.r_mag = torch.nn.Parameter(torch.zeros(cfg.d_latent))
        self.b_mag = torch.nn.Parameter(torch.zeros(cfg.d_latent))
        # the base class's b_enc is the gate's bias b_gate

    def encoder_output(self, x_scaled):
        h = self.trunk(x_scaled)
        proj = h @ self.W_enc
        return EncoderOutput(pre=proj * self.r_mag.exp() + self.b_mag, gate=proj + self.b_enc)

    def code_from(self, enc):
        return (enc.gate > 0) * F.relu(enc.pre)

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        z, gate_acts = GatedCode.apply(self.trunk(x) @ self.W_enc, self.r_mag, self.b_mag, self.b_enc)
        mse = sq_err(self.decode_scaled(z), x).mean()
        sparsity = gate_acts.sum(0) @ self.W_dec.norm(dim=1) / len(x)
        frozen = self.dec_trunk(gate_acts) @ self.W_dec.detach() + self.b_dec.detach()
        aux = sq_err(frozen, x).mean()
        return {"loss": mse + self.cfg.lambda1 * sparsity + aux, "mse": mse, "sparsity": sparsity,
                "aux": aux.detach(), "fired": z.detach().amax(0) > 0}

    def saelens_export(self):
        s = float(self.cfg.input_scale)
        return {"architecture": "gated"}, {
            "W_enc": self.W_enc * s, "b_gate": self.b_enc, "b_mag": self.b_mag, "r_mag": self.r_mag,
            "W_dec": self.W_dec / s, "b_dec": self.b_dec / s}
