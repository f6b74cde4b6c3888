"""The quick start's embedded default: the shipped plays model is a trained language model that
saease's own loader accepts, and `saease quickstart` runs harvest → train → eval → splice on it."""

import json
import math

import pytest
import torch

from cli_runner import run_cli
from saease.recipes import plays_model


@pytest.fixture(scope="module")
def heldout_windows():
    """Every 128-token window of the held-out plays (never trained on), tokenized with the model's tokenizer."""
    from transformers import AutoTokenizer

    folder = plays_model.model_path(build_if_missing=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = [f.read_text() for f in sorted(plays_model.text_folder("heldout").glob("*.txt"))]
    return plays_model.windows_of(plays_model.token_stream(tokenizer, texts), 128)


def test_shipped_plays_model_loads_through_saease_and_predicts_heldout_text(heldout_windows):
    from saease.eval.loss import next_token_ce
    from saease.models import load_model

    torch.set_num_threads(1)
    folder = plays_model.model_path(build_if_missing=False)
    assert folder == plays_model.SHIPPED
    assert sum(f.stat().st_size for f in folder.iterdir()) < 8 * 2**20  # fits the repository budget
    model = load_model(str(folder), device="cpu")
    assert model.loaded.architecture == "GPTNeoXForCausalLM"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx) == (4, 128, 128)

    windows = heldout_windows[torch.randperm(len(heldout_windows), generator=torch.Generator().manual_seed(0))[:24]]
    with torch.no_grad():
        ce = next_token_ce(model(windows), windows).mean().item()
    uniform = math.log(model.cfg.d_vocab)
    counts = torch.bincount(heldout_windows.flatten(), minlength=model.cfg.d_vocab).double() + 1
    # the unigram distribution of the held-out text itself: a generous context-free baseline
    unigram = -(counts / counts.sum()).log()[windows[:, 1:].flatten()].mean().item()
    assert ce < unigram - 0.8, (ce, unigram)  # really trained: uses the context
    assert ce < uniform - 2.5
    # the record shipped with it matches what it does now
    record = json.loads((folder / "training.json").read_text())
    assert record["heldout_plays"] == sorted(plays_model.HELDOUT_PLAYS)
    assert abs(record["heldout_loss"] - ce) < 0.15
    assert not set(record["train_plays"]) & set(plays_model.HELDOUT_PLAYS)


def test_quickstart_runs_end_to_end_and_reports_loss_recovered(tmp_path):
    out = tmp_path / "qs"
    res = run_cli("quickstart", "--quick", "--out", out, "--threads", 1, "--no-progress", "--json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1  # --json: one JSON line
    summary = json.loads(lines[0])
    assert summary["model"] == str(plays_model.SHIPPED)
    assert summary["hook"] == "blocks.2.hook_resid_post"
    assert summary["train_rows"] == 4096 and summary["heldout_rows"] == 2048
    assert set(summary["results"]) == {"VAEase", "SAE-TopK"}
    for name, r in summary["results"].items():
        assert 0 < r["loss_recovered"] <= 1.0, (name, r)
        assert r["ce_clean"] < r["ce_spliced"] < r["ce_zero_ablated"]
        assert 0 < r["l0"] <= 128
        html = (out / "report" / ("vaease" if name == "VAEase" else "sae-topk") / "features.html")
        assert html.read_text().lstrip().lower().startswith("<!doctype html")
        assert r["splice_passage_ce"] > summary["splice_passage_ce_clean"] - 0.5
    assert summary["results"]["SAE-TopK"]["l0"] == 16
    assert (out / "report" / "masking.png").read_bytes()[:4] == b"\x89PNG"


def test_quickstart_hub_model_fails_fast_offline(tmp_path, monkeypatch):
    from saease.models import cached_snapshot

    if cached_snapshot("EleutherAI/pythia-70m") is not None:
        pytest.skip("pythia-70m is in the local Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli("quickstart", "--model", "pythia-70m", "--quick", "--out", tmp_path / "q", "--no-progress")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "pythia-70m" in err[0] and "offline" in err[0], res.stderr


@pytest.mark.parametrize("flags, named", [(["--epochs", "0"], "--epochs 0"), (["--k", "999"], "--k 999"),
                                          (["--rows", "-1"], "--rows -1")])
def test_quickstart_rejects_bad_budgets_in_one_line(tmp_path, flags, named):
    res = run_cli("quickstart", *flags, "--out", tmp_path / "q", "--no-progress")
    assert res.returncode == 2
    assert named in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()
