"""`saease sweep`: W&B sweep YAMLs checked, run here (grid, random) offline, or registered online."""

from __future__ import annotations

import json
import re
import math
import os
import random
from pathlib import Path

import pytest
import torch
import yaml

from saease.cli import main
from saease.errors import SaeaseError
from saease.store import write_store
from saease.train import sweep
from test_train_support import one_thread  # noqa: F401  (autouse)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def sweep_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["sweep", *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, captured.err


def write_yaml(path: Path, spec: dict) -> str:
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("name", ["sae-l1-lambda1", "sae-topk-k", "vaease-lr", "paper-kinds"])
def test_shipped_sweeps_are_valid_and_name_train_settings(name):
    spec = sweep.read_spec(sweep.locate(name))
    assert spec["command"] == ["saease", "train"] and spec["metric"]["name"] == "eval/re"
    runs = sweep.planned_runs(spec, count=3, seed=0, where=name)
    assert len(runs) == 3
    assert {"kind"} <= set(runs[0])


def test_paper_kinds_grid_runs_every_kind_at_the_paper_settings():
    runs = sweep.planned_runs(sweep.read_spec(sweep.locate("paper-kinds")), None, 0, "paper-kinds")
    assert [r["kind"] for r in runs] == ["vaease", "vae", "sae-l1", "sae-log", "sae-topk"]
    assert all((r["d_latent"], r["batch_size"], r["lr"], r["epochs"]) == (300, 2048, 0.005, 35) for r in runs)


def test_grid_is_the_cartesian_product_and_count_takes_the_first():
    spec = {"method": "grid", "parameters": {"kind": {"values": ["sae-l1", "sae-log"]},
                                             "lambda1": {"values": [0.1, 0.2, 0.4]}, "epochs": {"value": 1}}}
    runs = sweep.planned_runs(spec, None, 0, "x")
    assert len(runs) == 6 and len({(r["kind"], r["lambda1"]) for r in runs}) == 6
    assert sweep.planned_runs(spec, 4, 0, "x") == runs[:4]


def test_random_draws_follow_their_distributions_and_the_seed():
    spec = {"method": "random", "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "k": {"distribution": "int_uniform", "min": 2, "max": 5},
        "lambda1": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
        "kind": {"values": ["sae-topk", "sae-l1"], "probabilities": [1.0, 0.0]}}}
    runs = sweep.planned_runs(spec, 200, 7, "x")
    lrs = [r["lr"] for r in runs]
    assert all(1e-4 <= v <= 1e-2 for v in lrs)
    logs = sorted(math.log10(v) for v in lrs)  # log-uniform: about half below 1e-3
    assert 0.35 < sum(v < -3 for v in logs) / len(logs) < 0.65
    assert {r["k"] for r in runs} == {2, 3, 4, 5}
    assert {r["lambda1"] for r in runs} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert {r["kind"] for r in runs} == {"sae-topk"}
    assert sweep.planned_runs(spec, 5, 7, "x") == runs[:5]
    assert sweep.planned_runs(spec, 5, 8, "x") != runs[:5]
    assert isinstance(sweep.draw({"distribution": "uniform", "min": 0, "max": 1.0}, random.Random(0)), float)


@pytest.mark.parametrize("spec,expect", [
    ({"method": "grid", "parameters": {"learning_rate": {"values": [0.1]}}}, "'learning_rate'.*not a `saease train` setting"),
    ({"method": "grid", "parameters": {"lr": {"values": ["fast"]}}}, "'fast' is not a valid float"),
    ({"method": "grid", "parameters": {"lr": {"distribution": "uniform", "min": 0.1, "max": 1}}}, "grid sweeps need"),
    ({"method": "grid", "parameters": {"lr": {"distribution": "zipf", "min": 0.1, "max": 1}}}, "distribution 'zipf'"),
    ({"method": "random", "parameters": {"lr": {"distribution": "uniform", "min": 0.1, "max": 1}}}, "--count"),
    ({"method": "bayes", "parameters": {"lr": {"values": [0.1]}}}, "bayes sweeps need the W&B server"),
    ({"method": "hyperband", "parameters": {"lr": {"values": [0.1]}}}, "expected grid, random or bayes"),
    ({"method": "grid", "parameters": {"lr": {"values": [0.1]}}, "agent": 3}, "unknown key"),
    ({"method": "grid"}, "expected a W&B sweep"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, spec, expect):
    import re

    code, _, err = sweep_cli(capsys, write_yaml(tmp_path / "s.yaml", spec), "--local", "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(expect, err), err
    assert not (tmp_path / "o").exists()


def test_a_local_sweep_runs_each_setting_and_logs_offline(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    store = write_store(tmp_path / "store", torch.randn(600, 12, generator=g) * 2, shard_rows=200)
    file = write_yaml(tmp_path / "k.yaml", {
        "name": "k-test", "method": "grid", "metric": {"name": "eval/re", "goal": "minimize"},
        "parameters": {"kind": {"value": "sae-topk"}, "k": {"values": [1, 8]}, "lr": {"values": [5e-3, 1e-5]},
                       "d_latent": {"value": 16}}})
    code, summary, err = sweep_cli(capsys, file, "--local", "--out", str(tmp_path / "runs"),
                                   "--set", f"data={store.path}", "epochs=2", "batch_size=128", "progress=false", "--json")
    assert code == 0, err
    runs = summary["results"]
    assert summary["runs"] == 4 and [(r["settings"]["k"], r["settings"]["lr"]) for r in runs] == \
        [(1, 5e-3), (1, 1e-5), (8, 5e-3), (8, 1e-5)]
    assert runs[2]["eval/re"] < runs[0]["eval/re"]  # 8 active latents reconstruct better than 1
    assert summary["best"]["run"] == 2
    for i in range(4):
        cfg = json.loads((tmp_path / "runs" / "k-test" / f"run-{i:03d}" / "config.json").read_text())
        assert (cfg["k"], cfg["training"]["lr"], cfg["training"]["epochs"]) == \
            (runs[i]["settings"]["k"], runs[i]["settings"]["lr"], 2)
        # each row carries the run's exact held-out metrics
        assert (runs[i]["l0"], runs[i]["re"], runs[i]["ev"], runs[i]["ad"]) == tuple(
            cfg["metrics"][k] for k in ("l0", "re", "explained_variance", "ad"))
        assert runs[i]["l0"] <= runs[i]["settings"]["k"]
    # the RE–L0 Pareto set: k=1 and k=8 at the working lr; each lr=1e-5 run is beaten on both by k=1 at 5e-3
    assert [r["run"] for r in summary["pareto"]] == [0, 2]
    assert [r["run"] for r in summary["pareto"]] == [r["run"] for r in brute_force_front(runs)]
    saved = json.loads((tmp_path / "runs" / "k-test" / "summary.json").read_text())
    assert saved["pareto"] == summary["pareto"] and saved["best"] == summary["best"]
    plot = tmp_path / "runs" / "k-test" / "pareto.png"
    assert summary["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "runs" / "k-test" / "wandb").glob("offline-run-*/run-*.wandb"))) == 4


def brute_force_front(rows):
    def beats(a, b):
        return a["l0"] <= b["l0"] and a["re"] <= b["re"] and (a["l0"], a["re"]) != (b["l0"], b["re"])
    return sorted((r for r in rows if not any(beats(o, r) for o in rows)), key=lambda r: r["l0"])


def test_pareto_set_keeps_the_runs_nothing_beats_on_both():
    def row(run, l0, re):
        return {"run": run, "kind": "sae-topk", "settings": {}, "l0": l0, "re": re, "ev": None, "ad": None}

    rows = [row(0, 4.0, 1.0), row(1, 2.0, 3.0), row(2, 4.0, 2.0), row(3, 8.0, 0.5), row(4, 2.0, 3.0),
            row(5, 9.0, 0.5), row(6, 1.0, float("nan")), row(7, 3.0, 3.5), row(8, None, 0.1)]
    front = sweep.pareto_set(rows)
    # 2 ties 0 on L0 and loses on RE; 5 ties 3 on RE and loses on L0; 7 loses to 1 on both;
    # equal runs (1 and 4) are both kept; runs without both numbers are left out
    assert [r["run"] for r in front] == [1, 4, 0, 3]
    assert [r["run"] for r in front] == [r["run"] for r in brute_force_front(rows[:6] + rows[7:8])]
    table = sweep.pareto_table(front).splitlines()
    assert table[0] == "| run | kind | settings | L0 | RE | EV | AD |" and len(table) == 2 + 4
    assert table[2] == "| 001 | sae-topk | - | 2.00 | 3 | - | - |"


def test_the_plain_summary_prints_the_pareto_table(tmp_path, capsys):
    store = write_store(tmp_path / "store", torch.randn(300, 8, generator=torch.Generator().manual_seed(1)),
                        shard_rows=100)
    file = write_yaml(tmp_path / "s.yaml", {"name": "one", "method": "grid", "parameters": {
        "kind": {"value": "sae-topk"}, "k": {"value": 2}, "d_latent": {"value": 8}}})
    code = main(["sweep", file, "--local", "--out", str(tmp_path / "runs"), "--set", f"data={store.path}",
                 "epochs=1", "batch_size=64", "progress=false"])
    out = capsys.readouterr().out
    assert code == 0
    assert "RE–L0 Pareto set of sweep one (1 of 1 runs):" in out
    # (the YAML was written with sorted keys); L0 ≤ k: a row whose pre-activations are mostly negative keeps fewer
    row = re.search(r"\| 000 \| sae-topk \| d_latent=8 k=2 \| (\d\.\d\d) \|", out)
    assert row and 0 < float(row.group(1)) <= 2


def test_registering_needs_the_server(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, _, err = sweep_cli(capsys, "vaease-lr")
    assert code == 2 and "needs the W&B server" in err and "--local" in err


def test_registering_online_prints_the_agent_command(capsys, monkeypatch):
    import wandb

    seen = {}

    def fake_sweep(config, project=None, entity=None):
        seen.update(config=config, project=project, entity=entity)
        return "abc123"

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    code, summary, err = sweep_cli(capsys, "sae-topk-k", "--entity", "me", "--set", "data=activations/x", "--json")
    assert code == 0, err
    assert summary["agent"] == "wandb agent me/saease/abc123"
    assert seen["config"]["parameters"]["data"] == {"value": "activations/x"}
    assert seen["config"]["parameters"]["k"] == {"values": [10, 20, 30, 45, 60]}
    assert seen["config"]["command"] == ["saease", "train"]

    def failing(config, project=None, entity=None):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(wandb, "sweep", failing)
    code, _, err = sweep_cli(capsys, "sae-topk-k")
    assert code == 2 and "no route to host" in err and len(err.strip().splitlines()) == 1


def test_unknown_sweep_name_lists_the_shipped_ones():
    with pytest.raises(SaeaseError, match="paper-kinds"):
        sweep.locate("nope")
