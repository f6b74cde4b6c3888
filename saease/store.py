"""Activation stores (docs/harvest.md): a folder of safetensors shards listed in a manifest.

    DIR/manifest.json            format, d_in, dtype, n_rows, shards [{file, rows, sha256}], source
    DIR/shard-00000.safetensors  "acts" [rows, d_in]; optional "tokens", "seq", "pos" [rows] int32,
                                 "labels" [rows] int64
    DIR/contexts.safetensors     optional token windows, for showing examples in context

A shard is listed in the manifest only after it is complete on disk: it is written to a
temporary name, fsynced and renamed, and only then is the manifest (itself written the same
way) updated. A reader never sees a partial shard, and verifies each shard's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from saease.errors import SaeaseError

FORMAT = "saease.activations/1"
MANIFEST = "manifest.json"
CONTEXTS = "contexts.safetensors"
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent/old or complete, never partial."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def read_json(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise SaeaseError(f"{path}: no such file ({what} expected)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeaseError(f"{path}: not valid JSON ({err.msg if hasattr(err, 'msg') else err}); {what} expected") from None


def load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or fail with one line saying the `what` folder is incomplete/damaged."""
    path = Path(path)
    if not path.is_file():
        raise SaeaseError(f"{path}: missing; the {what} folder is incomplete")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise SaeaseError(f"{path}: not a readable safetensors file ({err})") from None


def check_finite(acts: torch.Tensor, what: str) -> None:
    if not torch.isfinite(acts).all():
        bad = (~torch.isfinite(acts)).any(dim=-1).nonzero()[:5].flatten().tolist()
        raise SaeaseError(f"{what}: contains NaN or inf (rows {bad}...); only finite values are accepted")


def shard_bytes(acts: torch.Tensor, dtype: str, columns: dict[str, torch.Tensor | None]) -> bytes:
    """One shard file's bytes: "acts" in the store's dtype, int32 per-row columns (int64 labels)."""
    tensors = {"acts": acts.detach().to("cpu", DTYPES[dtype]).contiguous()}
    for name, col in columns.items():
        if col is None:
            continue
        if len(col) != len(acts):
            raise SaeaseError(f"column {name!r} has {len(col)} rows; expected {len(acts)} like acts")
        col_dtype = torch.int64 if name == "labels" else torch.int32
        tensors[name] = torch.as_tensor(col).detach().to("cpu", col_dtype).contiguous()
    return safetensors.torch.save(tensors)


class StoreWriter:
    """Writes shards into DIR and keeps DIR/manifest.json listing the complete ones.

    Re-opening a folder whose manifest has the same `config` continues it (its shards are
    kept, `n_rows`/`shards` say where to resume); a different config is refused.
    `overwrite` starts afresh, deleting what was there. `finish()` marks the store complete.
    """

    def __init__(self, path, *, d_in: int, dtype: str = "float32", source: dict | None = None,
                 config: dict | None = None, overwrite: bool = False, manifest_name: str = MANIFEST,
                 shard_prefix: str = "shard"):
        if dtype not in DTYPES:
            raise SaeaseError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
        self.path = Path(path)
        self.manifest_path = self.path / manifest_name
        self.shard_prefix = shard_prefix
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SaeaseError(f"{self.path}: cannot create the store folder ({err.strerror})") from None
        if not os.access(self.path, os.W_OK):
            raise SaeaseError(f"{self.path}: folder is not writable; pass a writable --out")
        self.manifest = {
            "format": FORMAT, "d_in": int(d_in), "dtype": dtype, "n_rows": 0, "shards": [],
            "complete": False, "source": source or {}, "config": config or {},
        }
        if self.manifest_path.exists():
            old = read_json(self.manifest_path, "a store manifest")
            same = (old.get("format") == FORMAT and old.get("config") == self.manifest["config"]
                    and old.get("d_in") == d_in and old.get("dtype") == dtype)
            if overwrite:
                for shard in old.get("shards", []):
                    (self.path / shard["file"]).unlink(missing_ok=True)
                (self.path / CONTEXTS).unlink(missing_ok=True)
            elif same:
                self.manifest = old
            else:
                raise SaeaseError(
                    f"{self.path}: holds a store made with another configuration; "
                    "pass --overwrite to replace it or choose another --out")
        self._save_manifest()

    @property
    def n_rows(self) -> int:
        return self.manifest["n_rows"]

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def _save_manifest(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    def write_shard(self, acts: torch.Tensor, **columns: torch.Tensor) -> dict:
        """Write one whole shard: `acts` [rows, d_in] plus optional per-row columns
        (tokens, seq, pos, labels). Returns its manifest entry."""
        d_in = self.manifest["d_in"]
        if acts.ndim != 2 or acts.shape[1] != d_in:
            raise SaeaseError(f"shard acts of shape {tuple(acts.shape)}; expected [rows, {d_in}]")
        data = shard_bytes(acts, self.manifest["dtype"], columns)
        name = f"{self.shard_prefix}-{self.n_shards:05d}.safetensors"
        atomic_write_bytes(self.path / name, data)
        entry = {"file": name, "rows": int(len(acts)), "sha256": hashlib.sha256(data).hexdigest()}
        self.manifest["shards"].append(entry)
        self.manifest["n_rows"] += entry["rows"]
        self._save_manifest()
        return entry

    def write_contexts(self, tokens: torch.Tensor, **extra) -> None:
        """`tokens` [n_seq, context_size] int32, the windows that `seq`/`pos` index."""
        tensors = {"tokens": torch.as_tensor(tokens).to(torch.int32).contiguous()}
        tensors.update({k: torch.as_tensor(v).contiguous() for k, v in extra.items()})
        atomic_write_bytes(self.path / CONTEXTS, safetensors.torch.save(tensors))

    def update(self, **fields) -> None:
        self.manifest.update(fields)
        self._save_manifest()

    def finish(self, **fields) -> "ActivationStore":
        self.manifest.update(fields)
        self.manifest["complete"] = True
        self._save_manifest()
        return ActivationStore(self.path)


@dataclass
class Shard:
    acts: torch.Tensor
    columns: dict


class ActivationStore:
    """Reads a store. `store.read_shard(i)` verifies the shard's sha256 as it loads it."""

    def __init__(self, path, *, verify: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            raise SaeaseError(f"{self.path}: no such store (a folder with {MANIFEST} is expected)")
        if self.path.is_file():
            raise SaeaseError(f"{self.path}: is a file; a store folder with {MANIFEST} is expected "
                              f"(bring arrays in with `saease import`)")
        self.manifest = read_json(self.path / MANIFEST, "a store manifest")
        fmt = self.manifest.get("format")
        if fmt != FORMAT:
            raise SaeaseError(f"{self.path}: store format {fmt!r} is not supported; expected {FORMAT!r}")
        if not self.manifest.get("complete", True):
            raise SaeaseError(f"{self.path}: store is incomplete (an interrupted harvest?); rerun the "
                              "same command to finish it")
        self.verify = verify
        self.d_in: int = int(self.manifest["d_in"])
        self.dtype: str = self.manifest["dtype"]
        self.shards: list[dict] = self.manifest["shards"]
        self.n_rows: int = int(self.manifest["n_rows"])
        self.source: dict = self.manifest.get("source", {})
        if sum(s["rows"] for s in self.shards) != self.n_rows:
            raise SaeaseError(f"{self.path}: manifest rows do not add up; the store is damaged")

    def __len__(self) -> int:
        return self.n_rows

    # ---- identity ---------------------------------------------------------------------------

    @property
    def model_name(self) -> str | None:
        """The model's part of default names (``EleutherAI--pythia-70m``, ``model-1a2b3c4d`` for
        a local folder without a recorded hub id: saease.models.local_store_name); None for a
        store with no model (synthetic data, imported arrays). Older stores: derived from
        ``source.model``."""
        recorded = self.source.get("model_name")
        if recorded:
            return str(recorded)
        model = self.source.get("model")
        if not model:
            return None
        from saease.models import store_name

        return store_name(str(model))

    @property
    def hook_name(self) -> str | None:
        """The full hook name the rows were read at, as the model named it
        (``blocks.2.hook_resid_post``; ``blocks.1.hook_normalized_resid_post`` in a TL 3.x BERT);
        None when the store records none."""
        hook = self.source.get("hook") or (self.manifest.get("config") or {}).get("hook")
        return str(hook) if hook else None

    def default_name(self, kind: str, width: int) -> str:
        """Default dictionary name ``<model>-<hook>-<kind>-<width>``; a store without a model is
        named by its folder instead (``<folder>-<kind>-<width>``)."""
        if self.model_name and self.hook_name:
            return f"{self.model_name}-{self.hook_name}-{kind}-{width}"
        return f"{self.path.name}-{kind}-{width}"

    @property
    def split_key(self) -> str:
        """Content key of the store: sha256 over its shards' sha256s and row counts, in order.
        A copied or moved store has the same key; a store with other rows has another.
        (A shard entry without a sha256, hand-made, is hashed from its file.)"""
        h = hashlib.sha256(b"saease.split/1\n")
        for entry in self.shards:
            digest = entry.get("sha256") or hashlib.sha256((self.path / entry["file"]).read_bytes()).hexdigest()
            h.update(f"{digest} {int(entry['rows'])}\n".encode())
        return h.hexdigest()[:16]

    def holdout_mask(self, fraction: float, seed: int) -> torch.Tensor:
        """[n_rows] bool, True for the held-out rows: `holdout_mask(n_rows, fraction, seed,
        key=self.split_key)`, the same for every copy of the store."""
        return holdout_mask(self.n_rows, fraction, seed, key=self.split_key)

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, n_rows={self.n_rows}, d_in={self.d_in}, dtype={self.dtype})"

    @property
    def shard_offsets(self) -> list[int]:
        """Global index of each shard's first row."""
        return np.cumsum([0] + [s["rows"] for s in self.shards]).tolist()

    def _load(self, i: int) -> dict[str, torch.Tensor]:
        entry = self.shards[i]
        file = self.path / entry["file"]
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise SaeaseError(f"{file}: shard listed in the manifest is missing; the store is damaged") from None
        if self.verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SaeaseError(f"{file}: sha256 does not match the manifest; the shard is damaged")
        tensors = safetensors.torch.load(data)
        if tensors["acts"].shape != (entry["rows"], self.d_in):
            raise SaeaseError(f"{file}: acts shape {tuple(tensors['acts'].shape)} disagrees with the manifest")
        return tensors

    def read_shard(self, i: int) -> Shard:
        tensors = self._load(i)
        acts = tensors.pop("acts")
        return Shard(acts=acts, columns=tensors)

    def iter_shards(self):
        for i in range(len(self.shards)):
            yield self.read_shard(i)

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest.get("has_labels"))

    @property
    def has_contexts(self) -> bool:
        return (self.path / CONTEXTS).exists()

    def contexts(self) -> dict[str, torch.Tensor]:
        return safetensors.torch.load_file(str(self.path / CONTEXTS))

    def read_all(self, max_rows: int | None = None, columns: bool = False):
        """Concatenate shards (up to `max_rows`): acts [n, d_in] float32 and, with `columns`,
        a dict of the per-row columns. Only for stores that fit in memory."""
        acts, cols, n = [], {}, 0
        for shard in self.iter_shards():
            take = len(shard.acts) if max_rows is None else min(len(shard.acts), max_rows - n)
            acts.append(shard.acts[:take].float())
            for k, v in shard.columns.items():
                cols.setdefault(k, []).append(v[:take])
            n += take
            if max_rows is not None and n >= max_rows:
                break
        if not acts:
            raise SaeaseError(f"{self.path}: store has no rows")
        out = torch.cat(acts)
        cols = {k: torch.cat(v) for k, v in cols.items()}
        return (out, cols) if columns else out


def newest_store(root="activations") -> Path:
    """The most recently modified complete store under `root` (searched recursively)."""
    root = Path(root)
    manifests = sorted(root.rglob(MANIFEST), key=lambda p: p.stat().st_mtime) if root.exists() else []
    manifests = [m for m in manifests if json.loads(m.read_text()).get("complete", True)]
    if not manifests:
        raise SaeaseError(f"no activation store under {root}/; run `saease harvest` first or pass --data STORE")
    return manifests[-1].parent


def write_store(path, acts: torch.Tensor, *, labels: torch.Tensor | None = None, shard_rows: int = 65536,
                dtype: str = "float32", source: dict | None = None, overwrite: bool = True,
                **columns) -> ActivationStore:
    """Write an in-memory array as a store (synthetic data, imports, tests)."""
    acts = torch.as_tensor(acts)
    if acts.ndim != 2:
        raise SaeaseError(f"array of shape {tuple(acts.shape)}; expected 2-D [rows, d_in]")
    if len(acts) == 0:
        raise SaeaseError("array has no rows; expected at least one vector")
    check_finite(acts, "array")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or len(labels) != len(acts):
            raise SaeaseError(f"labels of shape {tuple(labels.shape)}; expected [{len(acts)}], one per row")
    writer = StoreWriter(path, d_in=acts.shape[1], dtype=dtype, source=source, overwrite=overwrite,
                         config={"kind": "array", "rows": len(acts)})
    for start in range(0, len(acts), shard_rows):
        sl = slice(start, start + shard_rows)
        cols = {k: v[sl] for k, v in columns.items() if v is not None}
        if labels is not None:
            cols["labels"] = labels[sl]
        writer.write_shard(acts[sl], **cols)
    return writer.finish(has_labels=labels is not None,
                         label_names=sorted(set(labels.tolist())) if labels is not None else None)


def holdout_mask(n_rows: int, fraction: float, seed: int, key: str | None = None) -> torch.Tensor:
    """[n_rows] bool, True for the held-out (test) rows: a fixed random `fraction` of the
    rows, chosen by `seed` and the store's content `key` (ActivationStore.split_key), so every
    copy of a store splits the same way. Training skips these rows and eval reads only these
    by default.

    key=None is the split of dictionaries trained before the key existed (their training
    config records no ``split_key``): chosen by `seed` alone."""
    if not 0 <= fraction < 1:
        raise SaeaseError(f"held-out fraction {fraction}: expected a number in [0, 1)")
    if key is None:
        gen_seed = int(seed)
    else:
        gen_seed = int.from_bytes(hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()[:8], "little") >> 1
    gen = torch.Generator().manual_seed(gen_seed)
    return torch.rand(n_rows, generator=gen) < fraction


def training_split(store: "ActivationStore", training: dict, recorded_store: str | None = None,
                   all_rows: bool = False) -> tuple[torch.Tensor | None, str]:
    """(mask of the rows a dictionary did not train on, or None for every row; "held-out" or
    "all") for evaluating it on `store`. `training`: the dictionary's training config.

    A dictionary that records ``split_key`` (the trainer records store.split_key): `store` is
    its training store when its content key is that key, wherever the store now lives, and the
    held-out rows are `store.holdout_mask(holdout, holdout_seed)`. An older dictionary (no
    ``split_key``): `store` is its training store when it is the recorded folder
    (`recorded_store`), and the rows are the seed-only split it trained with. Any other store,
    or `all_rows`, or no hold-out: every row."""
    fraction = float(training.get("holdout", 0.0) or 0.0)
    seed = training.get("holdout_seed", training.get("seed", 0))
    key = training.get("split_key")
    if key:
        same = store.split_key == key
    else:
        same = bool(recorded_store) and Path(store.path).resolve() == Path(recorded_store).resolve()
    if all_rows or not same or fraction <= 0:
        return None, "all"
    mask = holdout_mask(store.n_rows, fraction, seed, key=key or None)
    if not mask.any():
        raise SaeaseError(f"{store.path}: the held-out split of {store.n_rows} rows is empty; pass --all-rows")
    return mask, "held-out"
