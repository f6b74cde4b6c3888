"""SAE-BatchTopK (Bussmann et al. 2024): at train time keep the k·B largest of ReLU(x W_enc + b_enc)
over the whole batch of B rows (so rows share a budget of k on average, not k each); at
inference a single learned threshold θ replaces the batch: ẑ = ReLU(pre) where pre > θ.

θ is estimated during training, as dictionary_learning does: each step's smallest kept
activation, averaged with an exponential moving average (decay `threshold_decay`, 0.99 as in SAELens). Decoder rows
are unit norm; dead latents get the auxiliary-k loss (see sae_topk). In SAELens's format it is a
JumpReLU SAE with every threshold θ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from saease.dictionary import knob, register
from saease.errors import SaeaseError
from saease.kinds.sae_topk import SparseCode, TopKConfig, TopKSAE


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_decay: float = knob(0.99, "EMA decay of the inference threshold's estimate (SAELens: 1 − topk_threshold_lr = 0.99)")

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.threshold_decay < 1:
            raise SaeaseError(f"--threshold-decay {self.threshold_decay}: expected a value in [0, 1)")


@register("sae-batchtopk")
class BatchTopKSAE(TopKSAE):
    Config = BatchTopKConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def code_from(self, enc):
        acts = F.relu(enc.pre)
        if self.threshold < 0:  # untrained: fall back to per-row top-k
            return super().code_from(enc)
        return acts * (acts > self.threshold)

    def train_code(self, enc):
        z = SparseCode.top_k_of_batch(F.relu(enc.pre), self.cfg.k)
        if self.training:
            self.update_threshold(z)
        return z

    @torch.no_grad()
    def update_threshold(self, z: SparseCode) -> None:
        kept = z.values[z.values > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min()
        if self.all_reduce is not None:  # the mean over processes of each one's smallest
            both = self.all_reduce(torch.stack([smallest, torch.ones_like(smallest)]))
            smallest = both[0] / both[1]
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, 1 - self.cfg.threshold_decay)

    def saelens_export(self):
        """SAELens's jumprelu with every threshold θ, as SAELens itself saves a trained BatchTopK
        SAE for inference; before θ is estimated the code is per-row top-k, so topk."""
        from saease.kinds.sae_l1 import plain_relu_tensors

        if self.threshold < 0:
            return super().saelens_export()
        tensors = plain_relu_tensors(self)
        # the code (hence θ) is the same number in both: the input scale is folded into W_enc
        tensors["threshold"] = torch.full((self.cfg.d_latent,), float(self.threshold))
        return {"architecture": "jumprelu"}, tensors
