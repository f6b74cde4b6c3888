"""SAELens interop: export dictionaries to SAELens's folder format, import SAELens SAEs.

SAELens (v6) stores an SAE as

    DIR/cfg.json                  architecture, d_in, d_sae, dtype, apply_b_dec_to_input,
                                  normalize_activations, k (topk), metadata {model_name, hook_name, …}
    DIR/sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
                                  + threshold [d_sae] (jumprelu); gated has b_gate, b_mag, r_mag
                                  [d_sae] instead of b_enc; saease-vaease/-vae add W_sig, b_sig

and computes  z = act((x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc),  x̂ = z @ W_dec + b_dec.
Ours is z = act(s·x @ W_enc + b_enc), x̂ = (z @ W_dec + b_dec)/s with s the input scale, so the
exact mapping is W_enc·s (and W_sig·s), W_dec/s, b_dec/s with apply_b_dec_to_input false;
importing folds b_dec into the encoder biases (b − b_dec @ W) instead. Codes, hence thresholds,
are the same numbers in both.

    ours                     SAELens architecture      notes
    sae-l1, sae-log          standard                  import: standard → sae-l1
    sae-topk                 topk                      top-k then ReLU is ReLU then top-k
    sae-batchtopk,           jumprelu, every           what SAELens itself saves a trained BatchTopK
    sae-matryoshka           threshold θ               or Matryoshka SAE as (batchtopk and
                                                       matryoshka_batchtopk are training-only
                                                       there); untrained (no θ yet): topk.
                                                       Import gives sae-jumprelu (no k to recover)
    sae-jumprelu             jumprelu                  import: thresholds all > 0 → sae-jumprelu,
                                                       all ≤ 0 → sae-l1 (a ReLU), mixed: refused
    sae-gated                gated                     W_enc, b_gate, b_mag, r_mag, W_dec, b_dec
    vaease                   saease-vaease             both ways; SAELens loads it once
                                                       `import saease.saelens_sae` has registered
                                                       the architecture (saease/saelens_sae.py)
    vae                      standard (its mean head   import: standard → sae-l1. With
                             μ; σ² is left out)        variance_head=True: saease-vae, both ways

Deep encoders and MLP decoders have no SAELens counterpart and are refused.
This module writes and reads the files itself: it does not import sae_lens.
`saease saelens export DICT --out DIR [--variance-head]` / `saease saelens import DIR --out DICT`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch

from saease.cli import dataclass_args, option
from saease.dictionary import Dictionary, make_config
from saease.errors import SaeaseError
from saease.store import atomic_write_bytes, atomic_write_json, load_safetensors

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout we write is SAELens 6's
_RAW_MODEL_KWARGS = {"fold_ln": False, "center_writing_weights": False,
                     "center_unembed": False, "fold_value_biases": False}


# ---- export -------------------------------------------------------------------------------


def export_refusal(dictionary: Dictionary, variance_head: bool = False) -> str | None:
    """Why a dictionary cannot be written as a SAELens SAE with equal outputs, or None."""
    cfg = dictionary.cfg
    if not dictionary.linear:
        return (f"SAELens SAEs have one linear encoder and decoder layer; this one has encoder "
                f"{cfg.encoder!r} x{cfg.encoder_layers} and decoder_layers={cfg.decoder_layers}")
    try:
        _kind_export(dictionary, variance_head)
    except SaeaseError as err:
        return str(err)
    return None


def _kind_export(dictionary: Dictionary, variance_head: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    if not variance_head:
        return dictionary.saelens_export()
    if "variance_head" not in inspect.signature(dictionary.saelens_export).parameters:
        raise SaeaseError("--variance-head applies to a vae only (vaease always exports its "
                          "variance head; the SAE kinds have none)")
    return dictionary.saelens_export(variance_head=True)


def export_saelens(dictionary: Dictionary | str | Path, out: str | Path, variance_head: bool = False) -> Path:
    """Write `dictionary` to folder `out` as a SAELens SAE (cfg.json + sae_weights.safetensors)
    such that `sae_lens.SAE.load_from_disk(out)` encodes and decodes like `dictionary`
    (vaease, and a vae with `variance_head`, need `import saease.saelens_sae` first)."""

    if not isinstance(dictionary, Dictionary):
        dictionary = Dictionary.load(dictionary)
    cfg = dictionary.cfg
    reason = export_refusal(dictionary, variance_head)
    if reason:
        raise SaeaseError(f"cannot export a {cfg.kind} dictionary to SAELens: {reason}")
    with torch.no_grad():
        fields_, tensors = _kind_export(dictionary, variance_head)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    sae_cfg = {
        **fields_, "d_in": cfg.d_in, "d_sae": cfg.d_latent, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": _metadata(dictionary, fields_["architecture"]),
    }
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SaeaseError(f"{out}: cannot create the output folder ({err.strerror})") from None
    atomic_write_bytes(out / WEIGHTS_FILE, safetensors.torch.save(tensors))
    atomic_write_json(out / CFG_FILE, sae_cfg)
    return out


def _metadata(dictionary: Dictionary, architecture: str) -> dict:
    cfg = dictionary.cfg
    dropped = dictionary.ad_from_variance and not architecture.startswith("saease-")
    source = cfg.source or {}
    hook = source.get("hook")
    if hook and not hook.startswith(("blocks.", "hook_")) and source.get("layer") is not None:
        hook = f"blocks.{source['layer']}.hook_{hook.removeprefix('hook_')}"  # short name
    meta = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
            "model_name": source.get("model"), "hook_name": hook, "hook_head_index": None,
            "context_size": source.get("context_size"), "dataset_path": source.get("dataset"),
            "prepend_bos": source.get("prepend_bos", False),
            "model_from_pretrained_kwargs": dict(_RAW_MODEL_KWARGS) if source.get("processed") is False else {},
            "saease": {"kind": cfg.kind, "d_latent": cfg.d_latent, "input_scale": cfg.input_scale,
                       "note": "the variance head is not exported" if dropped else None}}
    return {k: v for k, v in meta.items() if v is not None or k in ("hook_head_index",)}


# ---- import -------------------------------------------------------------------------------


@dataclass
class SAELensSAE:
    """What a SAELens folder says, normalised across SAELens versions (pre-6 configs had
    `hook_point`, `activation_fn_str`, a bool `normalize_activations`, top-level metadata)."""

    architecture: str
    d_in: int
    d_sae: int
    apply_b_dec_to_input: bool
    normalize_activations: str
    activation_fn: str
    k: int | None
    rescale_acts_by_decoder_norm: bool
    metadata: dict = field(default_factory=dict)
    code: str = "soft"  # saease-vaease: exact or soft inference code (folders before it: soft)


def read_saelens_cfg(path: Path) -> SAELensSAE:
    from saease.store import read_json

    raw = read_json(path / CFG_FILE, "a SAELens cfg.json")
    meta = dict(raw.get("metadata") or {})
    for old, new in (("hook_point", "hook_name"), ("model_name", "model_name"),
                     ("context_size", "context_size"), ("dataset_path", "dataset_path"),
                     ("prepend_bos", "prepend_bos"), ("hook_point_head_index", "hook_head_index"),
                     ("hook_name", "hook_name"), ("model_from_pretrained_kwargs", "model_from_pretrained_kwargs")):
        if old in raw and new not in meta:
            meta[new] = raw[old]
    activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    architecture = raw.get("architecture", "standard")
    k = raw.get("k")
    if activation == "topk" and kwargs.get("k") is not None:
        architecture, k = "topk", kwargs["k"]
    norm = raw.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:
        norm = "expected_average_only_in" if norm else "none"
    try:
        return SAELensSAE(architecture=architecture, d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]),
                          apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
                          normalize_activations=norm, activation_fn=activation,
                          k=None if k is None else int(k),
                          rescale_acts_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)),
                          code=str(raw.get("code", "soft")),
                          metadata=meta)
    except KeyError as err:
        raise SaeaseError(f"{path / CFG_FILE}: missing field {err.args[0]!r} (d_in and d_sae are required)") from None


# The encoder tensors of each SAELens architecture saease imports (beside W_dec, b_dec), and
# the saease kind it becomes (jumprelu: see _jumprelu_kind).
_ENCODER_TENSORS = {
    "standard": ("W_enc", "b_enc"), "topk": ("W_enc", "b_enc"), "jumprelu": ("W_enc", "b_enc", "threshold"),
    "gated": ("W_enc", "b_gate", "b_mag", "r_mag"),
    "saease-vaease": ("W_enc", "b_enc", "W_sig", "b_sig"), "saease-vae": ("W_enc", "b_enc", "W_sig", "b_sig"),
}
_KINDS = {"standard": "sae-l1", "topk": "sae-topk", "gated": "sae-gated",
          "saease-vaease": "vaease", "saease-vae": "vae"}


def import_saelens(path: str | Path) -> Dictionary:
    """A saease Dictionary that encodes and decodes like the SAELens SAE in folder `path`
    (architectures standard, topk, jumprelu, gated, saease-vaease and saease-vae)."""
    path = Path(path)
    if not (path / CFG_FILE).is_file():
        raise SaeaseError(f"{path}: not a SAELens SAE folder (no {CFG_FILE}; expected one written "
                          "by SAELens's save_model or `saease saelens export`)")
    sae = read_saelens_cfg(path)
    where = f"{path}: SAELens {sae.architecture} SAE"
    if sae.architecture not in _ENCODER_TENSORS:
        raise SaeaseError(f"{where} cannot be imported: supported architectures are "
                          f"{', '.join(_ENCODER_TENSORS)}")
    if sae.architecture != "topk" and sae.activation_fn != "relu":
        raise SaeaseError(f"{where} uses activation {sae.activation_fn!r}; only relu is supported")
    if sae.normalize_activations not in ("none", "expected_average_only_in"):
        raise SaeaseError(f"{where} normalizes its inputs with {sae.normalize_activations!r} at run "
                          "time, which a linear saease encoder cannot express; supported: none")
    w = _read_weights(path, sae)
    kind = _jumprelu_kind(w["threshold"], where) if sae.architecture == "jumprelu" else _KINDS[sae.architecture]
    if sae.apply_b_dec_to_input:  # (x − b_dec) @ W + b = x @ W + (b − b_dec @ W), for every head
        shift = w["b_dec"] @ w["W_enc"]
        if sae.architecture == "gated":  # the magnitude path's weight is W_enc ⊙ exp(r_mag)
            w["b_gate"], w["b_mag"] = w["b_gate"] - shift, w["b_mag"] - shift * w["r_mag"].exp()
        else:
            w["b_enc"] = w["b_enc"] - shift
        if "W_sig" in w:
            w["b_sig"] = w["b_sig"] - w["b_dec"] @ w["W_sig"]
    if sae.architecture == "topk" and sae.rescale_acts_by_decoder_norm:
        norms = w["W_dec"].norm(dim=-1)  # their z = topk(pre·n), x̂ = (z/n) @ W_dec: fold n in
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    if sae.architecture == "gated":
        w["b_enc"] = w.pop("b_gate")  # saease's gated SAE keeps the gate bias as b_enc
    if sae.architecture == "jumprelu":
        threshold = w.pop("threshold")
        if kind == "sae-jumprelu":
            w["threshold"] = threshold

    meta = sae.metadata
    hook = meta.get("hook_name")
    layer = re.match(r"blocks\.(\d+)\.", hook or "")
    source = {"model": meta.get("model_name"), "hook": hook,
              "layer": int(layer.group(1)) if layer else None,
              "dataset": meta.get("dataset_path"), "context_size": meta.get("context_size"),
              "saelens": {"path": str(path.resolve()), "architecture": sae.architecture,
                          "model_from_pretrained_kwargs": meta.get("model_from_pretrained_kwargs")}}
    knobs: dict = {"k": sae.k} if sae.architecture == "topk" else {}
    if sae.architecture == "saease-vaease":
        knobs["code"] = sae.code
    cfg = make_config(kind, d_latent=sae.d_sae, **knobs)
    cfg = replace(cfg, d_in=sae.d_in, source={k: v for k, v in source.items() if v is not None},
                  training={"imported_from": "sae_lens"})
    dictionary = Dictionary.build(cfg)
    with torch.no_grad():
        for name, value in w.items():
            getattr(dictionary, name).copy_(value)
    return dictionary.eval()


def _jumprelu_kind(threshold: torch.Tensor, where: str) -> str:
    """sae-jumprelu for thresholds all > 0; sae-l1 for all ≤ 0 (then JumpReLU is a ReLU)."""
    positive = threshold > 0
    if positive.all():
        return "sae-jumprelu"
    if not positive.any():
        return "sae-l1"
    raise SaeaseError(f"{where} mixes positive and non-positive JumpReLU thresholds (e.g. latent "
                      f"{int((~positive).nonzero()[0])}); saease maps all-positive thresholds to "
                      "sae-jumprelu and all-non-positive ones to a plain ReLU")


def _read_weights(path: Path, sae: SAELensSAE) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS_FILE
    state = load_safetensors(weights, "SAELens")
    matrix, vector = (sae.d_in, sae.d_sae), (sae.d_sae,)
    shapes = {name: matrix if name.startswith("W_") else vector for name in _ENCODER_TENSORS[sae.architecture]}
    shapes.update(W_dec=(sae.d_sae, sae.d_in), b_dec=(sae.d_in,))
    for name, shape in shapes.items():
        if name not in state or tuple(state[name].shape) != shape:
            got = tuple(state[name].shape) if name in state else "absent"
            raise SaeaseError(f"{weights}: {name} should have shape {shape} for d_in={sae.d_in}, "
                              f"d_sae={sae.d_sae}, got {got}")
    scale = state.get("scaling_factor", state.get("finetuning_scaling_factor"))
    if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale.float())):
        raise SaeaseError(f"{weights}: has a finetuning scaling factor other than 1, which saease "
                          "does not support")
    return {k: state[k].double() for k in shapes}  # fold in float64, store as float32


def load_any(path: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """A saease dictionary folder (config.json) or a SAELens SAE folder (cfg.json)."""
    path = Path(path)
    if (path / CFG_FILE).is_file() and not (path / "config.json").is_file():
        return import_saelens(path).to(device)
    return Dictionary.load(path, device=device)


# ---- command line: saease saelens export|import -------------------------------------------


@dataclass
class SaelensConfig:
    """`saease saelens`'s flags."""

    action: Literal["export", "import"] = option(
        doc="export: saease dictionary → SAELens folder; import: SAELens folder → saease dictionary")
    path: str = option(doc="the dictionary folder (export) or SAELens SAE folder (import)")
    out: str = option(doc="folder to write")
    variance_head: bool = option(False, "export: write a vae as architecture saease-vae, keeping its variance "
                                        "head (SAELens needs `import saease.saelens_sae` to load it)")


Config = SaelensConfig


def add_arguments(parser) -> None:
    dataclass_args(parser, SaelensConfig, positional=("action", "path"))


def run(cfg: SaelensConfig) -> dict:
    if cfg.action == "export":
        dictionary = Dictionary.load(cfg.path)
        out = export_saelens(dictionary, cfg.out, variance_head=cfg.variance_head)
        return {"exported": str(cfg.path), "out": str(out), "kind": dictionary.kind,
                "architecture": read_saelens_cfg(out).architecture}
    dictionary = import_saelens(cfg.path)
    out = dictionary.save(cfg.out)
    return {"imported": str(cfg.path), "out": str(out), "kind": dictionary.kind,
            "d_in": dictionary.cfg.d_in, "d_latent": dictionary.cfg.d_latent,
            "hook": dictionary.cfg.source.get("hook")}
