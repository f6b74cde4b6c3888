"""SAE-log: as SAE-ℓ1 with the log penalty λ1 Σ log(|ẑ| + ε) (the paper's; Table 3 defaults)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saease.dictionary import knob, register
from saease.kinds.sae_l1 import L1SAE, L1Config

LOG_EPS = 1e-4  # ε of the log penalty


@dataclass
class LogConfig(L1Config):
    lambda1: float = knob(0.01, "sparsity weight λ1")
    lambda2: float = knob(0.2, "decoder Frobenius weight λ2")


class ReLULogSum(torch.autograd.Function):
    """(z, Σ log(z + ε)) with z = ReLU(pre), fused as `ReLUSum` is (|z| = z, as z ≥ 0); the
    backward is (∂z + ∂Σ/(z + ε)) ⊙ 1{z > 0}. `tests/test_kinds.py` checks it against autograd."""

    @staticmethod
    def forward(ctx, pre: Tensor):
        z = torch.relu(pre)
        ctx.save_for_backward(z)
        return z, (z + LOG_EPS).log_().sum()

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_sum: Tensor):
        (z,) = ctx.saved_tensors
        return (z + LOG_EPS).reciprocal_().mul_(grad_sum).add_(grad_z).mul_(torch.sign(z))


@register("sae-log")
class LogSAE(L1SAE):
    Config = LogConfig

    def code_and_penalty(self, pre):
        return ReLULogSum.apply(pre)
