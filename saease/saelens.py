"""SAELens interop: export dictionaries to SAELens's folder format, import SAELens SAEs.

SAELens (v6) stores an SAE as

    DIR/cfg.json                  architecture, d_in, d_sae, dtype, apply_b_dec_to_input,
                                  normalize_activations, k (topk), metadata {model_name, hook_name, …}
    DIR/sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
                                  (+ threshold [d_sae] for jumprelu)

and computes  z = act((x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc),  x̂ = z @ W_dec + b_dec.
Ours is z = act(s·x @ W_enc + b_enc), x̂ = (z @ W_dec + b_dec)/s with s the input scale, so the
exact mapping is W_enc·s, W_dec/s, b_dec/s with apply_b_dec_to_input false; importing folds
b_dec into b_enc (b_enc − b_dec @ W_enc) instead. Codes are the same numbers in both.

    ours                            SAELens
    sae-l1, sae-log                 standard (ReLU)                 both ways
    sae-topk                        topk (top-k then ReLU: the same) both ways
    vae, text encoder               standard: its deterministic code μ = ReLU(W_enc x + b_enc)
                                    and decoder are exported; the variance head (σ², hence
                                    its AD) is not, as no SAELens architecture has one
    vaease                          refused: its code (1 − σ(x)) ⊙ μ(x) gates each latent by a
                                    second encoder head, which no SAELens architecture expresses
    jumprelu                        imported as sae-l1 only if every threshold is ≤ 0 (then it
                                    is a ReLU); otherwise refused

This module writes and reads the files itself: it does not import sae_lens.
`saease saelens export DICT --out DIR` / `saease saelens import DIR --out DICT` on the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import safetensors.torch
import torch

from saease.dictionary import Dictionary, DictionaryConfig, make_config
from saease.errors import SaeaseError
from saease.store import atomic_write_bytes, atomic_write_json, load_safetensors

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout we write is SAELens 6's
_RAW_MODEL_KWARGS = {"fold_ln": False, "center_writing_weights": False,
                     "center_unembed": False, "fold_value_biases": False}


# ---- export -------------------------------------------------------------------------------


def export_refusal(dictionary: Dictionary) -> str | None:
    """Why a dictionary cannot be written as a SAELens SAE with equal outputs, or None."""
    cfg = dictionary.cfg
    if not dictionary.linear:
        return (f"SAELens SAEs have one linear encoder and decoder layer; this one has encoder "
                f"{cfg.encoder!r} x{cfg.encoder_layers} and decoder_layers={cfg.decoder_layers}")
    try:
        dictionary.saelens_export()
    except SaeaseError as err:
        return str(err)
    return None


def export_saelens(dictionary: Dictionary | str | Path, out: str | Path) -> Path:
    """Write `dictionary` to folder `out` as a SAELens SAE (cfg.json + sae_weights.safetensors)
    such that `sae_lens.SAE.load_from_disk(out)` encodes and decodes like `dictionary`."""

    if not isinstance(dictionary, Dictionary):
        dictionary = Dictionary.load(dictionary)
    cfg = dictionary.cfg
    reason = export_refusal(dictionary)
    if reason:
        raise SaeaseError(f"cannot export a {cfg.kind} dictionary to SAELens: {reason}")
    with torch.no_grad():
        fields_, tensors = dictionary.saelens_export()
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    sae_cfg = {
        **fields_, "d_in": cfg.d_in, "d_sae": cfg.d_latent, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": _metadata(cfg),
    }
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SaeaseError(f"{out}: cannot create the output folder ({err.strerror})") from None
    atomic_write_bytes(out / WEIGHTS_FILE, safetensors.torch.save(tensors))
    atomic_write_json(out / CFG_FILE, sae_cfg)
    return out


def _metadata(cfg: DictionaryConfig) -> dict:
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
                       "note": "the variance head is not exported" if cfg.kind == "vae" else None}}
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
                          metadata=meta)
    except KeyError as err:
        raise SaeaseError(f"{path / CFG_FILE}: missing field {err.args[0]!r} (d_in and d_sae are required)") from None


def import_saelens(path: str | Path) -> Dictionary:
    """A saease Dictionary that encodes and decodes like the SAELens SAE in folder `path`
    (architectures standard, topk, and jumprelu whose thresholds are all ≤ 0)."""
    path = Path(path)
    if not (path / CFG_FILE).is_file():
        raise SaeaseError(f"{path}: not a SAELens SAE folder (no {CFG_FILE}; expected one written "
                          "by SAELens's save_model or `saease saelens export`)")
    sae = read_saelens_cfg(path)
    w = _read_weights(path, sae)
    where = f"{path}: SAELens {sae.architecture} SAE"
    if sae.architecture not in ("standard", "topk", "jumprelu"):
        raise SaeaseError(f"{where} cannot be imported: supported architectures are standard, "
                          "topk and jumprelu (gated and others have no saease counterpart)")
    if sae.architecture != "topk" and sae.activation_fn != "relu":
        raise SaeaseError(f"{where} uses activation {sae.activation_fn!r}; only relu is supported")
    if sae.normalize_activations not in ("none", "expected_average_only_in"):
        raise SaeaseError(f"{where} normalizes its inputs with {sae.normalize_activations!r} at run "
                          "time, which a linear saease encoder cannot express; supported: none")
    if sae.architecture == "jumprelu":
        positive = w["threshold"] > 0
        if positive.any() and not positive.all():
            raise SaeaseError(f"{where} mixes positive and non-positive JumpReLU thresholds (e.g. latent "
                              f"{int((~positive).nonzero()[0])}); saease maps all-positive thresholds to "
                              "sae-jumprelu and all-non-positive ones to a plain ReLU")
    W_enc, b_enc, W_dec, b_dec = w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]
    if sae.apply_b_dec_to_input:  # (x − b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc − b_dec @ W_enc)
        b_enc = b_enc - b_dec @ W_enc
    if sae.architecture == "topk" and sae.rescale_acts_by_decoder_norm:
        norms = W_dec.norm(dim=-1)  # their z = topk(pre·n), x̂ = (z/n) @ W_dec: fold n in
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]

    meta = sae.metadata
    hook = meta.get("hook_name")
    layer = re.match(r"blocks\.(\d+)\.", hook or "")
    source = {"model": meta.get("model_name"), "hook": hook,
              "layer": int(layer.group(1)) if layer else None,
              "dataset": meta.get("dataset_path"), "context_size": meta.get("context_size"),
              "saelens": {"path": str(path.resolve()), "architecture": sae.architecture,
                          "model_from_pretrained_kwargs": meta.get("model_from_pretrained_kwargs")}}
    knobs: dict = {"k": sae.k} if sae.architecture == "topk" else {}
    if sae.architecture == "topk":
        kind = "sae-topk"
    elif sae.architecture == "jumprelu" and (w["threshold"] > 0).all():
        kind = "sae-jumprelu"
    else:  # standard, or a JumpReLU whose thresholds are all ≤ 0: a plain ReLU
        kind = "sae-l1"
    cfg = make_config(kind, d_latent=sae.d_sae, **knobs)
    cfg = replace(cfg, d_in=sae.d_in, source={k: v for k, v in source.items() if v is not None},
                  training={"imported_from": "sae_lens"})
    dictionary = Dictionary.build(cfg)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(dictionary, name).copy_(value)
        if kind == "sae-jumprelu":
            dictionary.log_threshold.copy_(w["threshold"].log())
    return dictionary.eval()


def _read_weights(path: Path, sae: SAELensSAE) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS_FILE
    state = load_safetensors(weights, "SAELens")
    shapes = {"W_enc": (sae.d_in, sae.d_sae), "b_enc": (sae.d_sae,),
              "W_dec": (sae.d_sae, sae.d_in), "b_dec": (sae.d_in,)}
    if sae.architecture == "jumprelu":
        shapes["threshold"] = (sae.d_sae,)
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


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("export", "import"),
                        help="export: saease dictionary → SAELens folder; import: SAELens folder → saease dictionary")
    parser.add_argument("path", help="the dictionary folder (export) or SAELens SAE folder (import)")
    parser.add_argument("--out", required=True, help="folder to write")


def run(args) -> dict:
    if args.action == "export":
        dictionary = Dictionary.load(args.path)
        out = export_saelens(dictionary, args.out)
        return {"exported": str(args.path), "out": str(out), "kind": dictionary.kind,
                "architecture": dictionary.saelens_export()[0]["architecture"]}
    dictionary = import_saelens(args.path)
    out = dictionary.save(args.out)
    return {"imported": str(args.path), "out": str(out), "kind": dictionary.kind,
            "d_in": dictionary.cfg.d_in, "d_latent": dictionary.cfg.d_latent,
            "hook": dictionary.cfg.source.get("hook")}
