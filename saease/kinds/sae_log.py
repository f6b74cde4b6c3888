"""SAE-log: as SAE-ℓ1 with the log penalty λ1 Σ log(|ẑ| + ε) (the paper's; Table 3 defaults)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saease.dictionary import knob, register
from saease.kinds.sae_l1 import L1SAE, L1Config

LOG_EPS = 1e-4  # ε of the log penalty


@dataclass
class LogConfig(L1Config):
    lambda1: float = knob(0.01, "sparsity weight λ1")
    lambda2: float = knob(0.2, "decoder Frobenius weight λ2")


@register("sae-log")
class LogSAE(L1SAE):
    Config = LogConfig

    def penalty(self, z):
        return torch.log(z.abs() + LOG_EPS).sum(-1).mean()
