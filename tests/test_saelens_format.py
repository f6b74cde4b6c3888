"""saease.saelens without sae_lens installed: our export/import against SAELens's documented
math, z = act((x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc), x̂ = z @ W_dec + b_dec.
(tests/test_saelens.py checks the same files against sae_lens itself.)"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from saease.dictionary import Dictionary
from saease.metrics import active_mask
from saease.errors import SaeaseError
from saease.saelens import SaelensConfig, export_saelens, import_saelens, load_any, run

D_IN, D_SAE = 16, 40
SOURCE = {"model": "EleutherAI/pythia-70m-deduped", "hook": "blocks.2.hook_resid_post", "layer": 2,
          "processed": True, "context_size": 256, "dataset": "NeelNanda/pile-10k"}


# kind, input scale, the SAELens architecture it exports as, the kind it imports back as
EXPORTS = [("sae-l1", 1.0, "standard", "sae-l1"), ("sae-log", 0.25, "standard", "sae-l1"),
           ("sae-topk", 3.0, "topk", "sae-topk"), ("sae-batchtopk", 2.0, "jumprelu", "sae-jumprelu"),
           ("sae-matryoshka", 0.5, "jumprelu", "sae-jumprelu"), ("sae-jumprelu", 2.0, "jumprelu", "sae-jumprelu"),
           ("sae-gated", 1.5, "gated", "sae-gated"), ("vae", 1.0, "standard", "sae-l1"),
           ("vaease", 2.0, "saease-vaease", "vaease")]


def make(kind: str, seed: int = 0, **kw) -> Dictionary:
    """A dictionary of `kind` with every parameter random (biases, thresholds, spread head), so
    an export that dropped or mis-scaled one would show."""
    torch.manual_seed(seed)
    k = 5 if kind in ("sae-topk", "sae-batchtopk", "sae-matryoshka") else None
    d = Dictionary.create(kind, d_in=D_IN, d_latent=D_SAE, k=k, source=dict(SOURCE), **kw)
    with torch.no_grad():
        d.b_enc.normal_(0, 0.2)
        d.b_dec.normal_(0, 0.5)
        for name in ("b_mag", "r_mag", "b_sig"):
            if hasattr(d, name):
                getattr(d, name).normal_(0, 0.3)
        if hasattr(d, "W_sig"):
            d.W_sig.normal_(0, 0.5)
        if d.kind == "sae-jumprelu":
            d.threshold.copy_(torch.randn(d.cfg.d_latent).mul(0.5).add(-1).exp())
        if kind in ("sae-batchtopk", "sae-matryoshka"):
            d.threshold.fill_(0.3)  # as if trained
    return d


def saelens_math(folder, x):
    """SAELens's inference forward, written out from its source (standard, topk, jumprelu,
    gated) and from saease/saelens_sae.py (saease-vaease, saease-vae)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = safetensors.torch.load_file(str(folder / "sae_weights.safetensors"))
    arch = cfg.get("architecture", "standard")
    x = x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    if arch == "gated":
        z = (x @ w["W_enc"] + w["b_gate"] > 0) * (x @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]).relu()
        return z, z @ w["W_dec"] + w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if arch == "topk":
        n = w["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else torch.ones(pre.shape[-1])
        pre = pre * n
        v, i = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
        return z, (z / n) @ w["W_dec"] + w["b_dec"]
    z = pre.relu()
    if arch == "jumprelu":
        z = z * (pre > w["threshold"])
    if arch == "saease-vaease":
        var = torch.sigmoid(x @ w["W_sig"] + w["b_sig"]).clamp_min(1e-7)
        z = (1 - var.sqrt()) * z
        if cfg.get("code", "soft") == "exact":  # zero outside the two-means active set of log σ²
            z = z * active_mask(var.log(), True)
    return z, z @ w["W_dec"] + w["b_dec"]


def write_saelens(folder, cfg: dict, weights: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def random_weights(seed=1, threshold=None, architecture="standard"):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) / 4, "b_enc": torch.randn(D_SAE, generator=g) / 5,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g) / 3, "b_dec": torch.randn(D_IN, generator=g)}
    if threshold is not None:
        w["threshold"] = threshold
    if architecture == "gated":
        w.update(b_gate=w.pop("b_enc"), b_mag=torch.randn(D_SAE, generator=g) / 5, r_mag=torch.randn(D_SAE, generator=g) / 3)
    if architecture.startswith("saease-"):
        w.update(W_sig=torch.randn(D_IN, D_SAE, generator=g), b_sig=torch.randn(D_SAE, generator=g))
    return w


@pytest.mark.parametrize("kind,scale,architecture,back_kind", EXPORTS)
def test_export_matches_saelens_math_and_round_trips(tmp_path, kind, scale, architecture, back_kind):
    d = make(kind, input_scale=scale)
    folder = export_saelens(d, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["model_name"] == SOURCE["model"]
    x = torch.randn(64, D_IN) * 2
    z, recons = saelens_math(folder, x)
    with torch.no_grad():
        codes = d.encode(x)
        assert 0.05 < (codes != 0).float().mean() < 0.95  # the gates/thresholds decide something
        torch.testing.assert_close(z, codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(recons, d(x), rtol=1e-5, atol=1e-5)
        back = import_saelens(folder)
        assert back.kind == back_kind
        assert back.cfg.source["hook"] == SOURCE["hook"] and back.cfg.source["layer"] == 2
        torch.testing.assert_close(back.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(x), d(x), rtol=1e-5, atol=1e-5)


TENSORS = {"standard": {"W_enc", "b_enc", "W_dec", "b_dec"}, "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
           "jumprelu": {"W_enc", "b_enc", "threshold", "W_dec", "b_dec"},
           "gated": {"W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"},
           "saease-vaease": {"W_enc", "b_enc", "W_sig", "b_sig", "W_dec", "b_dec"}}


@pytest.mark.parametrize("kind,scale,architecture,back_kind", EXPORTS)
def test_export_layout(tmp_path, kind, scale, architecture, back_kind):
    """Each architecture's tensors are exactly the ones SAELens's class has, with its shapes."""
    folder = export_saelens(make(kind, input_scale=scale), tmp_path / "sae")
    w = safetensors.torch.load_file(str(folder / "sae_weights.safetensors"))
    assert set(w) == TENSORS[architecture]
    for name, t in w.items():
        expected = {"W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)}.get(name, (D_IN, D_SAE) if name.startswith("W_") else (D_SAE,))
        assert tuple(t.shape) == expected and t.dtype == torch.float32, name
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["normalize_activations"]) == (D_IN, D_SAE, "float32", "none")
    assert cfg["metadata"]["saease"]["kind"] == kind
    if kind == "sae-topk":
        assert cfg["k"] == 5 and cfg["rescale_acts_by_decoder_norm"] is False
    if kind in ("sae-batchtopk", "sae-matryoshka"):  # one learned θ for every latent, in code units
        assert torch.equal(w["threshold"], torch.full((D_SAE,), 0.3))


def test_untrained_batchtopk_exports_as_topk(tmp_path):
    """Before θ is estimated a BatchTopK SAE codes with per-row top-k, so it exports as topk."""
    d = make("sae-batchtopk", input_scale=2.0)
    d.threshold.fill_(-1.0)
    folder = export_saelens(d, tmp_path / "sae")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "topk"
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(saelens_math(folder, x)[0], d.encode(x), rtol=1e-5, atol=1e-5)


def test_vae_with_its_variance_head(tmp_path):
    """`variance_head=True` writes a VAE as saease-vae, σ² included, and it imports back as a vae
    whose σ² (what AD reads) is the original's."""
    d = make("vae", input_scale=0.5)
    folder = export_saelens(d, tmp_path / "sae", variance_head=True)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "saease-vae" and cfg["metadata"]["saease"]["note"] is None
    assert set(safetensors.torch.load_file(str(folder / "sae_weights.safetensors"))) == TENSORS["saease-vaease"]
    back = import_saelens(folder)
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        assert back.kind == "vae"
        torch.testing.assert_close(saelens_math(folder, x)[0], d.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back.encoder_output(back.scale_in(x)).var,
                                   d.encoder_output(d.scale_in(x)).var, rtol=1e-5, atol=1e-7)
    plain = json.loads((export_saelens(d, tmp_path / "plain") / "cfg.json").read_text())
    assert plain["architecture"] == "standard" and plain["metadata"]["saease"]["note"] == "the variance head is not exported"


def test_raw_weights_are_recorded_for_saelens(tmp_path):
    d = make("sae-l1")
    d.cfg.source = {**SOURCE, "processed": False, "hook": "resid_post"}
    meta = json.loads((export_saelens(d, tmp_path / "sae") / "cfg.json").read_text())["metadata"]
    assert meta["model_from_pretrained_kwargs"]["fold_ln"] is False
    assert meta["hook_name"] == "blocks.2.hook_resid_post"  # short hook name made full


@pytest.mark.parametrize("kw,reason", [
    ({"kind": "vaease", "encoder": "authors"}, "encoder 'authors'"),
    ({"kind": "vae", "decoder_layers": 2}, "decoder_layers=2"),
    ({"kind": "sae-l1", "encoder_layers": 2}, "x2"),
    ({"kind": "sae-l1", "variance_head": True}, "--variance-head applies to a vae only"),
])
def test_export_refuses_what_saelens_cannot_express(tmp_path, kw, reason):
    kind = kw.pop("kind")
    variance_head = kw.pop("variance_head", False)
    with pytest.raises(SaeaseError, match=f"cannot export a {kind} dictionary to SAELens: .*{reason}"):
        export_saelens(make(kind, **kw), tmp_path / "sae", variance_head=variance_head)
    assert not (tmp_path / "sae").exists()  # nothing half-written


@pytest.mark.parametrize("cfg", [
    {"architecture": "standard", "apply_b_dec_to_input": True},
    {"architecture": "standard", "apply_b_dec_to_input": False},
    {"architecture": "topk", "k": 6, "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": True},
    {"architecture": "topk", "k": 6, "apply_b_dec_to_input": False},
    {"architecture": "jumprelu", "apply_b_dec_to_input": True},
    {"architecture": "jumprelu", "apply_b_dec_to_input": True, "positive": True},
    {"architecture": "gated", "apply_b_dec_to_input": True},
    {"architecture": "gated", "apply_b_dec_to_input": False},
    {"architecture": "saease-vaease", "apply_b_dec_to_input": True},
    {"architecture": "saease-vae", "apply_b_dec_to_input": True},
])
def test_import_matches_saelens_math(tmp_path, cfg):
    cfg = dict(cfg)
    threshold = None
    if cfg["architecture"] == "jumprelu":
        threshold = (torch.rand(D_SAE) / 2 + 0.05) if cfg.pop("positive", False) else -torch.rand(D_SAE) * (torch.arange(D_SAE) % 2)
    folder = write_saelens(tmp_path / "sae", {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                                              "normalize_activations": "none",
                                              "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.0.hook_mlp_out",
                                                           "model_name": "gpt2"}, **cfg},
                           random_weights(threshold=threshold, architecture=cfg["architecture"]))
    d = import_saelens(folder)
    assert d.kind == {"standard": "sae-l1", "topk": "sae-topk", "gated": "sae-gated", "saease-vaease": "vaease",
                      "saease-vae": "vae", "jumprelu": "sae-jumprelu" if threshold is not None and (threshold > 0).all()
                      else "sae-l1"}[cfg["architecture"]]
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
    (lambda c, w: c.update(architecture="transcoder"), "supported architectures are standard, topk, jumprelu, gated"),
    (lambda c, w: c.update(architecture="gated"), r"b_gate should have shape \(40,\) .* got absent"),
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
    summary = run(SaelensConfig("import", str(folder), out=str(tmp_path / "dict")))
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
    summary = run(SaelensConfig("export", str(tmp_path / "dict"), out=str(tmp_path / "again")))
    assert summary["architecture"] == "standard" and (tmp_path / "again" / "cfg.json").is_file()


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
