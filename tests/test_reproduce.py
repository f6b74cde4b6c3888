"""The reproduction scripts and `saease reproduce table3` run end to end at tiny scale and print
sane tables; the science itself is checked at reduced scale in test_science.py."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from cli_runner import run_cli

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_table3_end_to_end_on_a_tiny_pythia(tiny_pythia, tiny_text_dataset, tmp_path):
    out = tmp_path / "t3"
    res = run_cli("reproduce", "table3", "--model", tiny_pythia, "--dataset", tiny_text_dataset,
                  "--scale", "0.001", "--d-latent", 16, "--k", 4, "--device", "cpu", "--out", out, "--no-progress", "--json")
    assert res.returncode == 0, res.stderr
    s = last_json(res.stdout)
    assert s["rows"] == 2098 and s["epochs"] == 1 and s["layer"] == 2
    assert set(s["results"]) == {"sae-l1", "sae-log", "sae-topk", "vae", "vaease"}
    for kind, r in s["results"].items():
        assert math.isfinite(r["re"]) and r["re"] > 0
        assert 0 <= r["ad"] <= 16
        cfg = json.loads((Path(r["out"]) / "config.json").read_text())
        assert cfg["d_in"] == 64 and cfg["training"]["batch_size"] == 2048 and cfg["training"]["lr"] == 0.005
        assert cfg["input_scale"] == 1.0  # the paper did not normalize
    assert s["results"]["sae-topk"]["ad"] <= 4
    assert s["paper"]["vaease"] == {"re": 39.5, "ad": 22.5}
    manifest = json.loads((Path(s["store"]) / "manifest.json").read_text())
    assert manifest["n_rows"] == 2098 and manifest["dtype"] == "float16"
    assert json.loads((out / "summary.json").read_text())["rows"] == 2098
    assert "| VAEase |" in s["markdown"] and "| 39.5 | 22.5 |" in s["markdown"]
    # 2098 rows for one epoch is one step per dictionary: the run says so, once, and what would do
    warned = [line for line in res.stderr.splitlines() if line.startswith("saease reproduce: warning:")]
    assert len(warned) == 1 and "--scale 0.001 is too small" in warned[0], res.stderr
    assert "1 training steps per dictionary" in warned[0] and "--scale 0.17 or more would do" in warned[0]
    assert s["warning"] == warned[0].removeprefix("saease reproduce: warning: ")


@pytest.mark.parametrize("cv", [0.5, 2.0, 8.0])
def test_table3_budget_rule_suggests_the_smallest_scale_that_meets_both_floors(cv):
    from saease.recipes import reproduce as r

    need = r.scale_needed(cv)
    rows, epochs, steps = r.budget(need)
    assert r.budget_warning(need, cv) is None and r.budget_warning(1.0, cv) is None
    assert steps >= r.MIN_STEPS and round(rows * r.HOLDOUT) >= r.heldout_rows_needed(cv)
    below = r.budget_warning(need * 0.9, cv)  # rounding up to 2 figures adds under 10%
    assert below and below.startswith(f"--scale {need * 0.9:g} is too small") and f"--scale {need:g} or more" in below
    # the paper's own budget: 2,098,176 rows × 35 epochs ≈ 32,000 steps, far past one epoch's 923
    assert r.budget(1.0) == (2_098_176, 35, 923 * 35) and r.MIN_STEPS == 923


def test_table3_budget_rule_names_the_floor_that_fails():
    from saease.recipes import reproduce as r

    # steps are the binding floor for any plausible cv: a short run names only them
    short = r.budget_warning(0.05, cv=0.5)
    assert "training steps per dictionary" in short and "held-out rows" not in short
    # a very spread-out error needs more held-out rows than the steps floor gives
    noisy = r.budget_warning(0.5, cv=20.0)
    assert "held-out rows resolve RE only to" in noisy and "training steps" not in noisy
    assert r.scale_needed(20.0) > 0.5


def test_table3_rejects_bad_settings(tmp_path):
    res = run_cli("reproduce", "table3", "--scale", "2", "--out", tmp_path / "x")
    assert res.returncode == 2 and "--scale 2" in res.stderr
    res = run_cli("reproduce", "table3", "--d-latent", "16", "--out", tmp_path / "x")
    assert res.returncode == 2 and "--k 30" in res.stderr
    assert not (tmp_path / "x").exists()


def test_fig3_sae_log_has_two_minima_and_vaease_one(tmp_path, capsys):
    s = script("fig3").main(["--out", str(tmp_path / "fig3.png")])
    assert len(s["sae_log_minima"]) == 2 and s["sae_log_minima"][0] == 0.0
    assert len(s["vaease_minima"]) == 1
    assert s["vaease_minima"][0] == pytest.approx(s["theorem_4_7"]["mu"], abs=2e-3)
    assert s["vaease_sigma2_at_min"] == pytest.approx(s["theorem_4_7"]["sigma2"], rel=0.02)
    assert (tmp_path / "fig3.png").stat().st_size > 1000


def test_table2_linear_and_fig4_tiny(tmp_path, capsys):
    out = tmp_path / "lin"
    s = script("table2_linear").main(["--n", "4000", "--epochs", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert last_json(printed) == json.loads(json.dumps(s))
    assert set(s["results"]) == {"sae-l1", "sae-log", "sae-topk", "vae", "vaease"}
    assert s["paper"]["vaease"] == [5, 4, 4]
    for r in s["results"].values():
        assert len(r["ad_per_manifold"]) == 3 and all(0 <= a <= 20 for a in r["ad_per_manifold"])
        assert math.isfinite(r["re"])
    cfg = json.loads((out / "sae-topk" / "config.json").read_text())
    assert cfg["k"] == 4 and cfg["encoder_layers"] == 4 and cfg["input_scale"] == 1.0
    assert "| VAEase |" in printed and "| 5, 4, 4 |" in printed

    f = script("fig4").main(["--dicts", str(out), "--out", str(tmp_path / "fig4.png"), "--max-rows", "500"])
    assert set(f["results"]) == set(s["results"])
    for r in f["results"].values():
        assert r["left"][0] == 20 and r["left"][-1] == 0 and len(r["re"]) == 21
        assert 0 <= r["latents_needed_2x"] <= 20
    assert (tmp_path / "fig4.png").stat().st_size > 1000


def test_table2_linear_other_mix_has_no_paper_row(tmp_path, capsys):
    s = script("table2_linear").main(["--n", "2000", "--epochs", "1", "--dims", "2,3", "--ambient", "12",
                                      "--kinds", "vaease,sae-topk", "--out", str(tmp_path / "o")])
    assert s["paper"] is None and set(s["results"]) == {"vaease", "sae-topk"}
    assert all(len(r["ad_per_manifold"]) == 2 for r in s["results"].values())
    assert json.loads((tmp_path / "o" / "sae-topk" / "config.json").read_text())["k"] == 3


def test_table2_nonlinear_tiny_uses_the_residual_encoder(tmp_path, capsys):
    s = script("table2_nonlinear").main(["--n-per", "400", "--epochs", "1", "--encoder-hidden", "24",
                                         "--kinds", "vaease,sae-l1", "--out", str(tmp_path / "nl")])
    assert s["encoder_hidden"] == 24 and s["paper"]["vaease"] == [5, 5, 11, 11]
    for kind, r in s["results"].items():
        assert len(r["ad_per_manifold"]) == 4 and all(0 <= a <= 60 for a in r["ad_per_manifold"])
        cfg = json.loads((Path(r["out"]) / "config.json").read_text())
        assert (cfg["encoder"], cfg["encoder_layers"], cfg["encoder_hidden"], cfg["decoder_layers"]) == \
            ("residual", 3, 24, 2)


def test_superposition_tiny_reports_matched_l0_and_re_and_recovery(tmp_path, capsys):
    s = script("superposition").main(["--n", "3000", "--d", "16", "--n-features", "32", "--epochs", "1",
                                      "--l1-lambdas", "0.01,0.1", "--log-lambdas", "0.01", "--topk-ks", "2,4",
                                      "--out", str(tmp_path / "sp")])
    assert len(s["grid"]) == 2 + 2 + 1 + 2
    for r in s["grid"]:  # scored on exactly the rows the trainer held out
        assert r["re"] == pytest.approx(r["trainer_re"], rel=1e-4)
    for axis in ("matched_l0", "matched_re"):
        assert set(s[axis]) == {"sae-l1", "sae-log", "sae-topk", "vae", "vaease"}
        for r in s[axis].values():
            assert 0 <= r["recovery"] <= 1 + 1e-6 and 0 <= r["ad"] <= 32 and r["ad_error"] >= 0
            assert 0 <= r["l0"] <= 32
            assert r["true_count"] == pytest.approx(s[axis]["vaease"]["true_count"])
    # TopK's point at matched L0 is the k nearest VAEase's L0 (its L0 is k exactly)
    target = s["matched_l0"]["vaease"]["l0"]
    topk = [r for r in s["grid"] if r["kind"] == "sae-topk"]
    assert s["matched_l0"]["sae-topk"] == min(topk, key=lambda r: abs(math.log(r["l0"] / target)))
    # Before any real training the decoder rows are random: recovery well below 1.
    assert s["matched_re"]["vae"]["recovery"] < 0.9
