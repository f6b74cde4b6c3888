"""Logit effects: what each latent's decoder row does to the next-token logits, directly.

For a model with an unembedding, latent j's decoder row (in the store's units) read through the
unembedding, `W_dec[j] / input_scale · diag(ln_final.w) @ W_U`, is the change in the logits per
unit of the latent's code along the direct path (the part that skips every later block; SAE-Vis
and Neuronpedia show the same). The top and bottom `k` tokens are a latent's promoted and
suppressed tokens. With TransformerLens's processed weights the final LayerNorm's scale is
already folded into W_U; with raw weights it is applied here. Encoders (BERT: no next-token
unembedding) and MLP decoders (no single decoder row) have none.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from saease.dictionary import Dictionary
from saease.eval.stream import Notes


def unembedding(model) -> Float[Tensor, "d_model d_vocab"]:
    """W_U with the final LayerNorm's scale folded in (where the model still has one)."""
    W_U = model.W_U.detach().float()
    ln_w = getattr(getattr(model, "ln_final", None), "w", None)
    return W_U if ln_w is None else ln_w.detach().float()[:, None] * W_U


@torch.no_grad()
def logit_effects(dictionary: Dictionary, W_U: Float[Tensor, "d_model d_vocab"], k: int = 10, chunk: int = 1024,
                  progress: bool = False) -> tuple[Float[Tensor, "d_latent k"], Int[Tensor, "d_latent k"],
                                                   Float[Tensor, "d_latent k"], Int[Tensor, "d_latent k"]]:
    """(promoted values, promoted token ids, suppressed values, suppressed token ids): the k
    largest and k smallest entries of each decoder row @ W_U, largest / smallest first."""
    directions = dictionary.W_dec.detach().float() / dictionary.cfg.input_scale  # [κ, d_in]
    W_U = W_U.to(directions.device)
    k = min(k, W_U.shape[1])
    parts = []
    for s in tqdm(range(0, len(directions), chunk), desc="logit effects", leave=False, disable=not progress):
        logits = directions[s:s + chunk] @ W_U  # [chunk, d_vocab]
        up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        parts.append((up.values, up.indices, down.values, down.indices))
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(4))


def why_no_logits(dictionary: Dictionary, source: dict) -> str:
    """Why this dictionary's logit effects cannot be computed, "" when they can be tried."""
    if not source.get("model"):
        return "the store records no model"
    if source.get("model_class") == "HookedEncoder":
        return "the model is an encoder (BERT) with no next-token unembedding"
    if dictionary.cfg.decoder_layers != 1:
        return f"the dictionary has an MLP decoder (decoder_layers={dictionary.cfg.decoder_layers})"
    return ""


def load_unembedding(name: str, processed: bool, d_in: int, device, notes: Notes, cache: dict):
    """W_U of model `name` (loaded once per name into `cache`), or None with a note saying why."""
    if name not in cache:
        cache[name] = None
        try:
            from saease.models import is_encoder, load_model

            model = load_model(name, raw=not processed, device=str(device))
            if is_encoder(model):
                notes.warn(f"logit effects skipped: {name!r} is an encoder with no next-token unembedding")
            else:
                cache[name] = unembedding(model)
            del model
        except Exception as err:  # any failure to load: the dashboard goes on without logits
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            notes.warn(f"logit effects skipped: cannot load model {name!r} ({first}); pass --model PATH")
    W_U = cache[name]
    if W_U is not None and W_U.shape[0] != d_in:
        notes.warn(f"logit effects skipped: the dictionary's d_in {d_in} is not the model's d_model "
                   f"{W_U.shape[0]} (not a residual-stream hook)")
        return None
    return W_U
