"""saease.models on the offline tiny Pythia fixture: loading, hook names, activations."""

from __future__ import annotations

import time

import pytest
import torch

from saease.errors import SaeaseError
from saease.models import has_hooked_transformer, hook_layer, hook_name, is_encoder, load_model, run_to_hook

# TransformerLens 3.x: HookedTransformer; 4.x: TransformerBridge (the same activations)
HOOKED = has_hooked_transformer()
CAUSAL_CLASS = "HookedTransformer" if HOOKED else "TransformerBridge"


@pytest.fixture(scope="module")
def raw_model(tiny_pythia):
    return load_model(tiny_pythia, raw=True, device="cpu")


@pytest.fixture(scope="module")
def processed_model(tiny_pythia):
    return load_model(tiny_pythia, device="cpu")


@pytest.fixture(scope="module")
def hf_model(tiny_pythia):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pythia, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokens(raw_model):
    text = ["The cat sees the red ball in the park. A dog opens the blue door.",
            "My friend reads a long letter after dinner.<|endoftext|>The sun counts the map."]
    ids = [raw_model.tokenizer(t)["input_ids"][:12] for t in text]
    return torch.tensor(ids)  # [batch 2, pos 12]


def test_identity(tiny_pythia, raw_model, processed_model):
    assert raw_model.loaded.name == tiny_pythia
    assert raw_model.loaded.tokenizer_name_or_path == tiny_pythia
    assert raw_model.loaded.revision is None
    assert raw_model.loaded.processed is False and processed_model.loaded.processed is True
    assert processed_model.cfg.n_layers == 3 and processed_model.cfg.d_model == 64
    if HOOKED:  # a bridge's cfg keeps the checkpoint's "LN" (processing: test_processing_keeps_the_function)
        assert processed_model.cfg.normalization_type == "LNPre"
        assert raw_model.cfg.normalization_type == "LN"
    assert raw_model.tokenizer.eos_token == "<|endoftext|>"
    assert raw_model.loaded.architecture == "GPTNeoXForCausalLM"
    assert raw_model.loaded.model_class == type(raw_model).__name__ == CAUSAL_CLASS and raw_model.loaded.absent == ()
    assert not is_encoder(raw_model)  # BERTs: tests/test_harvest_encoder.py


def test_raw_resid_post_matches_hf_hidden_states(raw_model, hf_model, tokens):
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states
    for layer in range(raw_model.cfg.n_layers - 1):  # HF's last hidden state has ln_f applied
        acts = run_to_hook(raw_model, tokens, hook_name(raw_model, layer, "resid_post"))
        assert acts.shape == (2, 12, 64)
        torch.testing.assert_close(acts, hidden[layer + 1], rtol=1e-5, atol=1e-5)
    acts = run_to_hook(raw_model, tokens, hook_name(raw_model, 0, "resid_pre"))
    torch.testing.assert_close(acts, hidden[0], rtol=1e-5, atol=1e-5)


def test_raw_logits_match_hf(raw_model, hf_model, tokens):
    with torch.no_grad():
        torch.testing.assert_close(raw_model(tokens), hf_model(tokens).logits,
                                   rtol=1e-4, atol=1e-4)


def test_processing_keeps_the_function(raw_model, processed_model, tokens):
    with torch.no_grad():
        raw_lp = raw_model(tokens).log_softmax(-1)
        proc_lp = processed_model(tokens).log_softmax(-1)
    torch.testing.assert_close(proc_lp, raw_lp, rtol=1e-4, atol=1e-4)
    # center_writing_weights: the processed residual stream is the raw one minus its mean.
    name = hook_name(raw_model, 1, "resid_post")
    raw = run_to_hook(raw_model, tokens, name)
    proc = run_to_hook(processed_model, tokens, name)
    torch.testing.assert_close(proc, raw - raw.mean(-1, keepdim=True), rtol=1e-4, atol=1e-4)


def test_run_to_hook_stops_after_the_hook(processed_model, tokens):
    fired = []
    later = [f"blocks.1.hook_{h}" for h in ("attn_out", "mlp_out", "resid_post")]
    later += ["blocks.2.hook_resid_pre", "ln_final.hook_normalized"]
    hooks = [(h, lambda act, hook: fired.append(hook.name)) for h in later]
    with processed_model.hooks(fwd_hooks=hooks):
        run_to_hook(processed_model, tokens, "blocks.1.hook_resid_pre")
    assert fired == []
    assert not any(hp.fwd_hooks for hp in processed_model.hook_dict.values())  # cleaned up
    full = processed_model(tokens, stop_at_layer=2)
    torch.testing.assert_close(run_to_hook(processed_model, tokens, "blocks.1.hook_resid_post"), full)


def test_dtype_cast(tiny_pythia, tokens):
    model = load_model(tiny_pythia, device="cpu", dtype=torch.bfloat16)
    acts = run_to_hook(model, tokens, hook_name(model, 0, "resid_post"))
    assert acts.dtype == torch.bfloat16


def test_hook_names(processed_model):
    assert hook_name(processed_model, 2, "resid_post") == "blocks.2.hook_resid_post"
    assert hook_name(processed_model, 0, "mlp_out") == "blocks.0.hook_mlp_out"
    assert hook_name(processed_model, 1, "blocks.1.hook_attn_out") == "blocks.1.hook_attn_out"
    assert hook_layer("blocks.2.hook_resid_post") == 2
    with pytest.raises(SaeaseError, match="not inside a block"):
        hook_layer("hook_embed")


def test_layer_out_of_range(processed_model):
    with pytest.raises(SaeaseError, match=r"layer 3 is out of range.*0\.\.2"):
        hook_name(processed_model, 3, "resid_post")
    with pytest.raises(SaeaseError, match="out of range"):
        hook_name(processed_model, -1, "resid_post")


def test_unknown_hook(processed_model):
    with pytest.raises(SaeaseError, match="unknown hook 'resid_foo'.*resid_pre.*mlp_out"):
        hook_name(processed_model, 0, "resid_foo")
    # Pythia runs attention and MLP in parallel: there is no resid_mid.
    with pytest.raises(SaeaseError, match="resid_mid"):
        hook_name(processed_model, 0, "resid_mid")


@pytest.mark.parametrize("name", ["pythia-70m", "EleutherAI/pythia-70m-deduped"])
def test_offline_hub_id_fails_fast(name, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    start = time.monotonic()
    with pytest.raises(SaeaseError) as info:
        load_model(name)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert name in message and "offline" in message and "\n" not in message


def test_hub_name_loads_from_local_cache(tiny_pythia, raw_model, tokens, monkeypatch, tmp_path):
    """A hub name found in the Hugging Face cache loads offline through the same code path."""
    import shutil

    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--EleutherAI--pythia-70m"
    shutil.copytree(tiny_pythia, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    model = load_model("pythia-70m", raw=True, device="cpu")
    assert model.loaded.name == model.loaded.tokenizer_name_or_path == "EleutherAI/pythia-70m"
    assert model.loaded.revision == commit and model.loaded.processed is False
    if HOOKED:  # converted with TransformerLens's own config for that name
        assert model.cfg.model_name == "pythia-70m"
    name = hook_name(model, 1, "resid_post")
    torch.testing.assert_close(run_to_hook(model, tokens, name), run_to_hook(raw_model, tokens, name))


def test_bad_names(tmp_path):
    with pytest.raises(SaeaseError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(SaeaseError, match="no such model folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(SaeaseError, match="no config.json"):
        load_model(str(tmp_path))
