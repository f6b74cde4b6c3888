"""`saease demo`: the offline quickstart runs end to end and reports a sane table and plot."""

import json

from cli_runner import run_cli


def test_demo_small_scale_reports_per_subspace_ad_and_writes_the_plot(tmp_path):
    out = tmp_path / "demo"
    res = run_cli("demo", "--n", 3000, "--epochs", 3, "--out", out, "--no-progress", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["dims"] == [2, 4, 6]
    assert set(summary["results"]) == {"VAEase", "VAE"}
    for kind, r in summary["results"].items():
        assert len(r["ad_per_manifold"]) == 3
        assert all(0 <= a <= 20 for a in r["ad_per_manifold"])  # κ = 20
        assert 0 < r["re"] < 8  # mean ‖x‖² is 4 here (c ~ N(0, I))
        assert (out / kind.lower() / "config.json").exists()
    png = out / "masking.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ground truth | 2, 4, 6 |" in summary["table"]
    assert len(res.stdout.strip().splitlines()) == 1  # --json: one JSON line, nothing else


def test_demo_rejects_bad_sizes(tmp_path):
    res = run_cli("demo", "--n", 10, "--out", tmp_path / "d")
    assert res.returncode == 2
    assert "--n 10" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
