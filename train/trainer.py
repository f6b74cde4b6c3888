"""The training loop: read it top to bottom.

    store → shuffled batches (read ahead) → loss gradients → [all-reduce] → Adam → cosine restarts
    every N steps: a checkpoint; at the end: metrics on the held-out rows, saved with the weights

`train(cfg)` returns the dictionary and the run's summary. Launched by `torchrun`, every
process runs it on its own slice of each batch; rank 0 writes, evaluates and reports (the
other processes return the same weights and a summary of None).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from saease.dictionary import Dictionary, DictionaryConfig
from saease.errors import SaeaseError
from saease.metrics import evaluate
from saease.store import ActivationStore, holdout_mask, newest_store
from saease.train import checkpoint
from saease.train.config import TrainConfig
from saease.train.devices import Processes, pick_device, share_optimal_gamma, start
from saease.train.loader import ShuffledBatches
from saease.train.monitor import Monitor
from saease.train.step import AutogradStep, FusedStep, fusable

__all__ = ["train", "pick_device", "heldout_batches"]


def train(cfg: TrainConfig) -> tuple[Dictionary, dict]:
    cfg = cfg.resolved()
    procs, device = start(cfg.device)
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        result = _train(cfg, procs, device)
        procs.barrier()  # every process is done with the group before any tears it down
        return result
    finally:
        torch.set_num_threads(threads)
        procs.stop()


def _train(cfg: TrainConfig, procs: Processes, device: torch.device) -> tuple[Dictionary, dict]:
    # ---- check everything before touching the output folder --------------------------------
    check_device_options(cfg, device)
    state = checkpoint.load(cfg.resume) if cfg.resume else None
    if state is not None and cfg.data is None:
        cfg = replace(cfg, data=state["store"]["path"])
    store = open_store(cfg.data)
    cfg = replace(cfg, data=str(store.path))
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
        scale = math.sqrt(store.d_in) / sample.norm(dim=-1).mean().item() if cfg.normalize else 1.0
        dict_cfg = DictionaryConfig(
            kind=cfg.kind, d_in=store.d_in, d_latent=cfg.d_latent, encoder=cfg.encoder,
            encoder_layers=cfg.encoder_layers, encoder_hidden=cfg.encoder_hidden,
            decoder_layers=cfg.decoder_layers, k=cfg.k,
            lambda1=cfg.lambda1, lambda2=cfg.lambda2, gamma=cfg.gamma, gamma_floor=cfg.gamma_floor,
            log_gamma_init=cfg.log_gamma_init, sigma_init=cfg.sigma_init, input_scale=scale,
            source={"store": str(store.path.resolve()), **store.source},
            training={**asdict(cfg), "holdout_seed": cfg.seed, "normalization": {
                "target_mean_norm": math.sqrt(store.d_in) if cfg.normalize else None,
                "store_mean_norm": sample.norm(dim=-1).mean().item(), "rows_sampled": len(sample)}})
    else:
        dict_cfg = DictionaryConfig(**state["dictionary_config"])
        dict_cfg.training = {**dict_cfg.training, **{k: v for k, v in asdict(cfg).items() if k not in checkpoint.FIXED}}
    model = Dictionary(dict_cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    flat_grad = gradient_views(params)  # one buffer, so processes all-reduce it in one call
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
    run_step = make_step(cfg, model, noise, procs, device)

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
                            total_steps=total_steps, store=store, wandb_id=monitor.wandb_id)
        last_saved = step

    stream = batches.batches(cfg.epochs, epoch, batch_index) if step < total_steps else iter(())
    try:
        for b in stream:
            x = b.x.to(device, non_blocking=True)
            terms, fired = run_step(x, full=monitor.due(step + 1))
            # the finiteness check travels with the gradients: every process sees the same verdict
            flat_grad[-1] = terms["mse"].detach()
            if procs.many:
                flat_grad.mul_(b.share)
                procs.sum_(flat_grad)
            if not math.isfinite(flat_grad[-1].item()):
                where = (f"the last good checkpoint (step {last_saved}) is kept in {out}; continue with "
                         f"--resume {out}" if last_saved is not None else "no checkpoint had been written")
                raise SaeaseError(f"the loss became {flat_grad[-1].item()} at step {step + 1} (epoch {b.epoch}); "
                                  f"{where}; lower --lr or raise --gamma-floor")
            optimizer.step()
            scheduler.step()
            step += 1
            epoch, batch_index = b.epoch, b.index + 1
            timer.tick(round(len(b.x) / b.share))
            monitor.update(step, terms, fired, x, scheduler.get_last_lr()[0])
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
        if hasattr(stream, "close"):
            stream.close()

    # ---- held-out metrics, saved with the weights --------------------------------------------
    monitor.bar.close()
    summary = None
    if procs.main:
        model.eval()
        metrics = evaluate(model, heldout_batches(store, cfg.holdout, cfg.seed), progress=cfg.progress)
        metrics.update(steps=step, train_seconds=round(train_seconds, 2), vectors_per_s=timer.rate(),
                       final_loss=monitor.last.get("loss"), step_kind="fused" if isinstance(run_step, FusedStep)
                       else "autograd", processes=procs.world_size)
        model.cfg.metrics = metrics
        model.save(out)
        monitor.close(metrics)
        summary = {"out": str(out), "kind": cfg.kind, **metrics}
    else:
        monitor.close()
    return model, summary


# ---- the pieces, in the order the loop uses them ----------------------------------------------

def check_device_options(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.precision == "bf16" and device.type != "cuda":
        raise SaeaseError("--precision bf16: needs CUDA; on CPU bf16 matmuls are ~250x slower than fp32, "
                          "so train in fp32 there")
    if cfg.compile and device.type != "cuda":
        raise SaeaseError("--compile: needs CUDA; on CPU the fused fp32 step is the fast path")


def open_store(data: str | None) -> ActivationStore:
    store = ActivationStore(data if data is not None else newest_store())
    if store.n_rows == 0:
        raise SaeaseError(f"{store.path}: store has no rows; nothing to train on")
    return store


def default_out(store: ActivationStore, cfg: TrainConfig) -> Path:
    return Path("dictionaries") / f"{store.path.name}-{cfg.kind}-{cfg.d_latent}"


def prepare_out(out: Path, *, resuming: bool, overwrite: bool) -> bool:
    """Make sure `out` can take the run's files; True if we created the folder."""
    if (out / checkpoint.INFO).exists() and not resuming and not overwrite:
        done = checkpoint.info(out)
        if not done.get("finished"):
            raise SaeaseError(f"{out}: holds an unfinished run (step {done.get('step')} of {done.get('total_steps')}); "
                              f"pass --resume {out} to continue it, or --overwrite to start again")
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SaeaseError(f"{out}: output folder is not writable ({err.strerror}); pass a writable --out") from None
    return not existed


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


def gradient_views(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Point every parameter's .grad into one flat buffer (plus one slot for the loss check)."""
    flat = torch.zeros(sum(p.numel() for p in params) + 1, device=params[0].device, dtype=params[0].dtype)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def make_step(cfg: TrainConfig, model: Dictionary, noise: torch.Generator, procs: Processes, device):
    if cfg.fused and fusable(model) and cfg.precision == "fp32" and not cfg.compile:
        return FusedStep(model, noise, sum_across=procs.sum_ if procs.many else None)
    share_optimal_gamma(model, procs)
    return AutogradStep(model, noise, bf16=cfg.precision == "bf16", compile=cfg.compile)


def heldout_batches(store: ActivationStore, fraction: float, seed: int, batch_size: int = 8192):
    """(acts, labels) batches of the held-out rows, shard by shard, for `evaluate`."""
    test = holdout_mask(store.n_rows, fraction, seed)
    offsets = store.shard_offsets
    for i, shard in enumerate(store.iter_shards()):
        rows = test[offsets[i]:offsets[i + 1]] if fraction > 0 else torch.ones(len(shard.acts), dtype=torch.bool)
        acts = shard.acts[rows]
        labels = shard.columns["labels"][rows] if "labels" in shard.columns else None
        for i0 in range(0, len(acts), batch_size):
            yield acts[i0:i0 + batch_size], None if labels is None else labels[i0:i0 + batch_size]
