"""Load language models as TransformerLens `HookedTransformer`s and read activations at a hook.

Hub names (``pythia-70m``, ``EleutherAI/pythia-70m-deduped``, any TransformerLens name or
``org/name`` hub id) and local Hugging Face folders go through one code path: a hub name is
first resolved to its snapshot folder in the local Hugging Face cache (downloading it only when
the hub is reachable), then the folder is loaded with ``AutoModelForCausalLM`` /
``AutoTokenizer`` and converted with TransformerLens's own config and weight converters.

`HookedTransformer.from_pretrained` itself only accepts official names (it calls
``get_official_model_name`` before anything else), so we call the pieces it is made of.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

import torch

from saease.errors import SaeaseError

SHORT_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
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
    """

    name: str
    tokenizer_name_or_path: str
    processed: bool
    revision: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_model(
    name_or_path: str,
    *,
    raw: bool = False,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a causal LM as a `HookedTransformer`, with identity in ``model.loaded`` (`LoadedModel`).

    raw=False applies TransformerLens's default processing (fold_ln, center_writing_weights,
    center_unembed, fold_value_biases), which leaves log-probs unchanged but makes every
    residual-stream vector mean-zero. raw=True keeps the Hugging Face weights as they are
    (`from_pretrained_no_processing` semantics): ``hook_resid_post`` equals HF hidden_states.
    Weights are converted and processed in float32, then cast to `dtype`.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars report progress; keep errors one line
    folder, tl_name, identity = _resolve(name_or_path)
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


def hook_name(model, layer: int, hook: str) -> str:
    """Full hook name for `hook` at `layer`: ``resid_post`` -> ``blocks.{layer}.hook_resid_post``.

    `hook` is one of SHORT_HOOKS or a full name already in ``model.hook_dict`` (then `layer` must
    agree with the name's block, if it has one).
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
    Runs only blocks 0..layer (``stop_at_layer``) and aborts the forward pass right after the
    hook fires, so nothing downstream is computed. Uses no_grad rather than inference_mode so the
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
    from transformer_lens import loading_from_pretrained as loading

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
        repo_id = tl_name = loading.get_official_model_name(name_or_path)
    except ValueError:
        if "/" not in name_or_path:
            raise SaeaseError(f"unknown model {name_or_path!r}: not a TransformerLens model name, "
                              "a hub id (org/name) or a local folder") from None
        repo_id, tl_name = name_or_path, None  # any hub id of a supported architecture
    folder = _cached_snapshot(repo_id) or _download(name_or_path, repo_id)
    revision = folder.name
    return str(folder), tl_name or str(folder), LoadedModel(repo_id, repo_id, True, revision)


def _cached_snapshot(repo_id: str) -> Path | None:
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
