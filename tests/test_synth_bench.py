"""benchmarks/synth_bench.py at its --quick size (SAELens environment only: `.ci/saelens.sh`).

A smoke test: the scaled SynthSAEBench generator builds, every kind trains through the real
trainer, SAELens's BatchTopK trains with SAELens's trainer, and the SAELens metrics come back
in range with one JSON line at the end. It checks plumbing, not the science."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sae_lens", reason="sae-lens is tested in its own environment (.ci/saelens.sh)")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "synth_bench.py"


def load():
    spec = importlib.util.spec_from_file_location("synth_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_scores_every_kind(tmp_path, capsys):
    summary = load().main(["--quick", "--out", str(tmp_path / "work")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["benchmark"] == "synth_bench"
    kinds = {r["kind"] for r in summary["grid"]}
    assert kinds == {"vaease", "vae", "sae-l1", "sae-log", "sae-topk", "sae-batchtopk", "sae-jumprelu",
                     "sae-gated", "sae-matryoshka", "saelens-batchtopk"}
    for r in summary["grid"]:
        assert 0 <= r["mcc"] <= 1 and 0 <= r["f1"] <= 1 and r["l0"] >= 0, r
    # the matched table has one row per kind, VAEase's own run first
    matched = summary["matched_l0"]
    assert matched[0]["kind"] == "vaease" and len({r["kind"] for r in matched}) == len(matched) == len(kinds)
    # TopK's code has at most k nonzeros per row
    for r in summary["grid"]:
        if r["kind"] == "sae-topk":
            assert r["l0"] <= r["knob"]["k"] + 1e-9
