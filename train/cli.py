"""`saease train`: fit a dictionary on an activation store.

Settings come in layers, each overriding the one before: TrainConfig's defaults (the paper's
LLM settings), `--config FILE.yaml`, the flags given, and, when `wandb agent` launched the
command, the sweep's `wandb.config`. With `--resume DIR` the checkpoint's settings replace
the defaults, so only what changes (say `--epochs`) needs repeating. `config_from_args` does
that layering and hands `run` the TrainConfig.
"""

from __future__ import annotations

import argparse
import os

from saease.cli import add_field, dataclass_args
from saease.dictionary import kind_names
from saease.errors import SaeaseError
from saease.train import checkpoint
from saease.train.config import DEFAULT_KIND, TrainConfig, config_from_mapping, dictionary_fields, field_names
from saease.train.trainer import train

Config = TrainConfig


def add_arguments(parser) -> None:
    """The run's flags (TrainConfig), --kind, then every kind's dictionary flags; a flag that the
    chosen kind does not have is refused with the kinds that have it."""
    dataclass_args(parser, TrainConfig)
    parser.add_argument("--kind", choices=kind_names(), help=f"dictionary kind (default: {DEFAULT_KIND})")
    group = parser.add_argument_group("dictionary settings (each kind's defaults are its paper's)")
    for name, (f, hint, kinds) in dictionary_fields().items():
        which = "" if len(kinds) == len(kind_names()) else f" [{', '.join(kinds)}]"
        add_field(group, f, hint, help_suffix=which, default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML mapping of settings (flag names, - or _); flags given here override it")
    # Flags not given stay out of the namespace, so `run` can tell them from defaults.
    for action in parser._actions:
        if action.dest in field_names():
            action.default = argparse.SUPPRESS


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig from the parsed flags, layered over --config's YAML, the sweep's
    wandb.config and a resumed checkpoint's settings (see the module's docstring)."""
    given = {k: v for k, v in vars(args).items() if k in set(field_names())}
    values = read_yaml(args.config) if args.config else {}
    values.update(given)
    if values.get("expansion_factor") is not None and values.get("d_latent") is not None:
        raise SaeaseError(f"--expansion-factor {values['expansion_factor']} and --d-latent {values['d_latent']}: "
                          "both set κ; give one")
    if os.environ.get("WANDB_SWEEP_ID"):
        values.update(sweep_values())
    if values.get("resume"):
        saved = checkpoint.load(values["resume"])["train_config"]
        values = {**saved, "out": None, "overwrite": False, **values}
    return TrainConfig.flat(**values)


def run(cfg: TrainConfig) -> dict | None:
    _, summary = train(cfg)
    return summary if int(os.environ.get("RANK", "0")) == 0 else None  # one summary per torchrun job


def read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise SaeaseError(f"--config {path}: no such file") from None
    except yaml.YAMLError as err:
        raise SaeaseError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SaeaseError(f"--config {path}: expected a mapping of settings (e.g. `lr: 0.005`), "
                          f"got a {type(data).__name__}")
    return config_from_mapping(data, f"--config {path}")


def sweep_values() -> dict:
    """The settings `wandb agent` chose for this run (its wandb.config), with W&B logging on."""
    import wandb

    run = wandb.run or wandb.init()
    values = config_from_mapping({k: v for k, v in dict(run.config).items() if not k.startswith("_")},
                                 f"W&B sweep {os.environ.get('WANDB_SWEEP_ID')}")
    return {**values, "wandb": True}

