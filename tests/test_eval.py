"""saease eval / compare: top-n per feature, masking curves, the HTML report, loss recovered,
bad input. Stores are built from the tiny Pythia fixture (real tokens, real activations)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from saease.store import holdout_mask
from cli_runner import run_cli as saease
from conftest import english_like_docs

from saease.eval.evaluator import Options, evaluate_store
from saease.eval.loss import loss_recovered
from saease.eval.stream import Notes
from saease import ActivationStore, Dictionary, SaeaseError, StoreWriter
from saease.metrics import MaskingCurve, active_mask, encode_batch, evaluate, masking_curve, tensor_batches
from saease.models import load_model, run_to_hook

HOOK = "blocks.1.hook_resid_post"
N_SEQ, CTX = 12, 40


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tiny_pythia):
    return load_model(tiny_pythia, device="cpu")


@pytest.fixture(scope="module")
def windows(model):
    ids = model.tokenizer("<|endoftext|>".join(english_like_docs(60, seed=5)))["input_ids"]
    return torch.tensor(ids[:N_SEQ * CTX]).view(N_SEQ, CTX)


def write_harvest_like(path, acts, windows, *, source, shard_rows=150, contexts=True):
    """A store laid out like `saease harvest` writes it: rows seq-major with tokens/seq/pos."""
    n_seq, ctx = windows.shape
    seq = torch.arange(n_seq).repeat_interleave(ctx)
    pos = torch.arange(ctx).repeat(n_seq)
    writer = StoreWriter(path, d_in=acts.shape[1], source=source, overwrite=True)
    for s in range(0, len(acts), shard_rows):
        sl = slice(s, s + shard_rows)
        writer.write_shard(acts[sl], tokens=windows.flatten()[sl], seq=seq[sl], pos=pos[sl])
    if contexts:
        writer.write_contexts(windows)
    return writer.finish()


@pytest.fixture(scope="module")
def store(tmp_path_factory, model, windows, tiny_pythia):
    acts = run_to_hook(model, windows, HOOK).reshape(-1, model.cfg.d_model)
    source = {"model": tiny_pythia, "tokenizer": tiny_pythia, "hook": HOOK, "layer": 1, "processed": True}
    return write_harvest_like(tmp_path_factory.mktemp("store") / "s", acts, windows, source=source)


def random_dictionary(kind="sae-l1", d_in=64, d_latent=48, seed=0, **cfg):
    torch.manual_seed(seed)
    d = Dictionary.create(kind, d_in=d_in, d_latent=d_latent, **cfg)
    with torch.no_grad():
        d.W_enc.normal_(0, 0.3)
        d.b_enc.normal_(0, 0.5)
        d.b_dec.normal_(0, 0.5)
        if d.ad_from_variance:
            d.W_sig.normal_(0, 0.3)
            d.b_sig.normal_(0, 1.0)
    return d


@pytest.fixture(scope="module")
def dict_dirs(tmp_path_factory, store):
    """Two saved dictionaries trained (nominally) on `store`, holding out a quarter of its rows."""
    root = tmp_path_factory.mktemp("dicts")
    paths = []
    for name, kind in (("sae", "sae-l1"), ("vaease", "vaease")):
        d = random_dictionary(kind, input_scale=0.5)
        d.cfg.source = {"store": str(store.path.resolve()), **store.source}
        d.cfg.training = {"holdout": 0.25, "holdout_seed": 3}
        paths.append(d.save(root / name))
    return paths


def brute_codes(d, x):
    with torch.no_grad():
        return d.encode(x)


# ---- top-n per feature --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sae-l1", "vaease"])
def test_top_n_matches_brute_force(store, kind):
    d = random_dictionary(kind)
    x, cols = store.read_all(columns=True)
    (e,) = evaluate_store([("d", d)], store, Options(batch_size=64, top_n=7, masking=False, progress=False),
                          Notes(quiet=True))
    codes = brute_codes(d, x)
    values = codes.topk(7, dim=0).values
    assert (values[-1] > 0).sum() > d.cfg.d_latent // 2  # most latents have 7 positive examples
    for j in range(d.cfg.d_latent):
        keep = values[:, j] > 0
        torch.testing.assert_close(e.stats.values[:, j][keep], values[:, j][keep])
        got = e.stats.rows[:, j][keep]
        # the rows hold those values (windows share their first token, so equal values occur)
        assert len(set(got.tolist())) == len(got)
        torch.testing.assert_close(codes[got, j], values[:, j][keep])
    # density = the AD active set; it sums to AD
    with torch.no_grad():
        enc = d.encoder_output(d.scale_in(x))
    mask = active_mask(d.activity(enc), d.ad_from_variance)
    torch.testing.assert_close(e.stats.active.double() / len(x), mask.double().mean(0))
    assert e.result["ad"] == pytest.approx(mask.sum(-1).double().mean().item())
    torch.testing.assert_close(e.stats.nonzero, (codes != 0).sum(0))  # the dashboard's density
    # histogram of log10 of positive activations
    pos = codes[:, 3][codes[:, 3] > 0]
    edges = [-np.inf] + [-4 + 0.05 * i for i in range(1, 160)] + [np.inf]
    expected, _ = np.histogram(pos.log10().numpy(), bins=edges)
    assert e.stats.hist.view(d.cfg.d_latent, -1)[3].tolist() == expected.tolist()


def test_top_n_on_held_out_rows_reports_store_rows_tokens_and_context(store, dict_dirs, tmp_path, windows, model):
    r = saease("eval", dict_dirs[0], "--out", tmp_path / "rep", "--top-n", "5", "--batch-size", "50",
               "--no-loss", "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["split"] == "held-out"
    report = json.loads((tmp_path / "rep" / "features.json").read_text())
    held = holdout_mask(store.n_rows, 0.25, 3)  # these dictionaries record no split key: the seed's split
    assert report["n"] == summary["n"] == int(held.sum())
    d = Dictionary.load(dict_dirs[0])
    x = store.read_all()
    codes = brute_codes(d, x)
    codes[~held] = -torch.inf
    values = codes.topk(5, dim=0).values
    segments = {s["seq"]: s for s in report["segments"]}
    for f in report["features"]:
        j = f["id"]
        expect = [v for v in values[:, j].tolist() if v > 0]
        np.testing.assert_allclose([ex["act"] for ex in f["top"]], expect, rtol=1e-3)
        assert all(held[ex["row"]] for ex in f["top"])
        np.testing.assert_allclose([codes[ex["row"], j].item() for ex in f["top"]], expect, rtol=1e-3)
        for ex in f["top"]:
            seq, pos = divmod(ex["row"], CTX)
            assert (ex["seq"], ex["pos"]) == (seq, pos)
            assert ex["token_id"] == windows[seq, pos].item()
            assert ex["token"] == model.tokenizer.decode([ex["token_id"]])  # byte-level BPE: as decoded
            # the example's context window lies inside its sequence's segment, whose pieces are the text
            s = segments[seq]
            assert s["start"] <= max(pos - 12, 0) and min(pos + 4, CTX - 1) < s["start"] + len(s["pieces"])
            assert "".join(s["pieces"]).lstrip() == model.tokenizer.decode(
                windows[seq, s["start"]: s["start"] + len(s["pieces"])].tolist()).lstrip()


# ---- masking curves ------------------------------------------------------------------------

def brute_masking(d, x):
    """κ + 1 decodes, the definition."""
    with torch.no_grad():
        enc = d.encoder_output(d.scale_in(x))
        codes = d.code_from(enc)
        usage = (1 - enc.var.sqrt()) if d.ad_from_variance else codes.abs()
        order = torch.sort(usage.double().sum(0), stable=True).indices
        keep, re = torch.ones(d.cfg.d_latent), []
        for step in range(d.cfg.d_latent + 1):
            if step:
                keep[order[step - 1]] = 0
            re.append((d.decode(codes * keep) - x).pow(2).sum(-1).double().mean().item())
    return order.tolist(), re


@pytest.mark.parametrize("kind,method,extra", [
    ("sae-l1", "gram", {}), ("sae-topk", "blockwise", {"k": 6}), ("vaease", "gram", {}),
    ("vae", "blockwise", {}), ("vaease", "decode", {"decoder_layers": 2}),
])
def test_masking_curve_order_and_endpoints(kind, method, extra):
    d = random_dictionary(kind, d_in=12, d_latent=30, input_scale=0.7, **extra)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(700, 12, generator=gen) * 2 + 1
    curve = masking_curve(d, x, batch_size=128, method=method)
    order, re = brute_masking(d, x)
    assert curve["method"] == method and curve["order"] == order
    assert curve["left"] == list(range(30, -1, -1))
    np.testing.assert_allclose(curve["re"], re, rtol=1e-4, atol=1e-5)
    usage = torch.tensor(curve["usage"])
    assert torch.all(usage[order][1:] >= usage[order][:-1])  # least used first
    # nothing masked: the dictionary's RE; all masked: the decoder bias alone
    assert curve["re"][0] == pytest.approx(evaluate(d, tensor_batches(x), progress=False)["re"], rel=1e-5)
    if extra.get("decoder_layers", 1) == 1:
        bias_only = (x - d.b_dec.detach() / 0.7).pow(2).sum(-1).mean().item()
        assert curve["re"][-1] == pytest.approx(bias_only, rel=1e-4)


def test_blockwise_blocks_and_auto_choice():
    d = random_dictionary("sae-l1", d_in=8, d_latent=40)
    x = torch.randn(300, 8)
    whole = masking_curve(d, x, method="gram")["re"]
    curve = MaskingCurve(d, "blockwise", block=7)  # blocks that do not divide κ
    for xb, _ in tensor_batches(x, batch_size=64):
        curve.update(encode_batch(d, xb))
    for xb, _ in tensor_batches(x, batch_size=64):
        curve.update_second(encode_batch(d, xb))
    np.testing.assert_allclose(curve.result()["re"], whole, rtol=1e-5)
    assert MaskingCurve(random_dictionary(d_in=8, d_latent=4096)).method == "blockwise"
    assert MaskingCurve(random_dictionary(d_in=64, d_latent=96)).method == "gram"
    assert MaskingCurve(random_dictionary(d_in=8, d_latent=16, decoder_layers=2)).method == "decode"
    with pytest.raises(SaeaseError, match="linear decoder"):
        MaskingCurve(random_dictionary(d_in=8, d_latent=16, decoder_layers=2), "gram")


def test_one_read_per_shard_when_passes_are_shared(store, monkeypatch):
    reads = []
    original = ActivationStore.read_shard
    monkeypatch.setattr(ActivationStore, "read_shard", lambda self, i: reads.append(i) or original(self, i))
    dicts = [("a", random_dictionary(seed=1)), ("b", random_dictionary("vaease", seed=2))]
    evaluate_store(dicts, store, Options(progress=False), Notes(quiet=True))
    assert sorted(reads) == list(range(len(store.shards)))  # metrics, curve and top-n: one pass
    reads.clear()
    evaluate_store(dicts, store, Options(progress=False, masking_method="blockwise"), Notes(quiet=True))
    assert sorted(reads) == sorted(2 * list(range(len(store.shards))))


def test_eval_cli_writes_the_report_and_overlays_curves(store, dict_dirs, tmp_path):
    out = tmp_path / "rep"
    r = saease("eval", *dict_dirs, "--data", store.path, "--out", out, "--no-loss", "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [s["kind"] for s in summary["dictionaries"]] == ["sae-l1", "vaease"]
    for s in summary["dictionaries"]:
        for key in ("dictionary", "store", "kind", "split", "re", "ad", "ad_per_label", "l0",
                    "explained_variance", "dead_fraction", "n"):
            assert key in s
        assert s["masking"]["re_none_masked"] == pytest.approx(s["re"], rel=1e-6)
    assert "ad_fixed" in summary["dictionaries"][1]
    assert sorted(summary["files"]) == sorted(["masking.csv", "masking.png", "sae/features.json",
                                               "sae/features.html", "vaease/features.json", "vaease/features.html"])
    rows = (out / "masking.csv").read_text().splitlines()
    assert rows[0] == "dictionary,kind,left,masked,latent,re" and len(rows) == 1 + 2 * 49
    import matplotlib.image
    assert matplotlib.image.imread(out / "masking.png").ndim == 3
    assert json.loads((out / "summary.json").read_text())["dictionaries"][0]["re"] == summary["dictionaries"][0]["re"]


# ---- loss recovered -----------------------------------------------------------------------

def exact_dictionary(d_in: int, hook: str) -> Dictionary:
    """sae-l1 with W_enc = [I, −I], W_dec = [I; −I]: ReLU(x) − ReLU(−x) = x exactly."""
    d = Dictionary.create("sae-l1", d_in=d_in, d_latent=2 * d_in, source={"hook": hook})
    eye = torch.eye(d_in)
    with torch.no_grad():
        d.W_enc.copy_(torch.cat([eye, -eye], 1))
        d.b_enc.zero_()
        d.W_dec.copy_(torch.cat([eye, -eye], 0))
        d.b_dec.zero_()
    return d


def test_loss_recovered_is_one_for_exact_and_zero_for_zero_ablation(model, windows):
    tokens = windows[:4]
    exact = loss_recovered(model, exact_dictionary(64, HOOK), tokens, HOOK, batch_size=3)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert exact["ce_spliced"] == pytest.approx(exact["ce_clean"], abs=1e-5)
    assert exact["kl_clean_spliced"] == pytest.approx(0.0, abs=1e-6)
    assert exact["ce_zero_ablated"] > exact["ce_clean"] + 0.01  # ablation hurts this model
    assert exact["loss_tokens"] == 4 * (CTX - 1)

    zero = exact_dictionary(64, HOOK)
    with torch.no_grad():
        zero.W_dec.zero_()  # reconstructs every activation as 0: the same as zero-ablation
    res = loss_recovered(model, zero, tokens, HOOK, batch_size=3)
    assert res["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert res["ce_spliced"] == pytest.approx(res["ce_zero_ablated"], abs=1e-5)
    assert res["kl_clean_spliced"] > 0
    # the mean-ablation baseline: a dictionary that outputs the mean activation recovers 0 of it
    with torch.no_grad():
        zero.b_dec.copy_(run_to_hook(model, tokens, HOOK).reshape(-1, 64).mean(0))
    assert loss_recovered(model, zero, tokens, HOOK)["loss_recovered_vs_mean"] == pytest.approx(0.0, abs=1e-4)


def test_compare_table_with_loss_recovered(store, dict_dirs, tmp_path):
    exact = exact_dictionary(64, HOOK)
    exact.cfg.source.update(model=store.source["model"])
    exact_dir = exact.save(tmp_path / "exact")
    r = saease("compare", exact_dir, dict_dirs[0], "--data", store.path, "--loss-seqs", "3", "--no-progress",
               "--out", tmp_path / "cmp" / "table")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("| dictionary | kind | split | n | RE | AD | L0 | EV | dead | loss rec. | KL |")
    assert lines[3].startswith("| exact | sae-l1 | all | 480 | 0 |") and "| 1.000 |" in lines[3]
    data = json.loads((tmp_path / "cmp" / "table.json").read_text())
    assert [row["dictionary"] for row in data["rows"]] == ["exact", "sae"]
    assert data["rows"][0]["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert data["rows"][1]["split"] == "held-out" and data["rows"][1]["loss_seqs"] == 3
    assert (tmp_path / "cmp" / "table.md").read_text().strip() == "\n".join(lines[1:])
    r = saease("compare", exact_dir, "--data", store.path, "--no-loss", "--no-progress", "--json")
    assert json.loads(r.stdout)["rows"][0]["loss_recovered"] is None


# ---- bad input ----------------------------------------------------------------------------

def test_other_model_or_hook_is_warned_by_name(store, tmp_path):
    d = random_dictionary()
    d.cfg.source = {"model": "EleutherAI/pythia-70m", "hook": "blocks.3.hook_resid_post"}
    path = d.save(tmp_path / "other")
    r = saease("eval", path, "--data", store.path, "--no-loss", "--no-progress")
    assert r.returncode == 0
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any("'EleutherAI/pythia-70m'" in w and repr(store.source["model"]) in w for w in warnings)
    assert any("'blocks.3.hook_resid_post'" in w and repr(HOOK) in w for w in warnings)


def test_store_without_contexts_lists_tokens_and_says_so_once(tmp_path, model, windows, store):
    acts = store.read_all()
    bare = write_harvest_like(tmp_path / "bare", acts, windows, source=store.source, contexts=False)
    dicts = [random_dictionary(seed=1).save(tmp_path / "a"), random_dictionary(seed=2).save(tmp_path / "b")]
    r = saease("eval", *dicts, "--data", bare.path, "--out", tmp_path / "rep", "--no-loss", "--no-progress")
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "contexts" in line]
    assert len(said) == 1 and said[0].startswith("warning:") and str(bare.path) in said[0]
    report = json.loads((tmp_path / "rep" / "a" / "features.json").read_text())
    example = next(f for f in report["features"] if f["top"])["top"][0]
    assert "token" in example and report["segments"] == []


def test_one_line_errors(tmp_path, store, dict_dirs):
    empty = StoreWriter(tmp_path / "empty", d_in=64).finish()
    cases = [
        (("eval", dict_dirs[0], "--data", empty.path), "no rows"),
        (("eval", random_dictionary(d_in=8).save(tmp_path / "d8"), "--data", store.path), "d_in"),
        (("eval", dict_dirs[0], "--top-n", "0"), "--top-n 0"),
        (("eval",), "no dictionary given"),
        (("eval", tmp_path / "nowhere"), "not a saease dictionary"),
        (("compare", dict_dirs[0], "--data", tmp_path / "nostore"), "no such store"),
        (("eval", dict_dirs[0], "--loss", "--data", empty.path), "no rows"),
    ]
    for args, message in cases:
        r = saease(*args, "--no-progress")
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    # --loss on a store that records no model: required, so an error rather than a warning
    synthetic = tmp_path / "synthetic"
    from saease.store import write_store
    write_store(synthetic, torch.randn(50, 64))
    r = saease("eval", random_dictionary().save(tmp_path / "plain"), "--data", synthetic, "--loss", "--no-progress")
    assert r.returncode == 2 and "records no model" in r.stderr


def test_a_copied_store_is_evaluated_on_its_held_out_rows(store, tmp_path):
    """The split is keyed by content: a copy of the training store is still the training store."""
    from saease.eval.stream import eval_rows

    copy = ActivationStore(shutil.copytree(store.path, tmp_path / "copied"))
    d = random_dictionary()
    d.cfg.source = {"store": str(store.path.resolve()), **store.source}
    d.cfg.training = {"holdout": 0.25, "holdout_seed": 3, "split_key": store.split_key}
    mask, split = eval_rows(d, copy)
    assert split == "held-out" and torch.equal(mask, store.holdout_mask(0.25, 3))
    d.cfg.training = {"holdout": 0.25, "holdout_seed": 3}  # an older dictionary: the folder decides
    assert eval_rows(d, copy) == (None, "all") and eval_rows(d, store)[1] == "held-out"
