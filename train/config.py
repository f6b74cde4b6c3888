"""The training configuration: the dictionary's config nested inside the run's settings.

    TrainConfig
    ├── dictionary: the kind's config (saease/kinds/*: d_latent, k, lambda1, sigma_init, …)
    └── the run: data, out, epochs, batch_size, lr, devices, checkpoints, logging

Flags, YAML files and W&B sweeps all name settings flat (`--kind sae-topk --k 32 --lr 1e-3`);
`TrainConfig.flat` sorts them into the two levels, and `flat_values` writes them back. The
defaults are the paper's LLM settings (Table 3): VAEase, κ = 300, batch 2048, lr 5e-3, 35
epochs, Adam, CosineAnnealingWarmRestarts(T_0 = 5, T_mult = 2) stepped every batch; each kind's
own knobs default to the paper's values in its config.

Fields marked `fixed` (and every dictionary setting) must match when a run is resumed.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Literal

from saease.cli import option
from saease.dictionary import DictionaryConfig, config_class, flag, kind_names, make_config
from saease.errors import SaeaseError

DEFAULT_KIND = "vaease"


def opt(default, doc: str, *, fixed: bool = False, **metadata):
    """A TrainConfig field: saease.cli.option, plus whether a resume must keep it."""
    return option(default, doc, fixed=fixed, **metadata)


@dataclass
class TrainConfig:
    dictionary: DictionaryConfig = field(default_factory=lambda: make_config(DEFAULT_KIND),
                                         metadata={"cli": False})
    # ---- data and output -----------------------------------------------------------------
    data: str | None = opt(None, "activation store (default: the newest under ./activations)")
    out: str | None = opt(None, "output folder (default: dictionaries/<model>-<hook>-<kind>-<κ>)")
    resume: str | None = opt(None, "continue the run whose output folder (or checkpoint.pt) this is")
    overwrite: bool = opt(False, "replace a finished dictionary or an unfinished run in --out")
    expansion_factor: int | None = opt(None, "κ = N·d_in (instead of --d-latent)")
    normalize: bool = opt(True, "scale inputs to mean norm sqrt(d_in), estimated from the store", fixed=True)
    # ---- optimisation --------------------------------------------------------------------
    epochs: int = opt(35, "passes over the training rows")
    max_steps: int | None = opt(None, "stop after this many steps in all (default: all epochs)")
    batch_size: int = opt(2048, "vectors per step (the global batch, over all processes)", fixed=True)
    lr: float = opt(5e-3, "Adam learning rate", fixed=True)
    t0: int = opt(5, "CosineAnnealingWarmRestarts T_0, in steps", fixed=True)
    t_mult: int = opt(2, "CosineAnnealingWarmRestarts T_mult", fixed=True)
    seed: int = opt(0, "seed for init, shuffling, noise and the held-out split", fixed=True)
    # ---- streaming -----------------------------------------------------------------------
    holdout: float = opt(0.1, "fraction of rows held out for eval", fixed=True)
    buffer_shards: int = opt(4, "shards mixed together when shuffling", fixed=True)
    prefetch: int = opt(4, "batches read ahead by the loader thread")
    # ---- devices and speed ---------------------------------------------------------------
    device: str | None = opt(None, "cpu, cuda, cuda:N (default: cuda when present)")
    precision: Literal["fp32", "bf16"] = opt("fp32", "fp32, or bf16 autocast (CUDA only)")
    compile: bool = opt(False, "torch.compile the loss (CUDA only)")
    threads: int | None = opt(None, "CPU threads for torch during the run (default: torch's choice)")
    # ---- checkpoints and logging ---------------------------------------------------------
    checkpoint_every: int = opt(1000, "steps between checkpoints (0: only at the end)")
    log_every: int = opt(50, "steps between metric logs")
    progress: bool = opt(True, "show a progress bar")
    wandb: bool = opt(False, "log to Weights & Biases (WANDB_MODE=offline works offline)")
    wandb_project: str = opt("saease", "W&B project")
    wandb_entity: str | None = opt(None, "W&B entity (team or user)")
    wandb_run_name: str | None = opt(None, "W&B run name")

    @property
    def kind(self) -> str:
        return self.dictionary.kind

    # ---- flat names: flags, YAML, sweeps -------------------------------------------------

    @classmethod
    def flat(cls, **values) -> "TrainConfig":
        """A config from flat settings: `kind`, the kind's fields and the run's fields."""
        values = dict(values)
        kind = values.pop("kind", None) or DEFAULT_KIND
        run_names = run_field_names()
        run = {k: v for k, v in values.items() if k in run_names}
        return cls(dictionary=make_config(kind, **{k: v for k, v in values.items() if k not in run_names}), **run)

    def flat_values(self) -> dict:
        """The settings as flat names (the inverse of `flat`); records are left out."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dictionary"}
        out["kind"] = self.kind
        out.update({f.name: getattr(self.dictionary, f.name) for f in fields(self.dictionary)
                    if f.metadata.get("cli", True)})
        return out

    def with_(self, **values) -> "TrainConfig":
        """A copy with some flat settings changed; a new `kind` keeps the settings it shares."""
        base = self.flat_values()
        kind = values.get("kind", base["kind"])
        if kind != base["kind"]:
            own = {f.name for f in fields(config_class(kind))}
            base = {k: v for k, v in base.items() if k in own or k in run_field_names() or k == "kind"}
        return TrainConfig.flat(**{**base, **values})

    def fixed_values(self) -> dict:
        """What a resumed run must share with its checkpoint: the dictionary's settings and the
        run's `fixed` fields."""
        run_only = {f.name for f in fields(self) if not f.metadata.get("fixed")} - {"dictionary"}
        return {k: v for k, v in self.flat_values().items() if k not in run_only}

    def checked(self) -> "TrainConfig":
        """Self, after checking every run setting (the dictionary config checks its own)."""
        for name in ("epochs", "batch_size", "t0", "t_mult", "buffer_shards", "prefetch", "log_every"):
            if int(getattr(self, name)) < 1:
                raise SaeaseError(f"--{flag(name)} {getattr(self, name)}: expected a positive integer")
        for name in ("max_steps", "threads", "expansion_factor"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SaeaseError(f"--{flag(name)} {getattr(self, name)}: expected a positive integer")
        if self.checkpoint_every < 0:
            raise SaeaseError(f"--checkpoint-every {self.checkpoint_every}: expected 0 (end only) or a positive step count")
        if not self.lr > 0:
            raise SaeaseError(f"--lr {self.lr}: expected a positive learning rate")
        if not 0 <= self.holdout < 1:
            raise SaeaseError(f"--holdout {self.holdout}: expected a fraction in [0, 1)")
        if self.precision not in typing.get_args(typing.get_type_hints(TrainConfig)["precision"]):
            raise SaeaseError(f"--precision {self.precision!r}: choose from fp32, bf16")
        return self


def run_field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig) if f.name != "dictionary"}


def dictionary_fields() -> dict[str, tuple]:
    """Every kind's settable dictionary fields: name → (dataclass field, type hint, [kinds])."""
    out: dict[str, tuple] = {}
    for kind in kind_names():
        cls = config_class(kind)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if not f.metadata.get("cli", True):
                continue
            if f.name in out:
                out[f.name][2].append(kind)
            else:
                out[f.name] = (f, hints[f.name], [kind])
    return out


def field_names() -> list[str]:
    """Every flat setting name: the run's fields, kind, and every kind's dictionary fields."""
    return sorted(run_field_names() | {"kind"} | set(dictionary_fields()))


def config_from_mapping(values: dict, what: str) -> dict:
    """Check a {name: value} mapping (a YAML file, a W&B config) against the flat setting names
    and convert each value to its field's type; names may use - or _."""
    hints = typing.get_type_hints(TrainConfig)
    hints.update({name: hint for name, (_, hint, _) in dictionary_fields().items()})
    hints["kind"] = str
    out, unknown = {}, []
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in hints or name == "dictionary":
            unknown.append(str(key))
            continue
        out[name] = coerce(value, hints[name], f"{what}: {key}")
    if unknown:
        raise SaeaseError(f"{what}: unknown setting(s) {', '.join(sorted(unknown))}; expected names of "
                          f"`saease train` flags such as kind, d_latent, lr, lambda1, k, epochs")
    return out


def coerce(value, hint, what: str):
    """`value` as the type `hint` names (YAML reads 5e-3 as a string, W&B sends ints for floats)."""
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise SaeaseError(f"{what}: {value!r}: choose from {', '.join(map(str, typing.get_args(hint)))}")
        return value
    args = typing.get_args(hint)
    types_ = [t for t in args or (hint,) if t is not type(None)]
    if value is None:
        if len(types_) < len(args or (hint,)):
            return None
        raise SaeaseError(f"{what}: a value is required")
    tp = types_[0]
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
        return [coerce(v, item, what) for v in items]
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


def from_saved(saved: dict) -> TrainConfig:
    """A TrainConfig from the `flat_values()` a checkpoint saved."""
    return TrainConfig.flat(**saved)


