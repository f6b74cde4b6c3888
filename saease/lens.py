"""Dictionaries inside TransformerLens models: hook points, splicing, steering.

`HookedDictionary` wraps a `saease.dictionary.Dictionary` as a hookable module whose hook
points carry SAELens's names, so habits carry over:

    hook_sae_input      x, the activation the dictionary reads          [..., d_in]
    hook_sae_acts_pre   SAE kinds: the encoder pre-activation, before ReLU / top-k
                        VAE kinds: the encoder mean μ (before the VAEase gate)  [..., d_latent]
    hook_sae_var        VAE kinds only: the encoder variance σ² ∈ (0, 1)        [..., d_latent]
    hook_sae_acts_post  the deterministic code the decoder reads: z (SAEs),
                        μ (VAE), (1 − σ) ⊙ μ (VAEase)                           [..., d_latent]
    hook_sae_recons     the reconstruction x̂                                     [..., d_in]
    hook_sae_error      x − x̂ (only with use_error_term)                        [..., d_in]
    hook_sae_output     what the model continues with: x̂, or x̂ + error        [..., d_in]

A hook on `hook_sae_acts_pre` or `hook_sae_var` changes the code downstream (e.g. zeroing σ²
of a VAEase latent opens its gate fully).

`splice(model, dictionary)` puts the dictionary at its hook (`dictionary.cfg.source["hook"]`)
for the duration of a `with` block: the model continues from the reconstruction, and its
hook points are reachable from the model under `"{hook}.hook_sae_acts_post"` etc., like
SAELens's HookedSAETransformer, so `model.run_with_cache` returns codes. The model's own hook
point stays in place and shows the spliced activation (what the model continues with).
`steer(model, dictionary, feature, alpha)` adds α times a decoder column at the hook.

Both work on `HookedTransformer` (what `saease.models.load_model` returns) and on
`transformer_lens.model_bridge.TransformerBridge`.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.models import SHORT_HOOKS

HOOK_POINTS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_var", "hook_sae_acts_post",
               "hook_sae_recons", "hook_sae_error", "hook_sae_output")
_D_MODEL_HOOK = re.compile(rf"(^|\.)hook_({'|'.join((*SHORT_HOOKS, 'embed'))})$")


class DictionaryModelWarning(UserWarning):
    """A dictionary is used on a model other than the one it was trained on."""


class HookedDictionary(HookedRootModule):
    """A `Dictionary` with TransformerLens hook points (see the module docstring for the list).

    `forward(x)` returns the reconstruction, or with `use_error_term` the reconstruction plus
    the error `x − x̂(x)` computed without hooks, which equals `x` exactly unless a hook changed
    something (then the change carries through, as in SAELens).
    """

    def __init__(self, dictionary: Dictionary, use_error_term: bool = False):
        super().__init__()
        if not isinstance(dictionary, Dictionary):
            raise SaeaseError(f"expected a saease Dictionary, got {type(dictionary).__name__}")
        self.dictionary = dictionary
        self.use_error_term = use_error_term
        for name in HOOK_POINTS:
            if name != "hook_sae_var" or dictionary.ad_from_variance:  # the kinds with a variance head
                setattr(self, name, HookPoint())
        self.setup()

    @property
    def cfg(self):
        return self.dictionary.cfg

    @property
    def local_hook_names(self) -> list[str]:
        return [n for n in HOOK_POINTS if hasattr(self, n)]

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_latent"]:
        """Codes of `x`, passing through the acts_pre / var / acts_post hook points."""
        d = self.dictionary
        x_scaled = d.scale_in(x)
        enc = d.encoder_output(x_scaled)
        enc.pre = self.hook_sae_acts_pre(enc.pre)
        if enc.var is not None:
            enc.var = self.hook_sae_var(enc.var)
        return self.hook_sae_acts_post(d.code_from(enc))

    def decode(self, codes: Float[Tensor, "... d_latent"]) -> Float[Tensor, "... d_in"]:
        return self.hook_sae_recons(self.dictionary.decode(codes))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        if x.shape[-1] != self.cfg.d_in:
            raise SaeaseError(f"activation has last dimension {x.shape[-1]} but the dictionary "
                              f"expects d_in {self.cfg.d_in}")
        d = self.dictionary
        if d.device != x.device:
            d.to(x.device)
        x = self.hook_sae_input(x)
        recons = self.decode(self.encode(x))
        if self.use_error_term:
            inner = ("hook_sae_acts_pre", "hook_sae_var", "hook_sae_acts_post", "hook_sae_recons")
            if any(getattr(self, n)._forward_hooks for n in inner if hasattr(self, n)):
                clean = d.decode(d.encode(x))  # the same computation without hook points
            else:
                clean = recons  # nothing could have edited it
            error = self.hook_sae_error(x - clean)
            # = recons + error; written so that untouched hooks give back x bit for bit
            out = x + (recons - clean) + (error - (x - clean))
        else:
            out = recons
        return self.hook_sae_output(out.to(x.dtype))


# ---- splicing into a model -----------------------------------------------------------------


def as_hooked(dictionary) -> HookedDictionary:
    """A `HookedDictionary` from a HookedDictionary, a Dictionary or a dictionary folder."""
    if isinstance(dictionary, HookedDictionary):
        return dictionary
    if isinstance(dictionary, (str, Path)):
        dictionary = Dictionary.load(dictionary)
    return HookedDictionary(dictionary)


def resolve_hook(model, dictionary, hook: str | None = None) -> str:
    """The model hook name a dictionary reads: `hook` if given, else the one it was trained at."""
    _check_model(model)
    cfg = dictionary.cfg
    source = cfg.source or {}
    name = hook or source.get("hook")
    if not name:
        raise SaeaseError("the dictionary records no hook (config source.hook); pass "
                          "hook='blocks.N.hook_resid_post'")
    if name in model.hook_dict:
        return name
    if "." not in name and source.get("layer") is not None and not hook:  # short name: resid_post
        from saease.models import hook_name

        return hook_name(model, int(source["layer"]), name)
    examples = [h for h in model.hook_dict if h.endswith("hook_resid_post")][:2]
    raise SaeaseError(f"hook {name!r} does not exist in this model; use a hook name such as "
                      f"{' or '.join(repr(e) for e in examples) or 'blocks.0.hook_resid_post'}")


@contextmanager
def splice(model, dictionary, use_error_term: bool = False, hook: str | None = None):
    """Within the `with` block, replace the activation at the dictionary's hook by its
    reconstruction (or by reconstruction + error when `use_error_term`, which leaves the model's
    outputs exactly unchanged but exposes the codes). Yields the `HookedDictionary`.

    `dictionary`: a Dictionary, a HookedDictionary or a dictionary folder. `hook`: the model
    hook name, by default `dictionary.cfg.source["hook"]`. Inside the block the dictionary's
    hook points are in `model.hook_dict` as `f"{hook}.hook_sae_acts_post"` etc., so
    `model.run_with_cache(tokens)` returns the codes and `model.run_with_hooks` can edit them.
    """
    hooked = as_hooked(dictionary)
    name = resolve_hook(model, hooked, hook)
    hook_point = model.hook_dict[name]
    _check_hook_point(model, hooked, name, hook_point)
    warn_if_other_model(model, hooked.dictionary)
    if f"{name}.hook_sae_input" in model.hook_dict:
        raise SaeaseError(f"a dictionary is already spliced at {name!r}; leave that splice first")

    previous = hooked.use_error_term
    hooked.use_error_term = use_error_term
    handle = hook_point.register_forward_hook(lambda module, args, output: hooked(output), prepend=True)
    registry = _hook_registry(model)
    added = {f"{name}.{local}": getattr(hooked, local) for local in hooked.local_hook_names}
    for full, point in added.items():
        point.name = full
        for table in registry:
            table[full] = point
    try:
        yield hooked
    finally:
        handle.remove()
        for full in added:
            for table in registry:
                table.pop(full, None)
        hooked.setup()  # give the hook points back their own names
        hooked.use_error_term = previous


def decoder_direction(dictionary, feature: int) -> Float[Tensor, "d_in"]:
    """What adding 1 to latent `feature` of the code adds to the reconstruction: row `feature`
    of W_dec, in the activations' units (divided by the dictionary's input scale)."""
    dictionary = dictionary.dictionary if isinstance(dictionary, HookedDictionary) else dictionary
    cfg = dictionary.cfg
    if cfg.decoder_layers != 1:
        raise SaeaseError(f"steering needs a linear decoder; this dictionary has decoder_layers="
                          f"{cfg.decoder_layers}, so a latent has no single decoder column")
    if not isinstance(feature, int) or not 0 <= feature < cfg.d_latent:
        raise SaeaseError(f"feature {feature!r} is out of range: choose 0..{cfg.d_latent - 1}")
    return dictionary.W_dec[feature].detach() / cfg.input_scale


@contextmanager
def steer(model, dictionary, feature: int, alpha: float, hook: str | None = None):
    """Within the `with` block, add `alpha` × decoder column `feature` to the activation at the
    dictionary's hook, at every position. Composes with `splice` (the step is added to the
    reconstruction then, which is the same as adding `alpha` to the latent's code)."""
    dictionary = dictionary.dictionary if isinstance(dictionary, HookedDictionary) else dictionary
    if isinstance(dictionary, (str, Path)):
        dictionary = Dictionary.load(dictionary)
    name = resolve_hook(model, dictionary, hook)
    hook_point = model.hook_dict[name]
    _check_hook_point(model, dictionary, name, hook_point)
    warn_if_other_model(model, dictionary)
    step = alpha * decoder_direction(dictionary, feature)

    def add_step(module, args, output):
        return output + step.to(device=output.device, dtype=output.dtype)

    handle = hook_point.register_forward_hook(add_step)
    try:
        yield step
    finally:
        handle.remove()


# ---- reading codes -------------------------------------------------------------------------


@torch.no_grad()
def feature_acts(model, dictionary, tokens: Tensor, hook: str | None = None) -> Float[Tensor, "batch pos d_latent"]:
    """Codes of the dictionary on `tokens` [batch, pos], read through `run_with_cache` with the
    dictionary spliced in with its error term (so the run is the clean one)."""
    with splice(model, dictionary, use_error_term=True, hook=hook) as hooked:
        name = resolve_hook(model, hooked, hook) + ".hook_sae_acts_post"
        _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name]


def top_activations(model, dictionary, tokens: Tensor, feature: int, k: int = 10,
                    hook: str | None = None, context: int = 5) -> list[dict]:
    """The `k` (sequence, position) pairs of `tokens` [batch, pos] where latent `feature` is
    largest: [{"activation", "seq", "pos", "token", "context"}], largest first."""
    dictionary = as_hooked(dictionary)
    if not 0 <= feature < dictionary.cfg.d_latent:
        raise SaeaseError(f"feature {feature} is out of range: choose 0..{dictionary.cfg.d_latent - 1}")
    acts = feature_acts(model, dictionary, tokens, hook)[..., feature]
    values, flat = acts.flatten().topk(min(k, acts.numel()))
    out = []
    for value, index in zip(values.tolist(), flat.tolist()):
        seq, pos = divmod(index, acts.shape[1])
        window = tokens[seq, max(0, pos - context): pos + 1].tolist()
        out.append({"activation": value, "seq": seq, "pos": pos,
                    "token": model.tokenizer.decode([int(tokens[seq, pos])]),
                    "context": model.tokenizer.decode(window)})
    return out


# ---- checks ------------------------------------------------------------------------------


def _check_model(model) -> None:
    if not isinstance(getattr(model, "hook_dict", None), dict):
        raise SaeaseError(f"expected a TransformerLens HookedTransformer or TransformerBridge, "
                          f"got {type(model).__name__}")


def _hook_registry(model) -> list[dict]:
    """The dicts that make up `model.hook_dict`: the bridge's registry, or HookedRootModule's
    hook_dict and mod_dict."""
    if "_hook_registry" in vars(model):  # TransformerBridge: hook_dict is computed from it
        return [vars(model)["_hook_registry"]]
    return [model.hook_dict, model.mod_dict]


def _check_hook_point(model, dictionary, name: str, hook_point) -> None:
    if not isinstance(hook_point, HookPoint):
        raise SaeaseError(f"{name!r} is not a hook point of this model")
    if getattr(hook_point, "hook_conversion", None) is not None:
        raise SaeaseError(f"hook {name!r} reshapes its activation in this TransformerBridge; "
                          "splice at a residual-stream hook such as blocks.N.hook_resid_post")
    cfg = model.cfg
    expected = None
    if _D_MODEL_HOOK.search(name):
        expected, what = cfg.d_model, "d_model"
    elif name.endswith(("mlp.hook_pre", "mlp.hook_post")) and getattr(cfg, "d_mlp", None):
        expected, what = cfg.d_mlp, "d_mlp"
    if expected is not None and dictionary.cfg.d_in != expected:
        raise SaeaseError(f"the dictionary has d_in {dictionary.cfg.d_in} but {name!r} carries "
                          f"{what} {expected} in this model; it was trained on another model or hook")


def model_identity(model) -> tuple[str | None, bool | None]:
    """(name, processed) of a loaded model: from `model.loaded` (saease.models.load_model), or
    for a TransformerBridge from its Hugging Face config and compatibility mode."""
    loaded = vars(model).get("loaded")
    if loaded is not None:
        return loaded.name, loaded.processed
    original = vars(model).get("original_model") or getattr(model, "original_model", None)
    name = getattr(getattr(original, "config", None), "_name_or_path", None) or getattr(model.cfg, "model_name", None)
    processed = bool(vars(model).get("compatibility_mode", False)) if "_hook_registry" in vars(model) else None
    return name, processed


def _canonical(name: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from saease.models import official_model_name  # TransformerLens 3.x and 4.x

    try:
        return official_model_name(name).lower()
    except ValueError:  # not one of TransformerLens's names
        return name.lower()


def warn_if_other_model(model, dictionary) -> None:
    """Warn, naming both, when the dictionary's source model is not `model` (or was read from
    processed weights while the model's are raw, or the other way round)."""
    source = dictionary.cfg.source or {}
    name, processed = model_identity(model)
    trained_on = source.get("model")
    if trained_on and name and _canonical(str(trained_on)) != _canonical(str(name)):
        warnings.warn(f"the dictionary was trained on model {trained_on!r} but is used on "
                      f"{name!r}; its features may mean nothing here", DictionaryModelWarning, stacklevel=4)
    if "processed" in source and processed is not None and bool(source["processed"]) != processed:
        def state(p):
            return "processed (fold_ln, centered)" if p else "raw (unprocessed)"
        warnings.warn(f"the dictionary was trained on {state(source['processed'])} weights of "
                      f"{trained_on or 'its model'} but {name!r} has {state(processed)} weights; "
                      "the residual-stream basis differs", DictionaryModelWarning, stacklevel=4)
