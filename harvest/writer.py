"""Shard files, written by a background thread while the model runs the next batch.

A shard is `shard-{k:05d}.safetensors` with k its global index (rows [k*N, (k+1)*N)), so the
file name, like its content, does not depend on the run, the rank or the resume that wrote it.
Each file is written to a temporary name, fsynced and renamed (saease.store.atomic_write_bytes)
before `on_shard` lists it in a manifest, so a manifest never lists a partial shard.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import threading
import time
from pathlib import Path

import torch

from saease import store as _store
from saease.errors import SaeaseError

SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")
# Test hook: SIGKILL this process while it writes shard K (after half its bytes are on disk).
KILL_ENV = "SAEASE_HARVEST_KILL_AT_SHARD"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def shard_index(file: str) -> int | None:
    m = SHARD_RE.match(file)
    return int(m.group(1)) if m else None


def write_shard_file(folder: Path, k: int, acts: torch.Tensor, columns: dict[str, torch.Tensor]) -> dict:
    """Write shard k (the store's shard format, saease.store.shard_bytes); returns its
    manifest entry {file, rows, sha256}."""
    data = _store.shard_bytes(acts, _store.DTYPE_NAMES[acts.dtype], columns)
    name = shard_name(k)
    if os.environ.get(KILL_ENV) == str(k):
        _die_mid_write(folder / name, data)
    _store.atomic_write_bytes(folder / name, data)
    return {"file": name, "rows": int(len(acts)), "sha256": hashlib.sha256(data).hexdigest()}


def _die_mid_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


class ShardWriter:
    """Consumes batches of activations in batch order and writes this rank's shards.

    `put(j, acts, event, release, peak)`: `acts` [windows, pos, d] of batch j, already in the
    storage dtype on the CPU (possibly still arriving from the GPU: `event` is waited on first;
    `release()` is called once the rows have been copied out, to recycle a pinned buffer).
    `peak`: the batch's max |value| before the cast, handed to `check` (which raises to stop
    the harvest) before any of its rows is taken.
    """

    def __init__(self, plan, shards: list[int], folder: Path, d_in: int, dtype: torch.dtype,
                 on_shard, depth: int = 2, check=None):
        self.plan, self.folder, self.d_in, self.dtype = plan, Path(folder), d_in, dtype
        self.on_shard = on_shard
        self.check = check
        self.todo = sorted(shards)
        self.next = 0                        # index into todo of the first unfinished shard
        self.buffers: dict[int, torch.Tensor] = {}
        self.filled: dict[int, int] = {}
        self.error: BaseException | None = None
        self.bytes_written = 0
        self.write_seconds = 0.0
        self.shards_written = 0
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._work, name="saease-shard-writer", daemon=True)
        self.thread.start()

    def put(self, j: int, acts: torch.Tensor, event=None, release=None, peak=None) -> None:
        while True:  # never block forever on a dead writer
            if self.error is not None:
                if release:
                    release()
                return
            try:
                self.queue.put((j, acts, event, release, peak), timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for every queued batch to be written; re-raise the writer's error."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.next != len(self.todo):
            missing = self.todo[self.next:]
            raise SaeaseError(f"internal error: shards {missing[:5]} did not receive all their rows")

    def abort(self) -> None:
        """Stop after the batches already queued (the caller is failing anyway); no error raised."""
        if self.error is None:
            self.error = SaeaseError("harvest aborted")
        self.queue.put(None)
        self.thread.join()

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            j, acts, event, release, peak = item
            try:
                if self.error is None:
                    if event is not None:
                        event.synchronize()
                    if peak is not None and self.check is not None:
                        self.check(peak)
                    self._take(j, acts)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                self.error = _as_saease_error(err, self.folder)
            finally:
                if release:
                    release()

    def _take(self, j: int, acts: torch.Tensor) -> None:
        plan = self.plan
        ra, rb = plan.batch_rows(j)
        if rb <= ra:
            return
        flat = acts.reshape(-1, self.d_in)
        mask = plan.batch_keep(j)
        if mask is not None:
            flat = flat[mask]
        rows = flat[: rb - ra]
        i = self.next
        while i < len(self.todo):
            k = self.todo[i]
            sa, sb = plan.shard_rows_range(k)
            if sa >= rb:
                break
            lo, hi = max(sa, ra), min(sb, rb)
            if lo < hi:
                buf = self.buffers.get(k)
                if buf is None:
                    buf = self.buffers[k] = torch.empty(sb - sa, self.d_in, dtype=self.dtype)
                    self.filled[k] = 0
                buf[lo - sa: hi - sa] = rows[lo - ra: hi - ra]
                self.filled[k] += hi - lo
                if self.filled[k] == sb - sa:
                    self._write(k)
            i += 1
        while self.next < len(self.todo) and self.filled.get(self.todo[self.next]) == -1:
            self.next += 1

    def _write(self, k: int) -> None:
        acts = self.buffers.pop(k)
        sa, sb = self.plan.shard_rows_range(k)
        t0 = time.perf_counter()
        entry = write_shard_file(self.folder, k, acts, self.plan.columns(sa, sb))
        self.write_seconds += time.perf_counter() - t0
        self.bytes_written += (self.folder / entry["file"]).stat().st_size
        self.shards_written += 1
        self.filled[k] = -1  # done
        self.on_shard(k, entry)


def _as_saease_error(err: BaseException, folder: Path) -> BaseException:
    if isinstance(err, SaeaseError):
        return err
    if isinstance(err, OSError):
        return SaeaseError(f"{folder}: writing a shard failed ({err.strerror or err}); only complete "
                           "shards are listed in the manifest; free space or fix the folder and rerun "
                           "the same command to resume")
    return err
