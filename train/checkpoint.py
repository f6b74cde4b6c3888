"""Checkpoints: everything a killed run needs to end exactly as an uninterrupted one would.

    OUT/checkpoint.pt    weights, Adam and scheduler state, the noise generators' states, the
                         loader position (epoch, next batch), the step, the configs
    OUT/checkpoint.json  the same position in words (read by `--resume` checks and people)

Both are written atomically (temporary file, fsync, rename), checkpoint.pt first, so a
kill at any moment leaves the last complete checkpoint in place.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from saease.dictionary import config_dict
from saease.errors import SaeaseError
from saease.store import atomic_write_bytes, atomic_write_json, read_json

FORMAT = "saease.checkpoint/2"
WEIGHTS, INFO = "checkpoint.pt", "checkpoint.json"

# A resumed run must share the checkpoint's `TrainConfig.fixed_values()` (every dictionary
# setting and the run's `fixed` fields); the rest (--epochs, --device, W&B flags, …) may change.


def save(out: Path, *, train_cfg, model, optimizer, scheduler, noise_states: list, step: int, epoch: int,
         batch: int, total_steps: int, horizon: int, store, wandb_id: str | None) -> None:
    state = {
        "format": FORMAT,
        "train_config": train_cfg.flat_values(),
        "dictionary_config": config_dict(model.cfg),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "noise": noise_states,
        "step": step, "epoch": epoch, "batch": batch, "total_steps": total_steps, "horizon": horizon,
        "store": {"path": str(store.path.resolve()), "d_in": store.d_in, "n_rows": store.n_rows},
        "wandb_id": wandb_id,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / WEIGHTS, buf.getvalue())
    atomic_write_json(out / INFO, {
        "format": FORMAT, "step": step, "total_steps": total_steps, "epoch": epoch, "batch": batch,
        "finished": step >= total_steps, "kind": model.cfg.kind, "d_in": model.cfg.d_in,
        "d_latent": model.cfg.d_latent, "store": state["store"]})


def locate(path) -> Path:
    """The folder of a checkpoint given as the run's output folder or its checkpoint.pt."""
    path = Path(path)
    folder = path.parent if path.name in (WEIGHTS, INFO) else path
    if not (folder / WEIGHTS).exists():
        raise SaeaseError(f"--resume {path}: no {WEIGHTS} there; expected the output folder of a "
                          "`saease train` run that wrote a checkpoint")
    return folder


def info(path) -> dict:
    return read_json(locate(path) / INFO, "a checkpoint summary")


def load(path) -> dict:
    file = locate(path) / WEIGHTS
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        # a truncated or damaged file (torch's zip reader, the weights-only unpickler)
        raise SaeaseError(f"{file}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SaeaseError(f"{file}: checkpoint format {state.get('format') if isinstance(state, dict) else None!r}"
                          f" is not supported; expected {FORMAT!r}")
    return state


def check_compatible(state: dict, cfg, store, where) -> None:
    """A one-line error if the run asked for disagrees with the checkpoint it resumes."""
    from saease.train.config import from_saved

    saved = from_saved(state["train_config"]).fixed_values()
    for name, value in cfg.fixed_values().items():
        if saved.get(name) != value:
            raise SaeaseError(f"--{name.replace('_', '-')} {value!r} disagrees with the checkpoint in "
                              f"{where} ({saved.get(name)!r}); drop the flag to continue that run, or start a new one")
    was = state["store"]
    if store.d_in != was["d_in"]:
        raise SaeaseError(f"{store.path}: d_in {store.d_in}, but the checkpoint in {where} was trained on d_in "
                          f"{was['d_in']} ({was['path']}); pass that store with --data")
    if store.n_rows != was["n_rows"]:
        raise SaeaseError(f"{store.path}: {store.n_rows} rows, but the checkpoint in {where} was trained on a "
                          f"store of {was['n_rows']} ({was['path']}); pass that store with --data")
