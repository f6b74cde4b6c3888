"""The `saease` command line: one sub-command per stage, each a dataclass config.

Each command module exposes `Config` (a dataclass whose fields are the flags) and
`run(cfg) -> dict` (the JSON summary). `dataclass_args` turns the fields into argparse
flags: `d_latent: int = 300` becomes `--d-latent 300`, the field's `help` metadata its help.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import types
import typing

from saease.errors import SaeaseError

# command -> (module, help). Imported lazily so `saease --help` is instant.
COMMANDS = {
    "harvest": ("saease.harvest.cli", "hook a model layer over a dataset and write an activation store"),
    "train": ("saease.train.cli", "train a dictionary on an activation store"),
    "eval": ("saease.eval.cli", "evaluate dictionaries: RE, AD, masking curves, top tokens"),
    "compare": ("saease.eval.compare", "compare dictionaries in the paper's Table 3 layout"),
    "import": ("saease.importer", "bring an array (.npy/.pt/.safetensors) in as a store"),
    "synth": ("saease.synth_cli", "make the paper's synthetic datasets as stores"),
    "saelens": ("saease.saelens", "export dictionaries to SAELens's format or import SAELens SAEs"),
    "sweep": ("saease.train.sweep", "run or register a W&B sweep"),
    "reproduce": ("saease.recipes.reproduce", "reproduce the paper's tables end to end"),
    "demo": ("saease.recipes.demo", "two-minute offline quickstart: VAEase vs VAE on subspaces"),
    "quickstart": ("saease.recipes.quickstart", "offline end to end on the shipped plays model: harvest, train, eval, splice"),
}


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def dataclass_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...] = ()):
    """Add one flag per field of dataclass `cls` (fields named in `positional` become arguments)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is not False:
            add_field(parser, f, hints[f.name], positional=f.name in positional)


def add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint, *, positional: bool = False,
              help_suffix: str = "", default=dataclasses.MISSING) -> None:
    """One flag for dataclass field `f` of type `hint`: `d_latent: int = 300` becomes
    `--d-latent 300`; bools get --x/--no-x, Literal types their choices, lists take several values."""
    tp, optional = _unwrap_optional(hint)
    help_ = f.metadata.get("help", "")
    if default is dataclasses.MISSING:
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = f"{help_} (default: {default})" if default not in (None, "", []) else help_
    else:
        shown = help_
    kwargs: dict = {"help": shown + help_suffix}
    if typing.get_origin(tp) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(tp))
        tp = type(kwargs["choices"][0])
    elif f.metadata.get("choices"):
        kwargs["choices"] = f.metadata["choices"]
    name = f.name if positional else "--" + f.name.replace("_", "-")
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        kwargs["type"] = item
        kwargs["nargs"] = "+" if not positional else "*"
    else:
        kwargs["type"] = tp
    if positional:
        if typing.get_origin(tp) is not list and default is not None:
            kwargs["nargs"] = "?"
    else:
        kwargs["dest"] = f.name
    kwargs["default"] = default
    if f.metadata.get("metavar"):
        kwargs["metavar"] = f.metadata["metavar"]
    parser.add_argument(name, **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, default=str))
        return
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        print(f"{key}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saease", description="Sparse dictionaries (VAEase and classic SAEs) for LLM activations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"saease {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    sub.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = sub.parse_args(argv[1:])
    try:
        summary = module.run(args)
    except SaeaseError as err:
        print(f"saease {name}: {getattr(err, 'label', 'error')}: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"saease {name}: interrupted", file=sys.stderr)
        return 130
    if summary is not None:
        print_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
