"""The harvest: a model hooked at one layer, run over context windows, rows written to a store.

Order of work (each step agreed between ranks under torchrun, so that a failure anywhere stops
every rank with the same one-line error):

1. The existing store in --out, from its manifest alone: finished with this configuration ->
   report and stop; another configuration -> refuse (unless --overwrite); else new or resume.
0. The model's name and kind from its config.json (saease.models.identify): they name the
   default store, activations/<model>/<hook>, and settle --skip-special's default.
2. The model (TransformerLens, through saease.models.load_model: a HookedTransformer, or a
   HookedEncoder for a BERT; a TransformerBridge with TransformerLens 4.x) and the hook, checked with a two-token forward pass before anything
   is written.
3. Rank 0: the windows (read back from contexts.safetensors when resuming, else the dataset
   tokenized), the store opened (saease.store.StoreWriter), contexts written, and the shards
   already on disk collected from the manifest and the per-rank progress files.
4. Every rank: its contiguous share of the missing shards, batch by batch; a background thread
   (harvest.writer) writes each shard as soon as its rows are in. Rank 0 lists its shards in
   manifest.json, rank r > 0 in progress-r{r}.json.
5. Rank 0: every shard listed in manifest.json in order, the store marked complete.
"""

from __future__ import annotations

import json
import math
import queue
import re
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

from saease.harvest import data as _data
from saease.harvest.config import KEY_DEFAULTS, HarvestConfig
from saease.harvest.dist import Dist
from saease.harvest.plan import Plan
from saease.harvest.writer import SHARD_RE, ShardWriter, shard_index
from saease import models
from saease import store as _store
from saease.errors import SaeaseError

PROGRESS_RE = re.compile(r"^progress-r(\d+)\.json$")
PROGRESS_FORMAT = "saease.harvest-progress/1"


def run_harvest(cfg: HarvestConfig) -> dict | None:
    """Harvest per `cfg`; returns the summary on rank 0 (None on other ranks)."""
    cfg.validate()
    d = Dist.from_env(cfg.device)
    try:
        return _harvest(cfg, d)
    finally:
        d.close()


def _harvest(cfg: HarvestConfig, d: Dist) -> dict | None:
    # the model's name and kind from its config.json (rank 0 first: a hub download happens once)
    ref = d.broadcast(d.agree(lambda: models.identify(cfg.model), only_main=True))
    cfg = cfg.for_model(ref)
    out = cfg.out_path(ref)
    state, key = d.agree(lambda: existing_state(out, cfg.key(), cfg.overwrite))
    if state == "complete":
        manifest = json.loads((out / _store.MANIFEST).read_text())
        if d.is_main:
            print(f"saease harvest: {out} is already complete ({manifest['n_rows']} rows); nothing to do "
                  "(pass --overwrite to redo it)", file=sys.stderr)
        return _summary(out, manifest, status="already complete") if d.is_main else None

    device = _device(cfg, d)
    # the dataset before the model, so that a bad --dataset fails fast (not needed to resume)
    resuming = state == "resume" and (out / _store.CONTEXTS).exists()
    docs = None if resuming else d.agree(
        lambda: _data.load_documents(cfg.dataset, cfg.split, cfg.text_column), only_main=True)
    # rank 0 first, so that a download from the hub happens once
    loaded = d.agree(lambda: load_hooked_model(cfg, device), only_main=True)
    if d.enabled:
        other = d.agree(lambda: None if d.is_main else load_hooked_model(cfg, device))
        loaded = loaded if d.is_main else other
    model, hook, d_in = loaded
    skip = _data.special_ids(model.tokenizer, encoder=models.is_encoder(model)) if cfg.skip_special else None

    writer, windows, done = d.agree(
        lambda: _prepare_store(cfg, ref, out, key, state, docs, model, hook, d_in, skip, d.is_main),
        only_main=True) \
        or (None, None, None)
    windows = d.agree(lambda: windows if d.is_main else _read_contexts(out, cfg.context_size))
    done = d.broadcast(done)
    plan = Plan.build(windows, _data.keep_mask(windows, skip), max_rows=cfg.max_rows,
                      shard_rows=cfg.shard_rows, batch_size=cfg.batch_size)

    missing = [k for k in range(plan.n_shards) if k not in done]
    mine = plan.assign(missing, d.rank, d.world)
    on_shard = manifest_recorder(writer, done) if d.is_main else _progress_recorder(out, key, d.rank)
    stats = d.agree(lambda: harvest_shards(model, hook, plan, mine, out, d_in, cfg.dtype, device,
                                           on_shard, progress=d.is_main, desc=f"harvest {hook}",
                                           overwrite_hint=not cfg.overwrite))
    totals = {k: _gather_sum(d, stats[k]) for k in ("tokens", "rows", "bytes")}
    totals["seconds"] = max(_gather_all(d, stats["seconds"]))
    totals["shards"] = _gather_sum(d, stats["shards"])
    result = d.agree(lambda: _finish(writer, out, key, plan, done, d.world, totals, len(done)), only_main=True)
    return result if d.is_main else None


# ---------------------------------------------------------------------------------------------
# steps


def existing_state(out: Path, key: dict, overwrite: bool) -> tuple[str, dict]:
    """('new', 'resume' or 'complete', the key to write) for the store in `out`; refuses another
    configuration. An older store whose key lacks a field added since (KEY_DEFAULTS) matches
    when this run has that field's default, and keeps its own key."""
    path = out / _store.MANIFEST
    if overwrite or not path.exists():
        return "new", key
    old = _store.read_json(path, "a store manifest")
    if old.get("format") != _store.FORMAT:
        raise SaeaseError(f"{out}: holds a {old.get('format')!r} manifest, not an activation store; "
                          "pass --overwrite to replace it or choose another --out")
    old_key = old.get("config") or {}
    if {**{k: v for k, v in KEY_DEFAULTS.items() if k in key}, **old_key} == key:
        key = old_key
    if old_key != key:
        diff = [k for k in sorted(set(key) | set(old_key)) if key.get(k) != old_key.get(k)]
        said = "; ".join(f"{k}: {old_key.get(k)!r} there, {key.get(k)!r} now" for k in diff[:4])
        raise SaeaseError(f"{out}: holds a store harvested with another configuration ({said}); "
                          "pass --overwrite to replace it or choose another --out")
    return ("complete" if old.get("complete") else "resume"), key


def _device(cfg: HarvestConfig, d: Dist) -> str:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SaeaseError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if d.enabled and device == "cuda":
            device = f"cuda:{d.local_rank}"
    try:
        torch.device(device)
    except RuntimeError:
        raise SaeaseError(f"--device {device!r}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    return device


def load_hooked_model(cfg: HarvestConfig, device: str):
    """(model, full hook name, d_in), the hook checked with a two-token forward pass."""
    model = models.load_model(cfg.model, raw=cfg.raw, device=device)
    hook = models.hook_name(model, cfg.block, cfg.hook)
    n_ctx = model.cfg.n_ctx
    if models.is_encoder(model):
        if cfg.prepend_bos:
            raise SaeaseError(f"--prepend-bos: {cfg.model} is an encoder (BERT), whose windows always open "
                              "with [CLS] and close with [SEP]; drop --prepend-bos")
        if cfg.context_size < 3:
            raise SaeaseError(f"--context-size {cfg.context_size}: expected at least 3 for an encoder "
                              "(the window holds [CLS] and [SEP])")
    if cfg.context_size > n_ctx:
        raise SaeaseError(f"--context-size {cfg.context_size} exceeds the model's context of {n_ctx} tokens; "
                          f"use at most {n_ctx}")
    with torch.inference_mode():
        probe = models.run_to_hook(model, torch.zeros(1, 2, dtype=torch.long), hook)
    if probe.ndim < 3 or tuple(probe.shape[:2]) != (1, 2):
        raise SaeaseError(f"--hook {hook!r} gives activations of shape [{', '.join(map(str, probe.shape))}] "
                          "for 1 window of 2 tokens, not one vector per position; choose a per-position hook "
                          f"such as {', '.join(models.SHORT_HOOKS)}")
    return model, hook, math.prod(probe.shape[2:])


def _prepare_store(cfg, ref, out, key, state, docs, model, hook, d_in, skip, show):
    """Rank 0: windows, the opened StoreWriter with contexts written, and the shards already done.
    `docs` is (dataset, text column), or None to read the windows back from contexts.safetensors."""
    text_column = None
    encoder = models.is_encoder(model)
    if docs is None:
        windows = _read_contexts(out, cfg.context_size)
    else:
        ds, text_column = docs
        windows = _data.make_windows(ds, text_column, model.tokenizer, context_size=cfg.context_size,
                                     prepend_bos=cfg.prepend_bos, encoder=encoder, skip_ids=skip,
                                     max_rows=cfg.max_rows, progress=show, name=cfg.dataset,
                                     shuffle_seed=cfg.seed if cfg.shuffle_windows else None)
    loaded = model.loaded
    source = {
        "model": loaded.name, "model_name": ref.store_name, "revision": loaded.revision, "tokenizer": loaded.tokenizer_name_or_path,
        "architecture": loaded.architecture, "model_class": loaded.model_class, "encoder": loaded.encoder,
        "absent_weights_zeroed": list(loaded.absent),
        "hook": hook, "layer": models.hook_layer(hook) if hook.startswith("blocks.") else None,
        "weights": _weights_label(loaded),
        "processed": loaded.processed, "dataset": key["dataset"], "split": cfg.split, "text_column": text_column,
        "context_size": cfg.context_size, "prepend_bos": cfg.prepend_bos, "skip_special": cfg.skip_special,
        "shuffle_windows": cfg.shuffle_windows, "seed": cfg.seed if cfg.shuffle_windows else None,
        "windows": "[CLS] + tokens + [SEP], documents joined with [SEP]" if encoder else
                   ("BOS + " if cfg.prepend_bos else "") + "tokens, documents joined with EOS",
        "special_ids_skipped": skip or [], "d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers,
    }
    writer = _store.StoreWriter(out, d_in=d_in, dtype=cfg.dtype, source=source, config=key,
                                overwrite=cfg.overwrite or state == "new")
    _clean(out, everything=cfg.overwrite or state == "new")
    if docs is not None:
        writer.write_contexts(windows.to(torch.int32))
    plan = Plan.build(windows, _data.keep_mask(windows, skip), max_rows=cfg.max_rows,
                      shard_rows=cfg.shard_rows, batch_size=cfg.batch_size)
    done = _shards_on_disk(out, key, writer.manifest, plan)
    _record(writer, done)
    return writer, windows, done


def _weights_label(loaded: models.LoadedModel) -> str:
    if loaded.encoder:
        return ("raw (post-LN BERT: TransformerLens does no weight processing; resid_post is "
                "HF hidden_states[layer + 1]: hook_normalized_resid_post in a HookedEncoder, "
                "hook_resid_post in a TransformerBridge)")
    return "processed (fold_ln, center_writing_weights, center_unembed, fold_value_biases)" \
        if loaded.processed else "raw"


def _read_contexts(out: Path, context_size: int) -> torch.Tensor:
    path = out / _store.CONTEXTS
    try:
        windows = safetensors.torch.load_file(str(path))["tokens"].to(torch.int64)
    except Exception as err:
        raise SaeaseError(f"{path}: cannot read the store's token windows ({err}); "
                          "rerun with --overwrite to start afresh") from None
    if windows.ndim != 2 or windows.shape[1] != context_size:
        raise SaeaseError(f"{path}: windows of shape {tuple(windows.shape)} do not match --context-size "
                          f"{context_size}; rerun with --overwrite")
    return windows


def _clean(out: Path, everything: bool) -> None:
    """Remove temporary files of killed runs; with `everything`, also shards and progress files
    of an earlier store in the folder (not listed in any manifest any more)."""
    for p in out.iterdir():
        name = p.name
        if (name.startswith(".") and ".tmp-" in name) or \
                (everything and (SHARD_RE.match(name) or PROGRESS_RE.match(name))):
            p.unlink(missing_ok=True)


def _shards_on_disk(out: Path, key: dict, manifest: dict, plan: Plan) -> dict[int, dict]:
    """Complete shards of this configuration, from the manifest and every progress file."""
    entries = list(manifest.get("shards", []))
    for p in sorted(out.glob("progress-r*.json")):
        try:
            prog = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if prog.get("format") == PROGRESS_FORMAT and prog.get("config") == key:
            entries += prog.get("shards", [])
    done = {}
    for e in entries:
        k = shard_index(e.get("file", ""))
        if k is None or k >= plan.n_shards:
            continue
        a, b = plan.shard_rows_range(k)
        if e.get("rows") == b - a and (out / e["file"]).is_file():
            done[k] = e
    return done


def _record(writer: _store.StoreWriter, entries: dict[int, dict]) -> None:
    shards = [entries[k] for k in sorted(entries)]
    writer.update(shards=shards, n_rows=sum(e["rows"] for e in shards))


def manifest_recorder(writer, done: dict[int, dict]):
    entries = dict(done)

    def on_shard(k: int, entry: dict) -> None:
        entries[k] = entry
        _record(writer, entries)

    return on_shard


def _progress_recorder(out: Path, key: dict, rank: int):
    entries: list[dict] = []
    path = out / f"progress-r{rank}.json"

    def on_shard(k: int, entry: dict) -> None:
        entries.append(entry)
        _store.atomic_write_json(path, {"format": PROGRESS_FORMAT, "config": key, "shards": entries})

    return on_shard


def _finish(writer, out, key, plan, done, world, totals, reused) -> dict:
    entries = _shards_on_disk(out, key, writer.manifest, plan)
    missing = [k for k in range(plan.n_shards) if k not in entries]
    if missing:
        raise SaeaseError(f"{out}: shards {missing[:5]} are missing after the harvest; rerun the same "
                          "command to resume")
    _record(writer, entries)
    writer.finish(n_windows=plan.n_windows, context_size=plan.context_size,
                  harvest={"world_size": world, "batch_size": plan.batch_size, "shard_rows": plan.shard_rows})
    for p in out.glob("progress-r*.json"):
        p.unlink(missing_ok=True)
    status = "complete (resumed)" if reused else "complete"
    secs = totals["seconds"]
    return _summary(out, writer.manifest, status=status, shards_reused=reused,
                    shards_written=totals["shards"], world_size=world, seconds=round(secs, 3),
                    tokens_per_s=round(totals["tokens"] / secs, 1) if secs > 0 else None,
                    disk_mb_per_s=round(totals["bytes"] / secs / 1e6, 2) if secs > 0 else None)


def _summary(out: Path, manifest: dict, status: str, **extra) -> dict:
    src = manifest.get("source", {})
    return {"store": str(out), "status": status, "n_rows": manifest["n_rows"],
            "n_shards": len(manifest["shards"]), "d_in": manifest["d_in"], "dtype": manifest["dtype"],
            "model": src.get("model"), "model_name": src.get("model_name"), "model_class": src.get("model_class", "HookedTransformer"),
            "hook": src.get("hook"), "weights": "raw" if src.get("processed") is False else "processed",
            "tokenizer": src.get("tokenizer"), **extra}


def _gather_all(d: Dist, value) -> list:
    if not d.enabled:
        return [value]
    import torch.distributed as dist

    box = [None] * d.world
    dist.all_gather_object(box, value)
    return box


def _gather_sum(d: Dist, value):
    return sum(_gather_all(d, value))


# ---------------------------------------------------------------------------------------------
# the loop


class _PinnedPool:
    """Page-locked CPU buffers for device-to-host copies that overlap the next forward pass."""

    def __init__(self, shape, dtype, n):
        self.free: queue.Queue = queue.Queue()
        for _ in range(n):
            self.free.put(torch.empty(shape, dtype=dtype, pin_memory=True))

    def take(self):
        return self.free.get()

    def give(self, buf):
        self.free.put(buf)


def harvest_shards(model, hook: str, plan: Plan, shards: list[int], out: Path, d_in: int, dtype: str,
                   device: str, on_shard, *, progress: bool = False, desc: str = "harvest",
                   depth: int = 2, overwrite_hint: bool = True) -> dict:
    """Compute and write `shards` (global indices). Returns tokens/rows/bytes/seconds/shards.

    Before a batch is cast to the storage dtype, the largest |value| of its stored rows is taken
    (on the device, no sync); the writer checks it before it takes the rows, so a NaN, an inf or
    a value past the dtype's range stops the harvest with a one-line error (StoreRangeCheck)
    and no shard holding such a row is ever written."""
    from tqdm.auto import tqdm

    batches = sorted({j for k in shards for j in plan.batches_of_rows(*plan.shard_rows_range(k))})
    storage = _store.DTYPES[dtype]
    on_cuda = str(device).startswith("cuda")
    ctx = plan.context_size
    n_tokens = sum(min(plan.batch_size, plan.n_windows - j * plan.batch_size) for j in batches) * ctx
    sink = ShardWriter(plan, shards, out, d_in, storage, on_shard, depth=depth,
                       check=StoreRangeCheck(hook, dtype, overwrite_hint))
    pool = _PinnedPool((plan.batch_size, ctx, d_in), storage, depth + 2) if on_cuda and batches else None
    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            # this rank's windows go to the device once (a per-batch copy would wait for the GPU)
            first = plan.batch_windows(batches[0])[0] if batches else 0
            last = plan.batch_windows(batches[-1])[1] if batches else 0
            on_device = plan.windows[first:last].to(device)
            for j in batches:
                if sink.error is not None:
                    break
                w0, w1 = plan.batch_windows(j)
                tokens = on_device[w0 - first:w1 - first]
                acts = models.run_to_hook(model, tokens, hook)
                acts = acts.reshape(acts.shape[0], acts.shape[1], d_in)
                peak = stored_peak(plan, j, acts)
                acts = acts.to(storage)
                if pool is not None:
                    buf = pool.take()
                    view = buf[: len(acts)]
                    view.copy_(acts, non_blocking=True)
                    peak = peak.to("cpu", non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    sink.put(j, view, event, release=lambda b=buf: pool.give(b), peak=peak)
                else:
                    sink.put(j, acts.cpu(), peak=peak)  # no-op on the CPU
                bar.update(tokens.numel())
    except BaseException:
        bar.close()
        sink.abort()
        raise
    bar.close()
    sink.close()
    seconds = time.perf_counter() - t0
    rows = sum(b - a for a, b in map(plan.shard_rows_range, shards))
    return {"tokens": n_tokens, "rows": rows, "bytes": sink.bytes_written, "seconds": seconds,
            "shards": sink.shards_written, "write_seconds": sink.write_seconds}


def stored_peak(plan: Plan, j: int, acts: torch.Tensor) -> torch.Tensor:
    """max |value| over the rows of batch j that go into the store (kept positions, cut at the
    plan's last row), a 0-dim float32 tensor on the activations' device: NaN if any is NaN."""
    ra, rb = plan.batch_rows(j)
    per_row = acts.reshape(-1, acts.shape[-1]).abs().amax(-1)  # one pass; selection on [rows], not [rows, d]
    mask = plan.batch_keep(j)
    if mask is not None:
        per_row = per_row[mask.to(per_row.device)]
    per_row = per_row[: max(rb - ra, 0)]
    if not len(per_row):
        return torch.zeros((), device=acts.device)
    return per_row.amax().float()


class StoreRangeCheck:
    """Raises a one-line SaeaseError when a batch's stored peak (`stored_peak`) is not finite or
    does not fit the storage dtype, naming the hook, the peak and a dtype that holds it."""

    def __init__(self, hook: str, dtype: str, overwrite_hint: bool = True):
        self.hook, self.dtype = hook, dtype
        self.limit = torch.finfo(_store.DTYPES[dtype]).max
        self.hint = " --overwrite" if overwrite_hint else ""

    def __call__(self, peak: torch.Tensor) -> None:
        value = float(peak)
        if value <= self.limit:
            return
        if not math.isfinite(value):
            what = "NaN" if math.isnan(value) else "inf"
            raise SaeaseError(f"hook {self.hook}: the model produced {what} activations (in float32, before "
                              f"any cast to {self.dtype}); no storage dtype holds them: check the model's "
                              "weights and --raw")
        fits = [d for d in ("bfloat16", "float32") if value <= torch.finfo(_store.DTYPES[d]).max]
        raise SaeaseError(f"hook {self.hook}: max |value| {value:.4g} exceeds {self.dtype}'s range "
                          f"(±{self.limit:.6g}); rerun with {' or '.join('--dtype ' + d for d in fits)}"
                          f"{self.hint} (bfloat16 keeps float32's range in half the space)")
