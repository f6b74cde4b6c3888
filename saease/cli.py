"""The `saease` command line: one sub-command per stage, each a dataclass config.

Each command module exposes `Config` (a dataclass whose fields are the flags),
`add_arguments(parser)` (one `dataclass_args` call, plus an epilog or extra groups where a
command needs them) and `run(cfg) -> dict` (the JSON summary; None for nothing to print).
`dataclass_args` turns the fields into argparse flags: `d_latent: int = 300` becomes
`--d-latent 300`, the field's `help` metadata its help; `main` parses the flags, builds the
config with `dataclass_from_args` (or the module's own `config_from_args`, for a command whose
settings come in layers, such as `saease train`), and calls `run(cfg)`. A module may also
define `show(cfg, summary)`: without --json it prints the human view (a table, say) and
returns what is left to print as `key: value` lines, so `run` itself never prints its result.
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


def option(default=dataclasses.MISSING, doc: str = "", **metadata):
    """A command-config field: its default (none: the flag is required), its --help text and
    any other `add_field` metadata (type, choices, metavar, cli). List defaults are copied per
    instance."""
    metadata = {"help": doc, **metadata}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def dataclass_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...] = ()):
    """Add one flag per field of dataclass `cls` (fields named in `positional` become arguments)."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        add_field(parser, f, hints[f.name], positional=f.name in positional)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of dataclass `cls` that `dataclass_args` makes flags of."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli") is not False]


def add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hint, *, positional: bool = False,
              help_suffix: str = "", default=dataclasses.MISSING) -> None:
    """One flag for dataclass field `f` of type `hint`: `d_latent: int = 300` becomes
    `--d-latent 300`; bools get --x/--no-x, Literal types their choices, lists take several values.

    A field without a default is a required flag (or a required positional argument). Field
    metadata: `help`; `type`, a function parsing the one token typed (e.g. a comma list such as
    2,4,6 into [2, 4, 6]; raise argparse.ArgumentTypeError to refuse it), whose list default
    --help shows comma-joined, the way it is typed; `choices`; `metavar`; `cli=False` (no flag)."""
    tp, optional = _unwrap_optional(hint)
    help_ = f.metadata.get("help", "")
    parse = f.metadata.get("type")
    required = False
    if default is dataclasses.MISSING:
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            required, default = True, None
        shown_default = (",".join(map(str, default)) if parse is not None and isinstance(default, (list, tuple))
                         else default)
        shown = (f"{help_} (default: {shown_default})".strip() if default not in (None, "", [])
                 else help_)
    else:
        shown = help_
    kwargs: dict = {"help": shown + help_suffix}
    if typing.get_origin(tp) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(tp))
        tp = type(kwargs["choices"][0])
    elif f.metadata.get("choices"):
        kwargs["choices"] = f.metadata["choices"]
    name = f.name if positional else "--" + f.name.replace("_", "-")
    if parse is not None:  # one token, parsed by the field's own function
        kwargs["type"] = parse
    elif tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        kwargs["type"] = item
        kwargs["nargs"] = "+" if required or not positional else "*"
    else:
        kwargs["type"] = tp
    if positional:
        if typing.get_origin(tp) is not list and default is not None:
            kwargs["nargs"] = "?"
    else:
        kwargs["dest"] = f.name
        if required:
            kwargs["required"] = True
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
        cfg = config_of(module, args)
        summary = module.run(cfg)
        if summary is not None and not args.json and hasattr(module, "show"):
            summary = module.show(cfg, summary)
    except SaeaseError as err:
        print(f"saease {name}: {getattr(err, 'label', 'error')}: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"saease {name}: interrupted", file=sys.stderr)
        return 130
    if summary is not None:
        print_summary(summary, args.json)
    return 0


def config_of(module, args: argparse.Namespace):
    """The config a command's `run` takes: the module's `config_from_args(args)` where it has
    one, else its `Config` built from the parsed flags (a module without `Config`: the flags)."""
    if hasattr(module, "config_from_args"):
        return module.config_from_args(args)
    if hasattr(module, "Config"):
        return dataclass_from_args(module.Config, args)
    return args


if __name__ == "__main__":
    sys.exit(main())
