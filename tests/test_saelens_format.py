"""saease.saelens without sae_lens installed: our export/import against SAELens's documented
math, z = act((x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc), x̂ = z @ W_dec + b_dec.
(tests/test_saelens.py checks the same files against sae_lens itself.)"""

from __future__ import annotations

import argparse
import json

import pytest
import safetensors.torch
import torch

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.saelens import add_arguments, export_saelens, import_saelens, load_any, run

D_IN, D_SAE = 16, 40
SOURCE = {"model": "EleutherAI/pythia-70m-deduped", "hook": "blocks.2.hook_resid_post", "layer": 2,
          "processed": True, "context_size": 256, "dataset": "NeelNanda/pile-10k"}


def make(kind: str, seed: int = 0, **kw) -> Dictionary:
    torch.manual_seed(seed)
    d = Dictionary.create(kind, d_in=D_IN, d_latent=D_SAE, k=5 if kind == "sae-topk" else None,
                                    source=dict(SOURCE), **kw)
    with torch.no_grad():
        d.b_enc.normal_(0, 0.2)
        d.b_dec.normal_(0, 0.5)
    return d


def saelens_math(folder, x):
    """SAELens's inference forward, written out from its source (standard/topk/jumprelu)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = safetensors.torch.load_file(str(folder / "sae_weights.safetensors"))
    pre = (x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)) @ w["W_enc"] + w["b_enc"]
    if cfg.get("architecture") == "topk":
        n = w["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else torch.ones(pre.shape[-1])
        pre = pre * n
        v, i = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
        return z, (z / n) @ w["W_dec"] + w["b_dec"]
    z = pre.relu()
    if cfg.get("architecture") == "jumprelu":
        z = z * (pre > w["threshold"])
    return z, z @ w["W_dec"] + w["b_dec"]


def write_saelens(folder, cfg: dict, weights: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def random_weights(seed=1, threshold=None):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) / 4, "b_enc": torch.randn(D_SAE, generator=g) / 5,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g) / 3, "b_dec": torch.randn(D_IN, generator=g)}
    if threshold is not None:
        w["threshold"] = threshold
    return w


@pytest.mark.parametrize("kind,scale", [("sae-l1", 1.0), ("sae-log", 0.25), ("sae-topk", 3.0), ("vae", 1.0)])
def test_export_matches_saelens_math_and_round_trips(tmp_path, kind, scale):
    d = make(kind, input_scale=scale)
    folder = export_saelens(d, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == ("topk" if kind == "sae-topk" else "standard")
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["model_name"] == SOURCE["model"]
    x = torch.randn(64, D_IN) * 2
    z, recons = saelens_math(folder, x)
    with torch.no_grad():
        torch.testing.assert_close(z, d.encode(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(recons, d(x), rtol=1e-6, atol=1e-6)
        back = import_saelens(folder)
        assert back.kind == ("sae-topk" if kind == "sae-topk" else "sae-l1")
        assert back.cfg.source["hook"] == SOURCE["hook"] and back.cfg.source["layer"] == 2
        torch.testing.assert_close(back.encode(x), d.encode(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(back(x), d(x), rtol=1e-6, atol=1e-6)


def test_raw_weights_are_recorded_for_saelens(tmp_path):
    d = make("sae-l1")
    d.cfg.source = {**SOURCE, "processed": False, "hook": "resid_post"}
    meta = json.loads((export_saelens(d, tmp_path / "sae") / "cfg.json").read_text())["metadata"]
    assert meta["model_from_pretrained_kwargs"]["fold_ln"] is False
    assert meta["hook_name"] == "blocks.2.hook_resid_post"  # short hook name made full


@pytest.mark.parametrize("kw,reason", [
    ({"kind": "vaease"}, "no SAELens equivalent"),
    ({"kind": "vae", "encoder": "authors"}, "encoder 'authors'"),
    ({"kind": "sae-l1", "encoder_layers": 2}, "x2"),
])
def test_export_refuses_what_saelens_cannot_express(tmp_path, kw, reason):
    kind = kw.pop("kind")
    with pytest.raises(SaeaseError, match=f"cannot export a {kind} dictionary to SAELens: .*{reason}"):
        export_saelens(make(kind, **kw), tmp_path / "sae")
    assert not (tmp_path / "sae").exists()  # nothing half-written


@pytest.mark.parametrize("cfg", [
    {"architecture": "standard", "apply_b_dec_to_input": True},
    {"architecture": "standard", "apply_b_dec_to_input": False},
    {"architecture": "topk", "k": 6, "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": True},
    {"architecture": "topk", "k": 6, "apply_b_dec_to_input": False},
    {"architecture": "jumprelu", "apply_b_dec_to_input": True},
])
def test_import_matches_saelens_math(tmp_path, cfg):
    threshold = -torch.rand(D_SAE) * (torch.arange(D_SAE) % 2) if cfg["architecture"] == "jumprelu" else None
    folder = write_saelens(tmp_path / "sae", {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                                              "normalize_activations": "none",
                                              "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.0.hook_mlp_out",
                                                           "model_name": "gpt2"}, **cfg},
                           random_weights(threshold=threshold))
    d = import_saelens(folder)
    x = torch.randn(64, D_IN) * 2
    z, recons = saelens_math(folder, x)
    with torch.no_grad():
        torch.testing.assert_close(d.encode(x), z, rtol=0, atol=1e-5)
        torch.testing.assert_close(d(x), recons, rtol=0, atol=1e-5)
    assert d.cfg.source["hook"] == "blocks.0.hook_mlp_out" and d.cfg.source["model"] == "gpt2"


def test_import_pre_6_config(tmp_path):
    folder = write_saelens(tmp_path / "old", {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.3.hook_resid_pre",
                                              "model_name": "gpt2-small", "activation_fn_str": "topk",
                                              "activation_fn_kwargs": {"k": 4}, "normalize_activations": False},
                           random_weights())
    d = import_saelens(folder)
    assert d.kind == "sae-topk" and d.cfg.k == 4
    assert d.cfg.source["hook"] == "blocks.3.hook_resid_pre" and d.cfg.source["layer"] == 3
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(d(x), saelens_math(write_saelens(
            tmp_path / "new", {"d_in": D_IN, "d_sae": D_SAE, "architecture": "topk", "k": 4}, random_weights()), x)[1],
            rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    (lambda c, w: c.update(architecture="gated"), "supported architectures are standard, topk and jumprelu"),
    (lambda c, w: c.update(architecture="jumprelu") or w.update(threshold=torch.linspace(-1, 1, D_SAE)),
     "mixes positive and non-positive JumpReLU thresholds"),
    (lambda c, w: c.update(normalize_activations="layer_norm"), "'layer_norm'"),
    (lambda c, w: w.update(W_enc=torch.zeros(D_IN, 3)), r"W_enc should have shape \(16, 40\)"),
    (lambda c, w: c.pop("d_sae"), "missing field 'd_sae'"),
])
def test_import_refuses_with_reason(tmp_path, change, message):
    cfg, w = {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard"}, random_weights()
    change(cfg, w)
    with pytest.raises(SaeaseError, match=message):
        import_saelens(write_saelens(tmp_path / "sae", cfg, w))


def test_not_a_saelens_folder(tmp_path):
    with pytest.raises(SaeaseError, match="not a SAELens SAE folder"):
        import_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8}))
    with pytest.raises(SaeaseError, match="sae_weights.safetensors: missing"):
        import_saelens(tmp_path)


def test_cli_and_eval_on_an_imported_sae(tmp_path):
    """`saease saelens import` writes a saease dictionary that `saease eval` evaluates."""
    from cli_runner import run_cli
    from saease.store import write_store

    folder = write_saelens(tmp_path / "sae", {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard",
                                              "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.0.hook_resid_post"}},
                           random_weights())
    summary = run(parse("import", folder, "--out", tmp_path / "dict"))
    assert summary["kind"] == "sae-l1" and summary["hook"] == "blocks.0.hook_resid_post"
    x = torch.randn(300, D_IN)
    store = write_store(tmp_path / "store", x)
    result = run_cli("eval", tmp_path / "dict", "--data", store.path, "--no-loss", "--no-progress", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    _, recons = saelens_math(folder, x)
    assert find_number(metrics, "re") == pytest.approx((x - recons).pow(2).sum(-1).mean().item(), rel=1e-4)
    assert load_any(folder).kind == load_any(tmp_path / "dict").kind == "sae-l1"
    direct = run_cli("eval", folder, "--data", store.path, "--no-loss", "--no-progress", "--json")  # no import step
    assert direct.returncode == 0, direct.stderr
    assert find_number(json.loads(direct.stdout.strip().splitlines()[-1]), "re") == pytest.approx(find_number(metrics, "re"))
    summary = run(parse("export", tmp_path / "dict", "--out", tmp_path / "again"))
    assert summary["architecture"] == "standard" and (tmp_path / "again" / "cfg.json").is_file()


def parse(*args):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([str(a) for a in args])


def find_number(obj, key):
    """The value of `key` anywhere in a nested JSON summary."""
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], (int, float)):
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for item in obj:
            found = find_number(item, key)
            if found is not None:
                return found
    return None
