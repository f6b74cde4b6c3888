"""saease.train.step: the hand-written (fused) gradients equal autograd's on Dictionary.loss, kind by kind."""

from __future__ import annotations

import copy

import pytest
import torch

from saease.dictionary import Dictionary, DictionaryConfig
from saease.train.step import AutogradStep, FusedStep, fusable
from test_train_support import one_thread  # noqa: F401  (autouse)

KINDS = [
    ("sae-l1", dict(lambda1=0.3, lambda2=0.2)),
    ("sae-log", dict(lambda1=0.01, lambda2=0.2)),
    ("sae-topk", dict(k=5)),
    ("vae", {}),
    ("vaease", {}),
    ("vaease", dict(gamma="learned", log_gamma_init=-1.0)),
]


def perturbed(cfg: DictionaryConfig) -> Dictionary:
    torch.manual_seed(0)
    m = Dictionary(cfg)
    with torch.no_grad():  # away from the tied init, with some negative pre-activations and spreads
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if cfg.is_vae:
            m.b_sig[:3] = -25.0  # σ² = sigmoid(s) below its clamp for a few latents
    return m


def with_grads(m: Dictionary) -> Dictionary:
    m = copy.deepcopy(m)
    for p in m.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    return m


@pytest.mark.parametrize("kind,knobs", KINDS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(KINDS)])
def test_fused_gradients_and_terms_match_autograd(kind, knobs):
    model = perturbed(DictionaryConfig(kind=kind, d_in=16, d_latent=24, input_scale=1.7, **knobs))
    x = torch.randn(37, 16, generator=torch.Generator().manual_seed(1))
    auto, fused = with_grads(model), with_grads(model)
    # several steps through the same objects: the fused step's buffers are reused, and the last
    # batch is shorter than the ones before
    for rows in (37, 37, 20):
        ta, _ = AutogradStep(auto, torch.Generator().manual_seed(rows))(x[:rows])
        tf, fired = FusedStep(fused, torch.Generator().manual_seed(rows))(x[:rows], full=True)
        assert set(ta) == set(tf)
        for name in ta:
            torch.testing.assert_close(tf[name], ta[name], rtol=1e-5, atol=1e-5)
        for (name, pa), (_, pf) in zip(auto.named_parameters(), fused.named_parameters()):
            if pa.requires_grad:
                torch.testing.assert_close(pf.grad, pa.grad, rtol=1e-5, atol=1e-6, msg=name)
        codes = auto.encode(x[:rows])
        assert torch.equal(fired, (codes != 0).any(0))
    assert (codes == 0).any() and (codes != 0).any()  # the ReLU's mask was exercised both ways


def test_half_precision_batches_give_the_float32_step():
    model = perturbed(DictionaryConfig(kind="vaease", d_in=16, d_latent=24))
    x = torch.randn(30, 16).half()  # what the loader hands a CUDA run: the store's dtype
    a, b = with_grads(model), with_grads(model)
    ta, _ = FusedStep(a, torch.Generator().manual_seed(0))(x)
    tb, _ = FusedStep(b, torch.Generator().manual_seed(0))(x.float())
    assert torch.equal(ta["mse"], tb["mse"]) and torch.equal(a.W_enc.grad, b.W_enc.grad)


def test_without_full_the_fused_step_skips_only_reporting_terms():
    model = perturbed(DictionaryConfig(kind="vaease", d_in=16, d_latent=24))
    a, b = with_grads(model), with_grads(model)
    x = torch.randn(40, 16)
    ta, _ = FusedStep(a, torch.Generator().manual_seed(0))(x, full=True)
    tb, _ = FusedStep(b, torch.Generator().manual_seed(0))(x, full=False)
    assert {"loss", "kl"} <= set(ta) and not {"loss", "kl"} & set(tb)
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.requires_grad:
            assert torch.equal(pa.grad, pb.grad)


def test_only_linear_one_layer_dictionaries_are_fused():
    assert fusable(Dictionary(DictionaryConfig(kind="sae-l1", d_in=8, d_latent=8)))
    assert not fusable(Dictionary(DictionaryConfig(kind="vaease", d_in=8, d_latent=8, encoder_layers=3)))
    assert not fusable(Dictionary(DictionaryConfig(kind="vaease", d_in=8, d_latent=8, encoder="authors")))
    assert not fusable(Dictionary(DictionaryConfig(kind="vae", d_in=8, d_latent=8, decoder_layers=2)))
