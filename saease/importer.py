"""`saease import ARRAY --out STORE [--labels FILE]`: any array of vectors as a store."""

from __future__ import annotations

import argparse
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import safetensors
import safetensors.torch
import torch

from saease.cli import dataclass_args, option
from saease.errors import SaeaseError
from saease.store import write_store

SUFFIXES = (".npy", ".pt", ".safetensors")


def load_array(path, what: str = "array") -> torch.Tensor:
    """Read a .npy, .pt or .safetensors file holding one tensor (the first, or "acts")."""
    path = Path(path)
    if not path.exists():
        raise SaeaseError(f"{path}: no such file ({what} as {', '.join(SUFFIXES)} expected)")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype == object:
                raise ValueError("object array")
            return torch.from_numpy(np.ascontiguousarray(arr))
        if path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get("acts", next(iter(obj.values())))
            return torch.as_tensor(obj)
        if path.suffix == ".safetensors":
            tensors = safetensors.torch.load_file(str(path))
            return tensors.get("acts", next(iter(tensors.values())))
    except (OSError, ValueError, TypeError, RuntimeError, EOFError, StopIteration, pickle.UnpicklingError,
            zipfile.BadZipFile, safetensors.SafetensorError) as err:  # an unreadable or non-numeric file
        raise SaeaseError(f"{path}: cannot read a numeric {what} ({type(err).__name__}: {err}); "
                          "expected one rectangular array") from None
    raise SaeaseError(f"{path}: unsupported file type {path.suffix!r}; expected {', '.join(SUFFIXES)}")


@dataclass
class ImportConfig:
    """`saease import`'s flags."""

    array: str = option(doc="a .npy, .pt or .safetensors file holding [rows, d_in]")
    out: str = option(doc="store folder to write")
    labels: str | None = option(None, "optional file of one integer label per row (same formats)")
    shard_rows: int = option(65536, "activation rows per shard file")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "storage dtype of the activations")


Config = ImportConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    dataclass_args(parser, ImportConfig, positional=("array",))


def run(cfg: ImportConfig) -> dict:
    acts = load_array(cfg.array)
    if acts.ndim != 2:
        raise SaeaseError(f"{cfg.array}: array of shape {tuple(acts.shape)}; expected 2-D [rows, d_in]")
    if not acts.is_floating_point():
        acts = acts.float()
    labels = None
    if cfg.labels:
        labels = load_array(cfg.labels, "labels")
        if labels.ndim != 1 or len(labels) != len(acts) or labels.is_floating_point():
            raise SaeaseError(f"{cfg.labels}: labels of shape {tuple(labels.shape)} ({labels.dtype}); "
                              f"expected {len(acts)} integers, one per row of {cfg.array}")
    store = write_store(cfg.out, acts, labels=labels, shard_rows=cfg.shard_rows, dtype=cfg.dtype,
                        source={"imported": str(Path(cfg.array).resolve())})
    return {"store": str(store.path), "n": store.n_rows, "d_in": store.d_in, "has_labels": labels is not None}
