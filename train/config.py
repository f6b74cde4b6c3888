"""The training configuration; its fields are also the `saease train` flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from saease.dictionary import ENCODERS, GAMMA_MODES, KINDS


@dataclass
class TrainConfig:
    data: str | None = field(default=None, metadata={"help": "activation store (default: the newest under ./activations)"})
    kind: str = field(default="vaease", metadata={"help": "dictionary kind", "choices": KINDS})
    d_latent: int = field(default=300, metadata={"help": "latent width κ"})
    out: str | None = field(default=None, metadata={"help": "output folder (default: dictionaries/<store>-<kind>-<κ>)"})
    encoder: str = field(default="text", metadata={"help": "text: ReLU mean head; authors: Linear(d,2κ)+Swish split",
                                                   "choices": ENCODERS})
    encoder_layers: int = field(default=1, metadata={"help": "1 = linear heads; N > 1 = Swish MLP (hidden 2κ)"})
    decoder_layers: int = field(default=1, metadata={"help": "1 = linear dictionary; N > 1 = MLP decoder"})
    epochs: int = field(default=35, metadata={"help": "passes over the training rows"})
    batch_size: int = field(default=2048, metadata={"help": "vectors per step"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    t0: int = field(default=5, metadata={"help": "CosineAnnealingWarmRestarts T_0, in steps"})
    t_mult: int = field(default=2, metadata={"help": "CosineAnnealingWarmRestarts T_mult"})
    lambda1: float = field(default=0.0, metadata={"help": "sparsity weight (sae-l1, sae-log)"})
    lambda2: float = field(default=0.0, metadata={"help": "decoder Frobenius weight (sae-l1, sae-log)"})
    k: int | None = field(default=None, metadata={"help": "active latents kept (sae-topk)"})
    gamma: str = field(default="optimal", metadata={"help": "VAE decoder variance: optimal (batch γ*) or learned",
                                                   "choices": GAMMA_MODES})
    gamma_floor: float = field(default=1e-6, metadata={"help": "lower bound on γ, in normalized units"})
    log_gamma_init: float = field(default=0.0, metadata={"help": "initial log γ (learned mode)"})
    normalize: bool = field(default=True, metadata={"help": "scale inputs to mean norm sqrt(d_in)"})
    holdout: float = field(default=0.1, metadata={"help": "fraction of rows held out for eval"})
    buffer_shards: int = field(default=4, metadata={"help": "shards mixed together when shuffling"})
    seed: int = field(default=0, metadata={"help": "seed for init, shuffling and the held-out split"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N (default: cuda when present)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
