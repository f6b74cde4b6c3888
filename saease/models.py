"""Load language models as TransformerLens models and read activations at a hook.

Hub names (``pythia-70m``, ``EleutherAI/pythia-70m-deduped``, any TransformerLens name or
``org/name`` hub id) and local Hugging Face folders go through one code path: a hub name is
first resolved to its snapshot folder in the local Hugging Face cache (downloading it only when
the hub is reachable), then the folder is loaded and converted with TransformerLens's own
converters:

- causal LMs: ``AutoModelForCausalLM`` -> `HookedTransformer` (config and weight converters);
- BERTs (``model_type == "bert"``, e.g. a ``BertModel`` checkpoint such as MiniLM):
  ``BertForPreTraining`` -> `HookedEncoder` (TransformerLens's BERT weight converter). Heads the
  checkpoint lacks (a ``BertModel`` has no MLM/NSP head) are zeroed, the unembedding stays tied
  to the token embedding as in BERT, and ``model.loaded.absent`` lists them: the encoder's
  activations are exact, its MLM logits are meaningless. TransformerLens does no weight
  processing for post-LN BERTs, so ``processed`` is always False for them.

TransformerLens 4.x removed `HookedTransformer`/`HookedEncoder`: there every model is loaded as a
`transformer_lens.model_bridge.TransformerBridge` booted from the same folder, with
``enable_compatibility_mode()`` (the same weight processing) unless `raw`; BERT bridges are never
processed either. In a BERT bridge ``blocks.L.hook_resid_post`` already is the vector passed to
the next block (HF ``hidden_states[L + 1]``), so ``resid_post`` maps to it there.

`HookedTransformer.from_pretrained` / `HookedEncoder.from_pretrained` only accept official names
(they call ``get_official_model_name`` before anything else), so we call the pieces they are made
of.

Hook names. ``hook_name(model, L, "resid_post")`` is the vector block L hands to block L + 1
(Hugging Face's ``hidden_states[L + 1]``): ``blocks.L.hook_resid_post`` in a `HookedTransformer`;
in a post-LN BERT that vector is the output of the block's last LayerNorm,
``blocks.L.hook_normalized_resid_post`` (TransformerLens's ``blocks.L.hook_resid_post`` there is the
sum before that LayerNorm; pass the full name to get it). ``resid_pre`` is the vector block L
receives (``hidden_states[L]``) in both; ``resid_mid``, ``attn_out`` and ``mlp_out`` are
TransformerLens's hooks of those names (in a BERT ``resid_mid`` is the pre-LayerNorm sum
resid_pre + attn_out).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch

from saease.errors import SaeaseError

SHORT_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# post-LN encoders: short name -> the hook holding the vector passed between blocks
ENCODER_HOOKS = {"resid_post": "hook_normalized_resid_post"}
ENCODER_MODEL_TYPES = ("bert",)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """Identity of a loaded model, attached to it as ``model.loaded``.

    name: official hub id (``EleutherAI/pythia-70m``) or absolute path of a local folder.
    tokenizer_name_or_path: what ``AutoTokenizer.from_pretrained`` needs to get the tokenizer back.
    processed: True if TransformerLens weight processing (fold_ln, center_writing_weights,
        center_unembed, fold_value_biases) was applied; False for raw Hugging Face weights.
    revision: the hub snapshot's commit hash, None for a local folder.
    architecture: the checkpoint's Hugging Face architecture (``config.architectures[0]``,
        e.g. ``GPTNeoXForCausalLM``, ``BertModel``).
    model_class: the TransformerLens class it was converted to (``HookedTransformer``,
        ``HookedEncoder`` or, with TransformerLens 4.x, ``TransformerBridge``).
    encoder: True for a bidirectional post-LN encoder (a BERT).
    absent: parts the checkpoint lacks, zeroed at load (``cls.predictions``: the MLM head of a
        ``BertModel`` checkpoint); they never affect the residual stream.
    """

    name: str
    tokenizer_name_or_path: str
    processed: bool
    revision: str | None = None
    architecture: str | None = None
    model_class: str = "HookedTransformer"
    absent: tuple[str, ...] = ()
    encoder: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_model(
    name_or_path: str,
    *,
    raw: bool = False,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a causal LM as a `HookedTransformer`, or a BERT as a `HookedEncoder`, with identity
    in ``model.loaded`` (`LoadedModel`).

    raw=False applies TransformerLens's default processing (fold_ln, center_writing_weights,
    center_unembed, fold_value_biases), which leaves log-probs unchanged but makes every
    residual-stream vector mean-zero. raw=True keeps the Hugging Face weights as they are
    (`from_pretrained_no_processing` semantics): ``hook_resid_post`` equals HF hidden_states.
    BERTs are never processed (post-LN: TransformerLens cannot fold their LayerNorms), whatever
    `raw` says. Weights are converted and processed in float32, then cast to `dtype`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars report progress; keep errors one line
    folder, tl_name, identity = _resolve(name_or_path)
    hf_config = _read_config(folder, name_or_path)
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    encoder = hf_config.model_type in ENCODER_MODEL_TYPES
    identity = dataclasses.replace(identity, architecture=architecture, encoder=encoder)
    if not has_hooked_transformer():
        return _load_bridge(folder, name_or_path, identity, raw=raw or encoder, device=device, dtype=dtype)
    if encoder:
        return _load_bert(folder, name_or_path, hf_config, identity, device=device, dtype=dtype)
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                        local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise SaeaseError(f"cannot load model {name_or_path!r} from {folder}: {_one_line(e)}") from e
    hf_model.eval().requires_grad_(False)

    processing = dict(fold_ln=not raw, center_writing_weights=not raw,
                      center_unembed=not raw, fold_value_biases=not raw)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = loading.get_pretrained_model_config(
                tl_name, hf_cfg=hf_model.config.to_dict(), fold_ln=not raw,
                device=device, dtype=torch.float32, local_files_only=True)
            state_dict = loading.get_pretrained_state_dict(tl_name, cfg, hf_model)
            model = HookedTransformer(cfg, tokenizer, move_to_device=False,
                                      default_padding_side="right")
            model.load_and_process_state_dict(state_dict, **processing)
    except NotImplementedError as e:
        raise SaeaseError(f"cannot load model {name_or_path!r}: TransformerLens does not support "
                          f"its architecture ({_one_line(e)})") from e
    del hf_model, state_dict
    model.move_model_modules_to_device()
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    model.eval()
    model.loaded = dataclasses.replace(identity, processed=not raw)
    return model


def has_hooked_transformer() -> bool:
    """True with TransformerLens 3.x (HookedTransformer/HookedEncoder); False with 4.x, where
    TransformerBridge is the only model class."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def is_encoder(model) -> bool:
    """True for a BERT (a `HookedEncoder`, or a TransformerBridge of one): bidirectional,
    post-LN, windows framed by [CLS] … [SEP]."""
    loaded = vars(model).get("loaded")
    if loaded is not None:
        return loaded.encoder
    if has_hooked_transformer():
        from transformer_lens import HookedEncoder

        if isinstance(model, HookedEncoder):
            return True
    config = getattr(vars(model).get("_modules", {}).get("original_model"), "config", None)
    return getattr(config, "model_type", None) in ENCODER_MODEL_TYPES


def _load_bridge(folder: str, name: str, identity: LoadedModel, *, raw: bool, device, dtype):
    """TransformerLens 4.x: the folder booted as a `TransformerBridge`; unless `raw`, with
    compatibility mode (fold_ln, center_writing_weights, center_unembed, fold_value_biases),
    HookedTransformer's numerics."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a BertModel has no MLM head: "newly initialized" report
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TransformerBridge.boot_transformers(folder, device=device, dtype=torch.float32)
            if not raw:
                model.enable_compatibility_mode(disable_warnings=True)
    except (OSError, ValueError, KeyError) as e:
        raise SaeaseError(f"cannot load model {name!r} from {folder}: {_one_line(e)}") from e
    except NotImplementedError as e:
        raise SaeaseError(f"cannot load model {name!r}: TransformerLens does not support "
                          f"its architecture ({_one_line(e)})") from e
    finally:
        hf_logging.set_verbosity(level)
    if dtype != torch.float32:
        model.to(dtype)
    model.eval().requires_grad_(False)
    model.loaded = dataclasses.replace(identity, processed=not raw, model_class="TransformerBridge")
    return model


def _read_config(folder: str, name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise SaeaseError(f"cannot load model {name!r} from {folder}: {_one_line(e)}") from e


def _load_bert(folder: str, name: str, hf_config, identity: LoadedModel, *, device, dtype):
    """A BERT checkpoint (``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``) as a
    `HookedEncoder`; see the module docstring for what happens to absent heads."""
    from transformer_lens import HookedEncoder
    from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights
    from transformers import AutoTokenizer, BertForPreTraining
    from transformers.utils import logging as hf_logging

    _check_bert_config(hf_config, name)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized heads" report: handled below
    try:
        hf_model, info = BertForPreTraining.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise SaeaseError(f"cannot load model {name!r} from {folder}: {_one_line(e)}") from e
    finally:
        hf_logging.set_verbosity(level)
    missing = list(info["missing_keys"])
    body = [k for k in missing if not k.startswith(("cls.", "bert.pooler."))]
    if body:
        raise SaeaseError(f"cannot load model {name!r}: its checkpoint lacks encoder weights "
                          f"({', '.join(body[:3])}{', …' if len(body) > 3 else ''})")
    if any(getattr(tokenizer, t, None) is None for t in ("cls_token_id", "sep_token_id")):
        raise SaeaseError(f"cannot load model {name!r}: its tokenizer has no [CLS]/[SEP] token "
                          "to frame the context windows with")

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = _bert_tl_config(hf_config, folder, device)
    state_dict = convert_bert_weights(hf_model.eval(), cfg)
    absent = _zero_absent_heads(state_dict, missing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "use TransformerBridge in 4.0"
        model = HookedEncoder(cfg, tokenizer, move_to_device=False)
    result = model.load_state_dict({k: v.detach().clone() for k, v in state_dict.items()}, strict=False)
    params = {n for n, _ in model.named_parameters()}
    if set(result.missing_keys) & params or result.unexpected_keys:
        raise SaeaseError(f"cannot load model {name!r}: TransformerLens's BERT converter left "
                          f"{sorted(set(result.missing_keys) & params)[:3]} unset")
    del hf_model, state_dict
    model.to(device, print_details=False)
    if dtype != torch.float32:
        model.to(dtype, print_details=False)
    model.eval().requires_grad_(False)
    model.loaded = dataclasses.replace(identity, processed=False, model_class="HookedEncoder",
                                       absent=absent, encoder=True)
    return model


def _check_bert_config(hf_config, name: str) -> None:
    """What TransformerLens's HookedEncoder can represent exactly."""
    from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

    problems = []
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {hf_config.position_embedding_type!r} (only 'absolute')")
    if getattr(hf_config, "type_vocab_size", 2) != 2:
        problems.append(f"type_vocab_size {hf_config.type_vocab_size} (only 2)")
    if hf_config.hidden_act not in SUPPORTED_ACTIVATIONS:
        problems.append(f"hidden_act {hf_config.hidden_act!r}")
    if getattr(hf_config, "is_decoder", False):
        problems.append("is_decoder=True (causal BERT)")
    if problems:
        raise SaeaseError(f"cannot load model {name!r}: TransformerLens's HookedEncoder does not "
                          f"support this BERT ({'; '.join(problems)})")


def _bert_tl_config(hf_config, folder: str, device: str):
    """HookedTransformerConfig of a BERT, as TransformerLens's converter builds it for
    ``BertForMaskedLM`` (convert_hf_model_config), which refuses other BERT architectures."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=hf_config.hidden_size,
        d_head=hf_config.hidden_size // hf_config.num_attention_heads,
        n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=hf_config.max_position_embeddings,
        eps=hf_config.layer_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        attention_dir="bidirectional",
        original_architecture="BertForMaskedLM",
        model_name=Path(folder).name,
        init_weights=False,
        device=device,
        dtype=torch.float32,
    )


def _zero_absent_heads(state_dict: dict, missing: list[str]) -> tuple[str, ...]:
    """Zero the TransformerLens parameters whose Hugging Face weights the checkpoint lacks
    (randomly initialised by from_pretrained); returns the absent HF modules."""
    parts = {
        "cls.predictions": ("mlm_head.W", "mlm_head.b", "mlm_head.ln.b", "unembed.b_U"),
        "cls.seq_relationship": ("nsp_head.W", "nsp_head.b"),
        "bert.pooler": ("pooler.W", "pooler.b"),
    }
    absent = []
    for part, keys in parts.items():
        # (cls.predictions.decoder.weight is tied to the token embedding: never missing, kept)
        if any(k.startswith(part + ".") for k in missing):
            absent.append(part)
            for key in keys:
                state_dict[key] = torch.zeros_like(state_dict[key])
            if part == "cls.predictions":
                state_dict["mlm_head.ln.w"] = torch.ones_like(state_dict["mlm_head.ln.w"])
    return tuple(absent)


# ---- names, before any weights are loaded ------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """What is known of a model from its name and config.json alone (no weights loaded).

    name: official hub id, or the absolute path of a local folder (as ``LoadedModel.name``).
    store_name: the model's part of default store and dictionary names (see `store_name`).
    encoder: a BERT (``model_type`` in ENCODER_MODEL_TYPES).
    """

    name: str
    store_name: str
    encoder: bool


def identify(name_or_path: str) -> ModelRef:
    """`ModelRef` of a model name or folder; a hub model not in the local cache is downloaded
    (as `load_model` would), a bad name fails with the same one-line error."""
    folder, _, identity = _resolve(name_or_path)
    config = _config_json(Path(folder), name_or_path)
    encoder = config.get("model_type") in ENCODER_MODEL_TYPES
    if identity.revision is None:  # a local folder
        return ModelRef(identity.name, local_store_name(Path(folder), config), encoder)
    return ModelRef(identity.name, safe_name(identity.name), encoder)


def safe_name(name: str) -> str:
    """A name as one path component: ``EleutherAI/pythia-70m`` -> ``EleutherAI--pythia-70m``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-.") or "model"


def local_store_name(folder: Path, config: dict) -> str:
    """Store name of a local model folder: the hub id its config.json records
    (``_name_or_path``, written by older transformers' save_pretrained), else the folder's name
    plus 8 hex digits of sha256(absolute path, config.json), so two different folders that are
    both called ``model`` never share a store."""
    for key in ("_name_or_path", "name_or_path"):
        recorded = config.get(key)
        if isinstance(recorded, str) and _HUB_ID.match(recorded) and not Path(recorded).expanduser().exists():
            return safe_name(recorded)
    return f"{safe_name(folder.name)}-{_folder_hash(folder)}"


def store_name(name_or_path: str) -> str:
    """Store name of a model as a store's manifest records it (``source.model``: a hub id or a
    local folder's absolute path), without touching the hub: hub ids as `safe_name`, folders
    as `local_store_name` (a folder that no longer exists: its name plus a hash of its path)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return local_store_name(path.resolve(), _config_json(path, name_or_path))
    if path.is_absolute():
        return f"{safe_name(path.name)}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return safe_name(name_or_path)


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256(str(folder.resolve()).encode() + b"\n")
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    return h.hexdigest()[:8]


def _config_json(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SaeaseError(f"cannot load model {name!r}: {folder}/config.json is unreadable "
                          f"({_one_line(e)})") from None


# ---- hooks ---------------------------------------------------------------------------------------


def expected_hook_name(layer: int, hook: str, encoder: bool) -> str:
    """The full hook name `hook_name` gives for a short name, from the model's kind alone
    (a full name is returned as it is)."""
    short = hook[5:] if hook.startswith("hook_") else hook
    if short not in SHORT_HOOKS:
        return hook
    if encoder and has_hooked_transformer():
        return f"blocks.{layer}.{ENCODER_HOOKS.get(short, 'hook_' + short)}"
    return f"blocks.{layer}.hook_{short}"


def hook_name(model, layer: int, hook: str) -> str:
    """Full hook name for `hook` at `layer`: ``resid_post`` -> ``blocks.{layer}.hook_resid_post``.

    `hook` is one of SHORT_HOOKS or a full name already in ``model.hook_dict`` (then `layer` must
    agree with the name's block, if it has one). In a BERT, ``resid_post`` ->
    ``blocks.{layer}.hook_normalized_resid_post`` (the vector passed to the next block).
    """
    n_layers = model.cfg.n_layers
    if hook in model.hook_dict:
        name_layer = _parse_layer(hook)
        if name_layer is not None and name_layer != layer:
            raise SaeaseError(f"hook {hook!r} is in layer {name_layer}, not layer {layer}")
        return hook
    if hook.startswith("hook_") and hook[5:] in SHORT_HOOKS:
        hook = hook[5:]
    if hook not in SHORT_HOOKS:
        raise SaeaseError(f"unknown hook {hook!r}: use one of {', '.join(SHORT_HOOKS)} "
                          f"or a full hook name such as 'blocks.0.hook_resid_post'")
    if not 0 <= layer < n_layers:
        raise SaeaseError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    name = f"blocks.{layer}.hook_{hook}"
    # a HookedEncoder's resid_post is the pre-LN sum; a BERT bridge's already is the LN output
    encoder_name = f"blocks.{layer}.{ENCODER_HOOKS.get(hook, 'hook_' + hook)}"
    if is_encoder(model) and encoder_name in model.hook_dict:
        name = encoder_name
    if name not in model.hook_dict:
        available = [h for h in SHORT_HOOKS if f"blocks.{layer}.hook_{h}" in model.hook_dict]
        raise SaeaseError(f"hook {hook!r} does not exist in this model (e.g. no resid_mid when "
                          f"attention and MLP run in parallel): use one of {', '.join(available)}")
    return name


def hook_layer(hook_name: str) -> int:
    """Block index of a hook name: ``blocks.3.hook_resid_post`` -> 3."""
    layer = _parse_layer(hook_name)
    if layer is None:
        raise SaeaseError(f"hook {hook_name!r} is not inside a block ('blocks.N.…')")
    return layer


@torch.no_grad()
def run_to_hook(model, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activations at `hook_name` for `tokens` [batch, pos] -> [batch, pos, d_model].

    (Other hooks give their own shape, e.g. ``hook_z`` [batch, pos, n_heads, d_head].)
    Runs only blocks 0..layer (``stop_at_layer``; a `HookedEncoder` has no such argument) and
    aborts the forward pass right after the hook fires, so nothing downstream is computed. Uses no_grad rather than inference_mode so the
    result can feed a training step.
    """
    if hook_name not in model.hook_dict:
        raise SaeaseError(f"hook {hook_name!r} does not exist in this model")
    if tokens.ndim == 1:
        tokens = tokens[None]
    layer = _parse_layer(hook_name)
    captured = {}

    def capture(act, hook):
        captured["act"] = act.detach()
        raise _StopForward

    with model.hooks(fwd_hooks=[(hook_name, capture)]):
        try:
            if is_encoder(model):  # full windows: no attention mask, token types all 0
                model(tokens.to(model.cfg.device), return_type=None)
            else:
                model(tokens.to(model.cfg.device), stop_at_layer=None if layer is None else layer + 1)
        except _StopForward:
            pass
    if "act" not in captured:
        raise SaeaseError(f"hook {hook_name!r} did not fire during the forward pass")
    return captured["act"]


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass early."""


def _parse_layer(hook_name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (f or "").strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in _WEIGHT_FILES)


def _resolve(name_or_path: str) -> tuple[str, str, LoadedModel]:
    """(folder to load from, name for TransformerLens's config converter, identity).

    A local folder is used as is. A hub name is looked up in the local Hugging Face cache first;
    only if it is missing and the hub is not known to be offline is it downloaded, after one
    short reachability probe, so an unreachable hub fails in seconds.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path.resolve()
        if not (folder / "config.json").is_file():
            raise SaeaseError(f"cannot load model {name_or_path!r}: the folder has no config.json "
                              "(expected a Hugging Face model saved with save_pretrained)")
        return str(folder), str(folder), LoadedModel(str(folder), str(folder), processed=True)
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise SaeaseError(f"cannot load model {name_or_path!r}: no such model folder")

    try:
        repo_id = tl_name = official_model_name(name_or_path)
    except ValueError:
        if "/" not in name_or_path:
            raise SaeaseError(f"unknown model {name_or_path!r}: not a TransformerLens model name, "
                              "a hub id (org/name) or a local folder") from None
        repo_id, tl_name = name_or_path, None  # any hub id of a supported architecture
    folder = cached_snapshot(repo_id) or _download(name_or_path, repo_id)
    revision = folder.name
    return str(folder), tl_name or str(folder), LoadedModel(repo_id, repo_id, True, revision)


def official_model_name(name: str) -> str:
    """TransformerLens's official hub id for a model name or alias (``pythia-70m`` ->
    ``EleutherAI/pythia-70m``); ValueError when it is not one of TransformerLens's models."""
    try:
        from transformer_lens.supported_models import get_official_model_name  # 4.x
    except ImportError:
        from transformer_lens.loading_from_pretrained import get_official_model_name  # 3.x
    return get_official_model_name(name)


def cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None
    return folder if _has_weights(folder) else None


def _download(name: str, repo_id: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    hint = "Pass a local folder with --model /path/to/model"
    if _offline():
        raise SaeaseError(f"cannot load model {name!r}: not in the local Hugging Face cache and "
                          f"the hub is unreachable (offline). {hint}")
    try:
        info = HfApi().model_info(repo_id, timeout=_HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise SaeaseError(f"cannot load model {name!r}: {repo_id} is not on the hub or needs "
                          f"access rights ({type(e).__name__}). {hint}") from e
    except Exception as e:
        raise SaeaseError(f"cannot load model {name!r}: not in the local Hugging Face cache and "
                          f"the hub is unreachable ({type(e).__name__}). {hint}") from e
    files = {s.rfilename for s in info.siblings or []}
    weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
    patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", *weights]
    try:
        return Path(snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns))
    except Exception as e:
        raise SaeaseError(f"cannot load model {name!r}: download failed "
                          f"({type(e).__name__}: {_one_line(e)}). {hint}") from e
