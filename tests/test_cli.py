"""The `saease` dispatcher: every command's flags come from its dataclass `Config`, and `run`
takes that dataclass."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import typing

import pytest

from cli_runner import run_cli
from saease.cli import COMMANDS, cli_fields, config_of, main


def command_parser(name: str) -> tuple[object, argparse.ArgumentParser]:
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"saease {name}")
    module.add_arguments(parser)
    return module, parser


def help_text(name: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_takes_its_flags_from_its_config_dataclass(name):
    module, parser = command_parser(name)
    assert isinstance(getattr(module, "Config", None), type) and dataclasses.is_dataclass(module.Config), \
        f"{COMMANDS[name][0]} exposes no dataclass Config"
    text = help_text(name)
    actions = {a.dest: a for a in parser._actions}
    fields = cli_fields(module.Config)
    assert fields
    for f in fields:
        action = actions.get(f.name)
        assert action is not None, f"saease {name}: field {f.name} has no flag"
        if action.option_strings:
            assert "--" + f.name.replace("_", "-") in action.option_strings
            assert "--" + f.name.replace("_", "-") in text, f"saease {name} --help lacks --{f.name}"
        else:
            assert str(action.metavar or f.name) in text or "{" + ",".join(action.choices or ()) + "}" in text
        # the flag is the field's: its help is the field's doc (plus the default), its default the field's
        assert (action.help or "").startswith(f.metadata.get("help", "")), (name, f.name, action.help)
        if action.default is not argparse.SUPPRESS and action.required is False and action.nargs != "+":
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            assert action.default == default, (name, f.name)
        hint = typing.get_type_hints(module.Config)[f.name]
        if typing.get_origin(hint) is typing.Literal:
            assert list(action.choices) == list(typing.get_args(hint)), (name, f.name)
    assert "--json" in text


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "train"])
def test_the_parsed_flags_build_the_config_run_takes(name):
    """Defaults parse to the dataclass's own defaults (required fields filled in)."""
    module, parser = command_parser(name)
    argv, expected = [], {}
    for f in cli_fields(module.Config):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            action = next(a for a in parser._actions if a.dest == f.name)
            value = action.choices[0] if action.choices else f"some-{f.name}"
            argv += [value] if not action.option_strings else [action.option_strings[0], value]
            expected[f.name] = value
    cfg = config_of(module, parser.parse_args(argv))
    assert cfg == module.Config(**expected)


def test_train_config_is_layered_from_the_flags():
    from saease.train.config import TrainConfig

    module, parser = command_parser("train")
    cfg = config_of(module, parser.parse_args(["--kind", "sae-topk", "--k", "7", "--epochs", "3"]))
    assert isinstance(cfg, TrainConfig) and cfg.kind == "sae-topk" and cfg.dictionary.k == 7 and cfg.epochs == 3
    assert cfg.lr == TrainConfig().lr


def test_comma_lists_and_all_parse_as_they_did():
    from saease.recipes.demo import DemoConfig
    from saease.recipes.reproduce import ORDER

    _, demo = command_parser("demo")
    assert demo.parse_args(["--dims", "3,5"]).dims == [3, 5]
    assert demo.parse_args([]).dims == DemoConfig().dims == [2, 4, 6]
    assert "(default: 2,4,6)" in " ".join(help_text("demo").split())  # shown the way it is typed
    _, reproduce = command_parser("reproduce")
    assert reproduce.parse_args(["table3", "--kinds", "all"]).kinds == list(ORDER)
    assert reproduce.parse_args(["table3", "--kinds", "vaease,vae"]).kinds == ["vaease", "vae"]
    _, synth = command_parser("synth")
    assert synth.parse_args(["manifolds", "--out", "x", "--dims", "5,5,10,10"]).dims == [5, 5, 10, 10]
    assert synth.parse_args(["manifolds", "--out", "x"]).dims is None


@pytest.mark.parametrize("argv, named", [
    (["demo", "--dims", "2,x"], "argument --dims: '2,x': expected comma-separated integers"),
    (["reproduce", "table3", "--kinds", "vaease,sparse"], "argument --kinds: 'vaease,sparse': expected 'all' or"),
    (["import", "--dtype", "float64", "a.npy", "--out", "o"], "argument --dtype: invalid choice: 'float64'"),
    (["synth", "subspaces"], "the following arguments are required: --out"),
    (["saelens", "export", "d"], "the following arguments are required: --out"),
    (["reproduce"], "the following arguments are required: table"),
])
def test_bad_or_missing_values_give_one_line_naming_the_flag(tmp_path, argv, named):
    res = run_cli(*argv, cwd=tmp_path)
    assert res.returncode == 2
    assert named in res.stderr.strip().splitlines()[-1], res.stderr
    assert not list(tmp_path.iterdir())


def test_programmatic_runs_take_the_config(tmp_path):
    import numpy as np

    from saease.importer import ImportConfig, run as import_run
    from saease.store import ActivationStore
    from saease.synth_cli import SynthConfig, run as synth_run

    s = synth_run(SynthConfig("subspaces", out=str(tmp_path / "s"), n=300, dims=[2, 3], ambient=10))
    assert (s["n"], s["d_in"], s["dims"]) == (300, 10, [2, 3])
    np.save(tmp_path / "x.npy", np.ones((20, 3), np.float32))
    s = import_run(ImportConfig(str(tmp_path / "x.npy"), out=str(tmp_path / "i"), dtype="float16"))
    assert s["n"] == 20 and ActivationStore(tmp_path / "i").dtype == "float16"
    with pytest.raises(TypeError):
        ImportConfig(str(tmp_path / "x.npy"))  # --out is required programmatically too
