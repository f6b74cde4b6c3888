"""saease.lens on the tiny Pythia fixture, as a HookedTransformer and as a TransformerBridge:
hook points, splicing (with and without the error term), codes in run_with_cache, steering."""

from __future__ import annotations

import warnings

import pytest
import torch

from saease.dictionary import Dictionary, make_config
from saease.metrics import active_mask
from saease.errors import SaeaseError
from saease.lens import (DictionaryModelWarning, HookedDictionary, decoder_direction, feature_acts,
                         splice, steer, top_activations)
from saease.models import load_model

HOOK = "blocks.1.hook_resid_post"
D = 64


@pytest.fixture(scope="module")
def hooked(tiny_pythia):
    return load_model(tiny_pythia, device="cpu")


@pytest.fixture(scope="module")
def bridge(tiny_pythia):
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_transformers(tiny_pythia, device="cpu")
        model.enable_compatibility_mode(disable_warnings=True)
    return model


@pytest.fixture(params=["hooked", "bridge"])
def model(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def tokens(hooked):
    texts = ["The cat sees the red ball in the park.", "My friend reads a long letter after dinner."]
    return torch.tensor([hooked.tokenizer(t)["input_ids"][:8] for t in texts])


def source_of(model) -> dict:
    from saease.lens import model_identity

    name, processed = model_identity(model)
    return {"model": name, "hook": HOOK, "layer": 1, "processed": processed}


def random_dictionary(kind: str, source: dict, seed: int = 0, **kw) -> Dictionary:
    torch.manual_seed(seed)
    cfg = make_config(kind, d_in=D, d_latent=96, k=8 if kind == "sae-topk" else None,
                           source=source, **kw)
    d = Dictionary.build(cfg)
    with torch.no_grad():  # non-trivial biases and variances
        d.b_enc.normal_(0, 0.1)
        d.b_dec.normal_(0, 0.3)
        if cfg.kind in ("vae", "vaease"):
            d.W_sig.normal_(0, 0.3)
    return d


def exact_dictionary(source: dict, input_scale: float = 2.0) -> Dictionary:
    """d_latent = 2·d_model, W_enc = [I, −I], W_dec = [I; −I]: ReLU(x) − ReLU(−x) = x."""
    eye = torch.eye(D)
    d = Dictionary.create("sae-l1", d_in=D, d_latent=2 * D, input_scale=input_scale,
                                    source=source)
    with torch.no_grad():
        d.W_enc.copy_(torch.cat([eye, -eye], 1))
        d.W_dec.copy_(torch.cat([eye, -eye], 0))
        d.b_enc.zero_()
        d.b_dec.zero_()
    return d


def resid(model, tokens, hook=HOOK):
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    return cache[hook]


@pytest.mark.parametrize("kind", ["vaease", "sae-topk", "sae-l1"])
def test_error_term_leaves_logits_exactly_unchanged(model, tokens, kind):
    clean = model(tokens)
    d = random_dictionary(kind, source_of(model))
    with splice(model, d, use_error_term=True):
        spliced = model(tokens)
        cached, _ = model.run_with_cache(tokens)  # hooks on every point: the error is recomputed
    assert torch.equal(spliced, clean) and torch.equal(cached, clean)
    with splice(model, d):  # without the error term a random dictionary does change them
        assert not torch.allclose(model(tokens), clean, atol=1e-3)
    assert torch.equal(model(tokens), clean)  # and leaving the block undoes the splice
    assert not any("hook_sae" in name for name in model.hook_dict)


def test_exact_dictionary_reproduces_clean_run(model, tokens):
    clean = model(tokens)
    with splice(model, exact_dictionary(source_of(model))) as hd:
        spliced, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(spliced, clean, rtol=0, atol=1e-6)
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_recons"], cache[f"{HOOK}.hook_sae_input"], rtol=0, atol=1e-6)
    assert hd.hook_sae_acts_post.name == "hook_sae_acts_post"  # own names back after the block


def test_codes_readable_through_run_with_cache(model, tokens):
    d = random_dictionary("sae-l1", source_of(model), input_scale=0.5)
    x = resid(model, tokens)
    with splice(model, d, use_error_term=True):
        _, cache = model.run_with_cache(tokens)
    c = {name.removeprefix(HOOK + "."): v for name, v in cache.items() if name.startswith(HOOK + ".hook_sae")}
    assert set(c) == {"hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
                      "hook_sae_error", "hook_sae_output"}
    torch.testing.assert_close(c["hook_sae_input"], x)
    with torch.no_grad():
        codes = d.encode(x)
        pre = (0.5 * x) @ d.W_enc + d.b_enc
    assert c["hook_sae_acts_post"].shape == (*tokens.shape, 96)
    torch.testing.assert_close(c["hook_sae_acts_pre"], pre, rtol=0, atol=1e-6)
    torch.testing.assert_close(c["hook_sae_acts_post"], codes, rtol=0, atol=1e-6)
    torch.testing.assert_close(c["hook_sae_recons"], d.decode(codes).detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(c["hook_sae_error"], x - c["hook_sae_recons"], rtol=0, atol=1e-6)
    assert (c["hook_sae_acts_pre"] < 0).any() and (c["hook_sae_acts_post"] >= 0).all()


def test_vaease_exposes_mean_variance_and_gated_code(hooked, tokens):
    d = random_dictionary("vaease", source_of(hooked))
    with splice(hooked, d):
        _, cache = hooked.run_with_cache(tokens, names_filter=lambda n: "hook_sae" in n)
    mu, var, code = (cache[f"{HOOK}.hook_sae_{n}"] for n in ("acts_pre", "var", "acts_post"))
    assert ((var > 0) & (var < 1)).all()
    # acts_pre: the mean head before its ReLU; the exact code zeroes what is outside the active set
    active = active_mask(var.log().flatten(0, -2), True).view_as(var)
    torch.testing.assert_close(code, (1 - var.sqrt()) * mu.relu() * active)
    torch.testing.assert_close(code, d.encode(cache[f"{HOOK}.hook_sae_input"]).detach())


def test_hooks_on_codes_change_the_model(hooked, tokens):
    """Zeroing the codes with the error term on leaves x − x̂(x) + b_dec at the hook (SAELens's
    semantics: the error is computed without the edit)."""
    d = random_dictionary("sae-topk", source_of(hooked))
    x = resid(hooked, tokens)
    with splice(hooked, d, use_error_term=True):
        edited = hooked.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", lambda a, hook: a * 0)])
        _, cache = hooked.run_with_cache(tokens, names_filter=HOOK)
        with hooked.hooks(fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", lambda a, hook: a * 0)]):
            _, edited_cache = hooked.run_with_cache(tokens, names_filter=HOOK)
    assert not torch.allclose(edited, hooked(tokens), atol=1e-3)
    torch.testing.assert_close(cache[HOOK], x)  # the model's own hook shows what flows on
    expected = x - d(x).detach() + d.b_dec.detach()
    torch.testing.assert_close(edited_cache[HOOK], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sae-l1", "vaease"])
def test_steering_moves_the_activation_by_alpha_times_the_column(model, tokens, kind):
    d = random_dictionary(kind, source_of(model), input_scale=4.0)
    later = "blocks.2.hook_resid_post"
    _, clean = model.run_with_cache(tokens, names_filter=[HOOK, later])
    with steer(model, d, feature=5, alpha=3.0):
        _, steered = model.run_with_cache(tokens, names_filter=[HOOK, later])
    column = d.W_dec[5].detach() / 4.0
    torch.testing.assert_close(steered[HOOK] - clean[HOOK], (3.0 * column).expand_as(clean[HOOK]),
                               rtol=0, atol=1e-5)
    assert (steered[later] - clean[later]).abs().max() > 1e-3  # and it carries downstream
    torch.testing.assert_close(decoder_direction(d, 5), column)


def test_steering_a_spliced_model_equals_adding_to_the_code(hooked, tokens):
    d = random_dictionary("sae-l1", source_of(hooked))
    with splice(hooked, d), steer(hooked, d, feature=7, alpha=-2.0):
        steered = resid(hooked, tokens)
    bump = -2.0 * torch.nn.functional.one_hot(torch.tensor(7), 96)
    with splice(hooked, d), hooked.hooks(fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", lambda a, hook: a + bump)]):
        by_code = resid(hooked, tokens)
    with splice(hooked, d):
        plain = resid(hooked, tokens)
    torch.testing.assert_close(steered, by_code, rtol=1e-5, atol=1e-5)
    assert (steered - plain).abs().max() > 0.1


def test_feature_acts_and_top_activations(hooked, tokens):
    d = random_dictionary("sae-l1", source_of(hooked))
    acts = feature_acts(hooked, d, tokens)
    torch.testing.assert_close(acts, d.encode(resid(hooked, tokens)).detach())
    feature = int(acts.sum((0, 1)).argmax())
    top = top_activations(hooked, d, tokens, feature, k=3)
    assert [t["activation"] for t in top] == sorted((t["activation"] for t in top), reverse=True)
    assert top[0]["activation"] == pytest.approx(acts[..., feature].max().item())
    first = top[0]
    assert first["token"] == hooked.tokenizer.decode([int(tokens[first["seq"], first["pos"]])])
    assert first["context"].endswith(first["token"])


def test_hooked_dictionary_alone(tokens):
    d = random_dictionary("sae-topk", {})
    hd = HookedDictionary(d)
    x = torch.randn(5, D)
    out, cache = hd.run_with_cache(x)
    assert set(cache.keys()) >= {"hook_sae_input", "hook_sae_acts_post", "hook_sae_recons"}
    assert (cache["hook_sae_acts_post"] != 0).sum(-1).max() <= 8
    torch.testing.assert_close(out, d(x))


def test_splice_accepts_a_folder_and_a_hook_override(hooked, tokens, tmp_path):
    d = random_dictionary("sae-l1", {"model": source_of(hooked)["model"]})
    d.save(tmp_path / "dict")
    with pytest.raises(SaeaseError, match="records no hook"):
        with splice(hooked, tmp_path / "dict"):
            pass
    with splice(hooked, tmp_path / "dict", hook="blocks.0.hook_resid_post", use_error_term=True):
        _, cache = hooked.run_with_cache(tokens, names_filter=lambda n: n.endswith("acts_post"))
    assert list(cache.keys()) == ["blocks.0.hook_resid_post.hook_sae_acts_post"]
    short = random_dictionary("sae-l1", {"hook": "resid_post", "layer": 2})
    with splice(hooked, short, use_error_term=True):
        assert "blocks.2.hook_resid_post.hook_sae_input" in hooked.hook_dict


def test_clear_errors(model, tokens):
    src = source_of(model)
    with pytest.raises(SaeaseError, match="blocks.9.hook_resid_post.*does not exist"):
        with splice(model, random_dictionary("sae-l1", {**src, "hook": "blocks.9.hook_resid_post"})):
            pass
    with pytest.raises(SaeaseError, match="d_in 32 .* d_model 64"):
        small = Dictionary.create("sae-l1", d_in=32, d_latent=16, source=src)
        with splice(model, small):
            pass
    with pytest.raises(SaeaseError, match="feature 96 is out of range"):
        with steer(model, random_dictionary("sae-l1", src), feature=96, alpha=1.0):
            pass
    d = random_dictionary("sae-l1", src)
    with splice(model, d):
        with pytest.raises(SaeaseError, match="already spliced"):
            with splice(model, d):
                pass
    with pytest.raises(SaeaseError, match="HookedTransformer or TransformerBridge"):
        with splice(torch.nn.Linear(2, 2), d):
            pass
    assert not any("hook_sae" in name for name in model.hook_dict)


def test_warns_by_name_when_trained_on_another_model(model, tokens):
    src = source_of(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right model: no warning
        with splice(model, random_dictionary("sae-l1", src), use_error_term=True):
            model(tokens)
    other = {**src, "model": "EleutherAI/pythia-410m"}
    with pytest.warns(DictionaryModelWarning, match=r"trained on model 'EleutherAI/pythia-410m' but is used on '.*tiny-pythia"):
        with splice(model, random_dictionary("sae-l1", other), use_error_term=True):
            pass
    raw = {**src, "processed": not src["processed"]}
    with pytest.warns(DictionaryModelWarning, match="weights"):
        with steer(model, random_dictionary("sae-l1", raw), feature=0, alpha=1.0):
            pass
