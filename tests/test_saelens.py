"""Round trips through sae_lens itself (a second environment: `.ci/saelens.sh`).

Our export is loaded with `sae_lens.SAE.load_from_disk` and must encode, decode and splice like
the saease dictionary; SAEs that SAELens saves are imported and must agree with SAELens."""

from __future__ import annotations

import warnings

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is tested in its own environment (.ci/saelens.sh)")

from saease.dictionary import Dictionary  # noqa: E402
from saease.lens import splice  # noqa: E402
from saease.saelens import export_saelens, import_saelens  # noqa: E402

D_IN, D_SAE = 64, 96
HOOK = "blocks.1.hook_resid_post"


def assert_agree(actual, expected, tol=1e-6):
    """Agreement to `tol` relative to the tensor's scale: max |a − e| ≤ tol · max |e|
    (float32 rounding differs once the input scale is folded into the weights)."""
    err = (actual - expected).abs().max().item()
    assert err <= tol * expected.abs().max().item(), f"max difference {err:.3g}"


def make(kind: str, scale: float, seed: int = 0, model: str = "tiny") -> Dictionary:
    torch.manual_seed(seed)
    d = Dictionary.create(kind, d_in=D_IN, d_latent=D_SAE, k=8 if kind == "sae-topk" else None,
                                    input_scale=scale, source={"model": model, "hook": HOOK, "layer": 1})
    with torch.no_grad():
        d.b_enc.normal_(0, 0.2)
        d.b_dec.normal_(0, 0.5)
    return d


def load(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sae_lens.SAE.load_from_disk(str(folder))


@pytest.mark.parametrize("kind,scale", [("sae-l1", 1.0), ("sae-log", 0.3), ("sae-topk", 2.5), ("vae", 1.0)])
def test_export_loads_in_saelens_with_equal_outputs(tmp_path, kind, scale):
    d = make(kind, scale)
    sae = load(export_saelens(d, tmp_path / "sae"))
    assert sae.cfg.architecture() == ("topk" if kind == "sae-topk" else "standard")
    assert sae.cfg.metadata.hook_name == HOOK
    x = torch.randn(128, D_IN)
    with torch.no_grad():
        assert_agree(sae.encode(x), d.encode(x))
        assert_agree(sae.decode(d.encode(x)), d.decode(d.encode(x)))
        assert_agree(sae(x), d(x))


def saelens_sae(architecture: str, seed: int = 1):
    """A SAELens SAE with biases everywhere and the options our import has to fold."""
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=HOOK, model_name="tiny")
    if architecture == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True,
                                                              metadata=meta))
    elif architecture == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8, apply_b_dec_to_input=True,
                                                      rescale_acts_by_decoder_norm=True, metadata=meta))
    else:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.2)
        if architecture == "jumprelu":
            sae.threshold.copy_(-sae.threshold.abs())  # ≤ 0: a ReLU, which saease can hold
    return sae


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_import_of_saelens_saes_agrees(tmp_path, architecture):
    sae = saelens_sae(architecture)
    sae.save_model(tmp_path / "sae")
    d = import_saelens(tmp_path / "sae")
    x = torch.randn(128, D_IN)
    with torch.no_grad():
        assert_agree(d.encode(x), sae.encode(x))
        assert_agree(d(x), sae(x))
    # and back out: the saease copy written again for SAELens agrees with the original
    again = load(export_saelens(d, tmp_path / "again"))
    with torch.no_grad():
        assert_agree(again(x), sae(x))
        assert_agree(again(x), d(x))


def test_splice_matches_hooked_sae_transformer(tiny_pythia, tmp_path):
    """Our splice and SAELens's HookedSAETransformer.run_with_saes give the same logits."""
    from saease.models import load_model

    model = load_model(tiny_pythia, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked_sae = sae_lens.HookedSAETransformer(model.cfg, model.tokenizer)
    hooked_sae.load_state_dict(model.state_dict(), strict=False)
    tokens = torch.tensor([model.tokenizer("The cat sees the red ball in the park.")["input_ids"][:8]])
    d = make("sae-topk", 1.7, model=tiny_pythia)
    sae = load(export_saelens(d, tmp_path / "sae"))
    with torch.no_grad():
        torch.testing.assert_close(hooked_sae(tokens), model(tokens), rtol=0, atol=1e-5)
        with splice(model, d):
            ours = model(tokens)
        theirs = hooked_sae.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - model(tokens)).abs().max() > 1e-2
