"""The training configuration; its fields are also the `saease train` flags.

The defaults are the paper's LLM settings (Table 3): VAEase, κ = 300, batch 2048, lr 5e-3,
35 epochs, Adam, CosineAnnealingWarmRestarts(T_0 = 5, T_mult = 2) stepped every batch. The
sparsity knobs left unset take the paper's value for the kind (`PAPER_KNOBS`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields

from saease.dictionary import ENCODERS, GAMMA_MODES, KINDS
from saease.errors import SaeaseError

PRECISIONS = ("fp32", "bf16")

# The paper's Table 3 settings per kind: (λ1, λ2, k).
PAPER_KNOBS = {
    "sae-l1": {"lambda1": 0.32, "lambda2": 0.2},
    "sae-log": {"lambda1": 0.01, "lambda2": 0.2},
    "sae-topk": {"k": 30},
}


def opt(default, doc: str, **metadata):
    """A TrainConfig field: its default and its --help text (plus argparse extras: choices)."""
    return field(default=default, metadata={"help": doc, **metadata})


@dataclass
class TrainConfig:
    # ---- data and output -----------------------------------------------------------------
    data: str | None = opt(None, "activation store (default: the newest under ./activations)")
    out: str | None = opt(None, "output folder (default: dictionaries/<store>-<kind>-<κ>)")
    resume: str | None = opt(None, "continue the run whose output folder (or checkpoint.pt) this is")
    overwrite: bool = opt(False, "start afresh even if --out holds an unfinished run")
    # ---- the dictionary ------------------------------------------------------------------
    kind: str = opt("vaease", "dictionary kind", choices=KINDS)
    d_latent: int = opt(300, "latent width κ")
    encoder: str = opt("text", "text: ReLU mean head; authors: Linear(d,2κ)+Swish split; residual: residual MLP "
                       "trunk", choices=ENCODERS)
    encoder_layers: int = opt(1, "1 = linear heads; N > 1 = Swish MLP (hidden 2κ) or N residual blocks")
    encoder_hidden: int | None = opt(None, "deep encoders' width (default: 2κ Swish MLP, 8κ residual)")
    decoder_layers: int = opt(1, "1 = linear dictionary; N > 1 = MLP decoder")
    lambda1: float | None = opt(None, "sparsity weight (default: the paper's, sae-l1 0.32, sae-log 0.01)")
    lambda2: float | None = opt(None, "decoder Frobenius weight (default: the paper's 0.2 for sae-l1/sae-log)")
    k: int | None = opt(None, "active latents kept (sae-topk; default: the paper's 30)")
    gamma: str = opt("optimal", "VAE decoder variance: optimal (batch γ*) or learned", choices=GAMMA_MODES)
    gamma_floor: float = opt(1e-6, "lower bound on γ, in normalized units")
    log_gamma_init: float = opt(0.0, "initial log γ (learned mode)")
    sigma_init: float = opt(0.5, "VAE kinds: the σ² every latent starts at")
    normalize: bool = opt(True, "scale inputs to mean norm sqrt(d_in), estimated from the store")
    # ---- optimisation --------------------------------------------------------------------
    epochs: int = opt(35, "passes over the training rows")
    max_steps: int | None = opt(None, "stop after this many steps in all (default: all epochs)")
    batch_size: int = opt(2048, "vectors per step (the global batch, over all processes)")
    lr: float = opt(5e-3, "Adam learning rate")
    t0: int = opt(5, "CosineAnnealingWarmRestarts T_0, in steps")
    t_mult: int = opt(2, "CosineAnnealingWarmRestarts T_mult")
    seed: int = opt(0, "seed for init, shuffling, noise and the held-out split")
    # ---- streaming -----------------------------------------------------------------------
    holdout: float = opt(0.1, "fraction of rows held out for eval")
    buffer_shards: int = opt(4, "shards mixed together when shuffling")
    prefetch: int = opt(4, "batches read ahead by the loader thread")
    # ---- devices and speed ---------------------------------------------------------------
    device: str | None = opt(None, "cpu, cuda, cuda:N (default: cuda when present)")
    precision: str = opt("fp32", "fp32, or bf16 autocast (CUDA only)", choices=PRECISIONS)
    compile: bool = opt(False, "torch.compile the loss (CUDA only)")
    fused: bool = opt(True, "hand-written step for linear dictionaries (else autograd)")
    threads: int | None = opt(None, "CPU threads for torch during the run (default: torch's choice)")
    # ---- checkpoints and logging ---------------------------------------------------------
    checkpoint_every: int = opt(1000, "steps between checkpoints (0: only at the end)")
    log_every: int = opt(50, "steps between metric logs")
    progress: bool = opt(True, "show a progress bar")
    wandb: bool = opt(False, "log to Weights & Biases (WANDB_MODE=offline works offline)")
    wandb_project: str = opt("saease", "W&B project")
    wandb_entity: str | None = opt(None, "W&B entity (team or user)")
    wandb_run_name: str | None = opt(None, "W&B run name")

    def resolved(self) -> "TrainConfig":
        """A copy with the paper's knobs filled in for this kind, after checking every value."""
        for name in ("epochs", "batch_size", "d_latent", "t0", "t_mult", "buffer_shards", "prefetch", "log_every"):
            if int(getattr(self, name)) < 1:
                raise SaeaseError(f"--{flag(name)} {getattr(self, name)}: expected a positive integer")
        for name in ("max_steps", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SaeaseError(f"--{flag(name)} {getattr(self, name)}: expected a positive integer")
        if self.checkpoint_every < 0:
            raise SaeaseError(f"--checkpoint-every {self.checkpoint_every}: expected 0 (end only) or a positive step count")
        if not self.lr > 0:
            raise SaeaseError(f"--lr {self.lr}: expected a positive learning rate")
        if not 0 <= self.holdout < 1:
            raise SaeaseError(f"--holdout {self.holdout}: expected a fraction in [0, 1)")
        if self.kind not in KINDS:
            raise SaeaseError(f"--kind {self.kind!r}: choose from {', '.join(KINDS)}")
        if self.precision not in PRECISIONS:
            raise SaeaseError(f"--precision {self.precision!r}: choose from {', '.join(PRECISIONS)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in PAPER_KNOBS.get(self.kind, {}).items():
            if values[name] is None:
                values[name] = value
        values["lambda1"] = values["lambda1"] or 0.0
        values["lambda2"] = values["lambda2"] or 0.0
        return TrainConfig(**values)


def flag(name: str) -> str:
    return name.replace("_", "-")


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def config_from_mapping(values: dict, what: str) -> dict:
    """Check a {name: value} mapping (a YAML file, a W&B config) against TrainConfig's fields
    and convert each value to its field's type; names may use - or _."""
    hints = typing.get_type_hints(TrainConfig)
    out, unknown = {}, []
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            unknown.append(str(key))
            continue
        out[name] = _coerce(value, hints[name], f"{what}: {key}")
    if unknown:
        raise SaeaseError(f"{what}: unknown setting(s) {', '.join(sorted(unknown))}; expected names of "
                          f"`saease train` flags such as kind, d_latent, lr, lambda1, k, epochs")
    return out


def _coerce(value, hint, what: str):
    """`value` as the type `hint` names (YAML reads 5e-3 as a string, W&B sends ints for floats)."""
    types_ = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if value is None:
        if len(types_) < len(typing.get_args(hint) or (hint,)):
            return None
        raise SaeaseError(f"{what}: a value is required")
    tp = types_[0]
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise SaeaseError(f"{what}: {value!r} is not a valid {tp.__name__}") from None
