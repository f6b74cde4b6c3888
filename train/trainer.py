"""The training loop: read it top to bottom.

    store → shuffled batches (read ahead) → the kind's loss → backward ([DDP all-reduce]) →
    decoder-norm handling → Adam → cosine restarts
    every N steps, and on SIGINT/SIGTERM: a checkpoint; at the end: metrics on the held-out
    rows, saved with the weights

`train(cfg)` returns the dictionary and the run's summary. Launched by `torchrun`, every
process runs it on its own slice of each batch, the dictionary wrapped in PyTorch's
DistributedDataParallel; rank 0 writes, evaluates and reports (the other processes return the
same weights and a summary of None).
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from saease.dictionary import Dictionary, config_from_dict
from saease.errors import SaeaseError
from saease.metrics import evaluate
from saease.store import ActivationStore, newest_store
from saease.train import checkpoint
from saease.train.config import TrainConfig
from saease.train.devices import Processes, keep_freed_memory, pick_device, start, torch_threads
from saease.train.loader import ShuffledBatches
from saease.train.monitor import Monitor

__all__ = ["train", "pick_device", "heldout_batches", "Interrupted"]


class Interrupted(SaeaseError):
    """SIGINT or SIGTERM stopped a run after it wrote a checkpoint (the CLI exits 130)."""

    exit_code = 130
    label = "stopped"  # what the CLI prints before the message, instead of "error"


def train(cfg: TrainConfig) -> tuple[Dictionary, dict]:
    cfg = cfg.checked()
    procs, device = start(cfg.device)
    try:
        with torch_threads(cfg.threads):
            result = _train(cfg, procs, device)
        procs.barrier()  # every process is done with the group before any tears it down
        return result
    finally:
        procs.stop()


def _train(cfg: TrainConfig, procs: Processes, device: torch.device) -> tuple[Dictionary, dict]:
    # ---- check everything before touching the output folder --------------------------------
    check_device_options(cfg, device)
    if device.type == "cpu":
        keep_freed_memory()
    state = checkpoint.load(cfg.resume) if cfg.resume else None
    if state is not None and cfg.data is None:
        cfg = replace(cfg, data=state["store"]["path"])
    store = open_store(cfg.data)
    cfg = replace(cfg, data=str(store.path))
    if cfg.expansion_factor:
        cfg = cfg.with_(d_latent=cfg.expansion_factor * store.d_in)
    if state is not None:
        checkpoint.check_compatible(state, cfg, store, cfg.resume)
    if cfg.batch_size < procs.world_size:
        raise SaeaseError(f"--batch-size {cfg.batch_size}: smaller than the {procs.world_size} processes")
    out = Path(cfg.out) if cfg.out else checkpoint.locate(cfg.resume) if state else default_out(store, cfg)
    cfg = replace(cfg, out=str(out))
    batches = ShuffledBatches(store, cfg.batch_size, holdout=cfg.holdout, seed=cfg.seed,
                              buffer_shards=cfg.buffer_shards, rank=procs.rank, world_size=procs.world_size,
                              prefetch=cfg.prefetch, dtype=torch.float32 if device.type == "cpu" else None,
                              pin_memory=device.type == "cuda")
    if batches.n_train == 0:
        raise SaeaseError(f"{store.path}: no training rows left after holding out {cfg.holdout:.0%}; "
                          "lower --holdout or use a bigger store")
    steps_per_epoch = batches.steps_per_epoch()
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    # What a kind's schedule (VAEase's KL warm-up) counts progress against: the epochs planned when
    # the run started. --max-steps only cuts the run short, and a resumed run keeps its horizon, so
    # extending --epochs does not replay a warm-up.
    horizon = state.get("horizon", cfg.epochs * steps_per_epoch) if state else cfg.epochs * steps_per_epoch
    created, error = False, None
    if procs.main:
        try:
            created = prepare_out(out, resuming=state is not None, overwrite=cfg.overwrite)
        except SaeaseError as err:
            error = str(err)
    error = procs.broadcast(error)  # the other processes stop with rank 0
    if error:
        raise SaeaseError(error)

    # ---- the dictionary, its optimiser and schedule ------------------------------------------
    torch.manual_seed(cfg.seed)
    if state is None:
        sample = batches.sample()
        store_norm = sample.norm(dim=-1).mean().item()
        if cfg.normalize and not store_norm > 0:
            raise SaeaseError(f"{store.path}: the sampled vectors are all zero; nothing to normalize "
                              "(pass --no-normalize to train on them anyway)")
        scale = math.sqrt(store.d_in) / store_norm if cfg.normalize else 1.0
        dict_cfg = replace(cfg.dictionary, d_in=store.d_in, input_scale=scale,
                           source={"store": str(store.path.resolve()), **store.source},
                           training={**cfg.flat_values(), "holdout_seed": cfg.seed, "split_key": store.split_key,
                                     "normalization": {
                               "target_mean_norm": math.sqrt(store.d_in) if cfg.normalize else None,
                               "store_mean_norm": store_norm, "rows_sampled": len(sample)}})
    else:
        dict_cfg = config_from_dict(state["dictionary_config"], f"{cfg.resume} (checkpoint)")
        dict_cfg.training = {**dict_cfg.training, **cfg.flat_values()}
    model = Dictionary.build(dict_cfg).to(device).train()
    if state is None and model.follows_schedule and total_steps < horizon / 2 and procs.main:
        warnings.warn(f"--max-steps {cfg.max_steps} ends the run at {total_steps / horizon:.0%} of the "
                      f"{horizon} steps that --epochs {cfg.epochs} plans, and {model.kind}'s schedule (its KL "
                      f"warm-up) counts against the plan; to train for {total_steps} steps, lower --epochs",
                      stacklevel=2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type in ("cpu", "cuda") or None)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.t0, T_mult=cfg.t_mult)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003 * procs.rank)
    step, epoch, batch_index = 0, 0, 0
    if state is None:
        with torch.no_grad():  # start the decoder bias at the data mean
            model.b_dec.copy_(model.scale_in(sample.to(device)).mean(0))
        del sample
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if len(state["noise"]) == procs.world_size:
            noise.set_state(state["noise"][procs.rank])
        step, epoch, batch_index = state["step"], state["epoch"], state["batch"]
    loss_of = make_loss(cfg, model, procs, device)

# ---- the loop --------------------------------------------------------------------------
    monitor = Monitor(cfg, model, total_steps=total_steps, step=step, main=procs.main,
                      wandb_id=state.get("wandb_id") if state else None)
    started, last_saved = time.perf_counter(), step if state else None
    timer = Throughput()

    def save_checkpoint(epoch: int, batch_index: int) -> None:
        nonlocal last_saved
        states = procs.gather(noise.get_state())
        if procs.main:
            checkpoint.save(out, train_cfg=cfg, model=model, optimizer=optimizer, scheduler=scheduler,
                            noise_states=states, step=step, epoch=epoch, batch=batch_index,
                            total_steps=total_steps, horizon=horizon, store=store, wandb_id=monitor.wandb_id)
        last_saved = step

    stop = StopRequest()  # SIGINT / SIGTERM: finish the step, write a checkpoint, say how to resume
    stream = batches.batches(cfg.epochs, epoch, batch_index) if step < total_steps else iter(())
    try:
        for b in stream:
            x = b.x.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=False)
            model.set_progress(step, horizon)
            terms = loss_of(x, noise)
            fired = terms.pop("fired", None)
            # each process's loss is the mean over its slice; DDP averages gradients over the
            # processes, so weighting by share × processes gives the global batch's mean
            (terms["loss"] * (b.share * procs.world_size)).backward()
            # one small all-reduce carries the finiteness check and any stop request
            verdict = procs.sum_(torch.stack([terms["mse"].detach().float() * b.share,
                                              torch.tensor(float(stop.requested), device=device)]))
            loss_check, stop_asked = verdict.tolist()  # one host sync a step
            if not math.isfinite(loss_check):
                where = (f"the last good checkpoint (step {last_saved}) is kept in {out}; continue with "
                         f"--resume {out}" if last_saved is not None else "no checkpoint had been written")
                raise SaeaseError(f"the loss became {loss_check} at step {step + 1} (epoch {b.epoch}); "
                                  f"{where}; lower --lr or raise --gamma-floor")
            model.after_backward()
            optimizer.step()
            model.after_step()
            scheduler.step()
            step += 1
            epoch, batch_index = b.epoch, b.index + 1
            timer.tick(round(len(b.x) / b.share))
            monitor.update(step, {k: v.detach().float() for k, v in terms.items() if v is not None},
                           fired, x, scheduler.get_last_lr()[0])
            if stop_asked > 0 and step < total_steps:
                save_checkpoint(epoch, batch_index)
                if not procs.main:  # under torchrun only rank 0 prints the resume command
                    raise Interrupted(f"rank {procs.rank} stopped with rank 0 at step {step}")
                raise Interrupted(f"{stop.name or 'a signal on another rank'} at step {step} of {total_steps}; "
                                  f"a checkpoint is written in {out}; continue with: "
                                  f"saease train --resume {shlex.quote(str(out))}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint(epoch, batch_index)
            if step >= total_steps:
                break
        train_seconds = time.perf_counter() - started
        save_checkpoint(epoch, batch_index)
    except BaseException:
        monitor.close()
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()  # nothing was written: leave no empty folder behind
        raise
    finally:
        stop.restore()
        if hasattr(stream, "close"):
            stream.close()

    # ---- held-out metrics, saved with the weights --------------------------------------------
    monitor.bar.close()
    summary = None
    if procs.main:
        model.eval()
        metrics = evaluate(model, heldout_batches(store, cfg.holdout, cfg.seed), progress=cfg.progress)
        metrics.update(steps=step, train_seconds=round(train_seconds, 2), vectors_per_s=timer.rate(),
                       final_loss=monitor.last.get("loss"), processes=procs.world_size)
        model.cfg.metrics = metrics
        model.save(out)
        monitor.close(metrics)
        summary = {"out": str(out), "store": str(store.path), "kind": cfg.kind, **metrics}
    else:
        monitor.close()
    return model, summary


# ---- the pieces, in the order the loop uses them ----------------------------------------------

def check_device_options(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.precision == "bf16" and device.type != "cuda":
        raise SaeaseError("--precision bf16: needs CUDA; on CPU bf16 matmuls are ~250x slower than fp32, "
                          "so train in fp32 there")
    if cfg.compile and device.type != "cuda":
        raise SaeaseError("--compile: needs CUDA; on CPU train without it")


def open_store(data: str | None) -> ActivationStore:
    store = ActivationStore(data if data is not None else newest_store())
    if store.n_rows == 0:
        raise SaeaseError(f"{store.path}: store has no rows; nothing to train on")
    return store


def default_out(store: ActivationStore, cfg: TrainConfig) -> Path:
    """dictionaries/<model>-<hook>-<kind>-<κ> for a harvested store (its model's real name and
    hook, never a folder's name alone); dictionaries/<store folder>-<kind>-<κ> for one without."""
    return Path("dictionaries") / store.default_name(cfg.kind, cfg.dictionary.d_latent)


def prepare_out(out: Path, *, resuming: bool, overwrite: bool) -> bool:
    """Make sure `out` can take the run's files; True if we created the folder. A finished
    dictionary or an unfinished run there is kept unless --overwrite (or --resume)."""
    if (out / checkpoint.INFO).exists() and not resuming and not overwrite:
        done = checkpoint.info(out)
        if not done.get("finished"):
            raise SaeaseError(f"{out}: holds an unfinished run (step {done.get('step')} of {done.get('total_steps')}); "
                              f"pass --resume {out} to continue it, or --overwrite to start again")
    if (out / "config.json").exists() and not resuming and not overwrite:
        raise SaeaseError(f"{out}: holds a finished dictionary; pass another --out, or --overwrite to replace it")
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SaeaseError(f"{out}: output folder is not writable ({err.strerror}); pass a writable --out") from None
    return not existed


class StopRequest:
    """Turns SIGINT and SIGTERM into a request the loop honours after the current step (the
    previous handlers come back with `restore`). A second signal stops at once."""

    def __init__(self):
        self.requested, self.name, self.previous = False, None, {}
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        if self.requested:  # asked twice: stop now
            self.restore()
            raise KeyboardInterrupt
        self.requested, self.name = True, signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class Throughput:
    """Vectors per second over every step but the first (which pays for warming up)."""

    def __init__(self):
        self.start, self.vectors, self.now = None, 0, None

    def tick(self, vectors: int) -> None:
        self.now = time.perf_counter()
        if self.start is None:
            self.start = self.now
        else:
            self.vectors += vectors

    def rate(self) -> float | None:
        return self.vectors / (self.now - self.start) if self.vectors else None


def make_loss(cfg: TrainConfig, model: Dictionary, procs: Processes, device: torch.device):
    """loss_of(x, generator) -> the kind's loss terms: autograd on every device, under bf16
    autocast and torch.compile when asked (CUDA), through DistributedDataParallel under torchrun."""
    module: torch.nn.Module = LossOf(model)
    if procs.many:
        model.all_reduce = procs.sum_  # γ*, dead latents and thresholds over the global batch
        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        module = torch.compile(module)

    def loss_of(x, generator):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            return module(x, generator)

    return loss_of


class LossOf(torch.nn.Module):
    """The dictionary's training loss as a module's forward (what DDP and torch.compile wrap)."""

    def __init__(self, dictionary: Dictionary):
        super().__init__()
        self.dictionary = dictionary

    def forward(self, x, generator=None):
        return self.dictionary.loss(x, generator)


def heldout_batches(store: ActivationStore, fraction: float, seed: int, batch_size: int = 8192):
    """(acts, labels) batches of the held-out rows, shard by shard, for `evaluate`."""
    test = store.holdout_mask(fraction, seed)
    offsets = store.shard_offsets
    for i, shard in enumerate(store.iter_shards()):
        rows = test[offsets[i]:offsets[i + 1]] if fraction > 0 else torch.ones(len(shard.acts), dtype=torch.bool)
        acts = shard.acts[rows]
        labels = shard.columns["labels"][rows] if "labels" in shard.columns else None
        for i0 in range(0, len(acts), batch_size):
            yield acts[i0:i0 + batch_size], None if labels is None else labels[i0:i0 + batch_size]
