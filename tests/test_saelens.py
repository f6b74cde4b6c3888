"""Round trips through sae_lens itself (a second environment: `.ci/saelens.sh`).

Every kind's export is loaded with `sae_lens.SAE.load_from_disk` and must encode, decode and
splice like the saease dictionary (VAEase and the VAE's saease-* architectures once
saease.saelens_sae has registered them); SAEs that SAELens saves are imported and must agree
with SAELens."""

from __future__ import annotations

import warnings

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is tested in its own environment (.ci/saelens.sh)")

from saease.dictionary import Dictionary  # noqa: E402
from saease.lens import splice  # noqa: E402
from saease.saelens import export_saelens, import_saelens  # noqa: E402
import saease.saelens_sae  # noqa: E402  (registers saease-vaease and saease-vae with SAELens)

D_IN, D_SAE = 64, 96
HOOK = "blocks.1.hook_resid_post"


def assert_agree(actual, expected, tol=1e-6):
    """Agreement to `tol` relative to the tensor's scale: max |a − e| ≤ tol · max |e|
    (float32 rounding differs once the input scale is folded into the weights)."""
    err = (actual - expected).abs().max().item()
    assert err <= tol * expected.abs().max().item(), f"max difference {err:.3g}"


def make(kind: str, scale: float, seed: int = 0, model: str = "tiny") -> Dictionary:
    """A dictionary of `kind` with every parameter random (biases, thresholds, spread head)."""
    torch.manual_seed(seed)
    k = 8 if kind in ("sae-topk", "sae-batchtopk", "sae-matryoshka") else None
    d = Dictionary.create(kind, d_in=D_IN, d_latent=D_SAE, k=k, input_scale=scale,
                          source={"model": model, "hook": HOOK, "layer": 1})
    with torch.no_grad():
        d.b_enc.normal_(0, 0.2)
        d.b_dec.normal_(0, 0.5)
        for name in ("b_mag", "r_mag", "b_sig"):
            if hasattr(d, name):
                getattr(d, name).normal_(0, 0.3)
        if hasattr(d, "W_sig"):
            d.W_sig.normal_(0, 0.5 / scale)
        if d.kind == "sae-jumprelu":
            d.threshold.copy_(torch.randn(d.cfg.d_latent).mul(0.5).add(-1.5).exp())
        if kind in ("sae-batchtopk", "sae-matryoshka"):
            d.threshold.fill_(0.2)  # as if trained
    return d


def load(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sae_lens.SAE.load_from_disk(str(folder))


# kind, input scale, the SAELens architecture (and class) it loads as, the kind it imports back as
EXPORTS = [("sae-l1", 1.0, "standard", "sae-l1"), ("sae-log", 0.3, "standard", "sae-l1"),
           ("sae-topk", 2.5, "topk", "sae-topk"), ("sae-batchtopk", 2.0, "jumprelu", "sae-jumprelu"),
           ("sae-matryoshka", 0.5, "jumprelu", "sae-jumprelu"), ("sae-jumprelu", 1.7, "jumprelu", "sae-jumprelu"),
           ("sae-gated", 1.5, "gated", "sae-gated"), ("vae", 1.0, "standard", "sae-l1"),
           ("vaease", 2.0, "saease-vaease", "vaease")]


@pytest.mark.parametrize("kind,scale,architecture,back_kind", EXPORTS)
def test_export_loads_in_saelens_with_equal_outputs(tmp_path, kind, scale, architecture, back_kind):
    d = make(kind, scale)
    sae = load(export_saelens(d, tmp_path / "sae"))
    assert sae.cfg.architecture() == architecture
    assert sae.cfg.metadata.hook_name == HOOK
    x = torch.randn(128, D_IN)
    with torch.no_grad():
        codes = d.encode(x)
        assert 0.05 < (codes != 0).float().mean() < 0.95  # thresholds and gates decide something
        assert_agree(sae.encode(x), codes)
        assert_agree(sae.decode(codes), d.decode(codes))
        assert_agree(sae(x), d(x))
        back = import_saelens(tmp_path / "sae")  # and back into saease
        assert back.kind == back_kind
        assert_agree(back.encode(x), codes)
        assert_agree(back(x), d(x))


def test_vae_variance_head_in_saelens(tmp_path):
    """A VAE exported with its variance head loads as saease-vae: code μ and σ² as saease's."""
    d = make("vae", 0.7)
    sae = load(export_saelens(d, tmp_path / "sae", variance_head=True))
    assert isinstance(sae, saease.saelens_sae.VAESAE)
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        assert_agree(sae.encode(x), d.encode(x))
        assert_agree(sae.variance(x), d.encoder_output(d.scale_in(x)).var)
        assert_agree(sae(x), d(x))
        assert import_saelens(tmp_path / "sae").kind == "vae"


def test_vaease_saved_by_saelens_imports_back(tmp_path):
    """SAELens's own save_model of a loaded VAEase writes a folder saease imports unchanged."""
    d = make("vaease", 1.3)
    sae = load(export_saelens(d, tmp_path / "sae"))
    sae.save_model(tmp_path / "resaved")
    back = import_saelens(tmp_path / "resaved")
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        assert back.kind == "vaease"
        assert_agree(back(x), d(x))
        assert_agree(back.encode(x), sae.encode(x))


def test_registering_twice_is_harmless():
    saease.saelens_sae.register()
    assert sae_lens.registry.get_sae_class("saease-vaease")[0] is saease.saelens_sae.VAEaseSAE


def saelens_sae(architecture: str, seed: int = 1):
    """A SAELens SAE with biases everywhere and the options our import has to fold."""
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=HOOK, model_name="tiny")
    common = {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": True, "metadata": meta}
    if architecture == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**common))
    elif architecture == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(k=8, rescale_acts_by_decoder_norm=True, **common))
    elif architecture == "gated":
        sae = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(**common))
    else:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**common))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.2)
        if architecture == "jumprelu-relu":
            sae.threshold.copy_(-sae.threshold.abs())  # ≤ 0: a ReLU, which saease can hold
        elif architecture == "jumprelu":
            sae.threshold.copy_(sae.threshold.abs() + 0.05)
    return sae


def batchtopk_saved_for_inference(path, seed: int = 1):
    """What SAELens writes for a trained BatchTopK SAE: a jumprelu folder with its one θ."""
    from sae_lens.saes.sae import SAEMetadata, TrainStepInput

    torch.manual_seed(seed)
    sae = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=8, topk_threshold_lr=1.0, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.5)
        sae.training_forward_pass(TrainStepInput(sae_in=torch.randn(64, D_IN), coefficients={},
                                                 dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
    assert sae.topk_threshold > 0
    sae.save_inference_model(path)
    return path


@pytest.mark.parametrize("architecture,kind", [("standard", "sae-l1"), ("topk", "sae-topk"), ("jumprelu", "sae-jumprelu"),
                                               ("jumprelu-relu", "sae-l1"), ("gated", "sae-gated")])
def test_import_of_saelens_saes_agrees(tmp_path, architecture, kind):
    sae = saelens_sae(architecture)
    sae.save_model(tmp_path / "sae")
    d = import_saelens(tmp_path / "sae")
    assert d.kind == kind
    x = torch.randn(128, D_IN)
    with torch.no_grad():
        assert 0.05 < (sae.encode(x) != 0).float().mean() < 0.95
        assert_agree(d.encode(x), sae.encode(x))
        assert_agree(d(x), sae(x))
    # and back out: the saease copy written again for SAELens agrees with the original
    again = load(export_saelens(d, tmp_path / "again"))
    with torch.no_grad():
        assert_agree(again(x), sae(x))
        assert_agree(again(x), d(x))


def test_import_of_a_saelens_batchtopk_agrees(tmp_path):
    folder = batchtopk_saved_for_inference(tmp_path / "sae")
    sae = load(folder)
    assert sae.cfg.architecture() == "jumprelu" and sae.threshold.unique().numel() == 1
    d = import_saelens(folder)
    x = torch.randn(128, D_IN)
    with torch.no_grad():
        assert d.kind == "sae-jumprelu"
        assert_agree(d.encode(x), sae.encode(x))
        assert_agree(d(x), sae(x))


@pytest.mark.parametrize("kind", ["sae-topk", "vaease"])
def test_splice_matches_hooked_sae_transformer(tiny_pythia, tmp_path, kind):
    """Our splice and SAELens's HookedSAETransformer.run_with_saes give the same logits."""
    from saease.models import load_model

    model = load_model(tiny_pythia, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked_sae = sae_lens.HookedSAETransformer(model.cfg, model.tokenizer)
    hooked_sae.load_state_dict(model.state_dict(), strict=False)
    tokens = torch.tensor([model.tokenizer("The cat sees the red ball in the park.")["input_ids"][:8]])
    d = make(kind, 1.7, model=tiny_pythia)
    sae = load(export_saelens(d, tmp_path / "sae"))
    with torch.no_grad():
        torch.testing.assert_close(hooked_sae(tokens), model(tokens), rtol=0, atol=1e-5)
        with splice(model, d):
            ours = model(tokens)
        theirs = hooked_sae.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - model(tokens)).abs().max() > 1e-2
