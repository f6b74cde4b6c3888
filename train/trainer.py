"""The training loop: read it top to bottom.

    store → shuffled batches → Dictionary.loss → Adam step → cosine-restart schedule
    at the end: metrics on the held-out rows, saved with the weights
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saease.dictionary import Dictionary, DictionaryConfig
from saease.errors import SaeaseError
from saease.metrics import evaluate
from saease.store import ActivationStore, holdout_mask, newest_store
from train.config import TrainConfig
from train.loader import ShuffledBatches


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SaeaseError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SaeaseError(f"--device {device!r}: CUDA is not available here; use --device cpu")
    return dev


def input_scale(store: ActivationStore, max_rows: int = 65536) -> float:
    """Factor that brings the mean activation norm to sqrt(d_in) (estimated on the first rows)."""
    x = store.read_all(max_rows=max_rows)
    return math.sqrt(store.d_in) / x.norm(dim=-1).mean().item()


def heldout_batches(store: ActivationStore, fraction: float, seed: int, batch_size: int = 8192):
    """(acts, labels) batches of the held-out rows, shard by shard, for `evaluate`."""
    test = holdout_mask(store.n_rows, fraction, seed)
    offsets = store.shard_offsets
    for i, shard in enumerate(store.iter_shards()):
        rows = test[offsets[i]:offsets[i + 1]] if fraction > 0 else torch.ones(len(shard.acts), dtype=torch.bool)
        acts = shard.acts[rows]
        labels = shard.columns["labels"][rows] if "labels" in shard.columns else None
        for start in range(0, len(acts), batch_size):
            yield acts[start:start + batch_size], None if labels is None else labels[start:start + batch_size]


def default_out(store: ActivationStore, cfg: TrainConfig) -> Path:
    return Path("dictionaries") / f"{store.path.name}-{cfg.kind}-{cfg.d_latent}"


def train(cfg: TrainConfig) -> tuple[Dictionary, dict]:
    store = ActivationStore(cfg.data if cfg.data is not None else newest_store())
    if store.n_rows == 0:
        raise SaeaseError(f"{store.path}: store has no rows; nothing to train on")
    for name in ("epochs", "batch_size", "d_latent"):
        if getattr(cfg, name) < 1:
            raise SaeaseError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a positive integer")
    if cfg.lr <= 0:
        raise SaeaseError(f"--lr {cfg.lr}: expected a positive learning rate")
    device = pick_device(cfg.device)
    out = Path(cfg.out) if cfg.out else default_out(store, cfg)
    torch.manual_seed(cfg.seed)

    dict_cfg = DictionaryConfig(
        kind=cfg.kind, d_in=store.d_in, d_latent=cfg.d_latent, encoder=cfg.encoder,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers, k=cfg.k,
        lambda1=cfg.lambda1, lambda2=cfg.lambda2, gamma=cfg.gamma, gamma_floor=cfg.gamma_floor,
        log_gamma_init=cfg.log_gamma_init,
        input_scale=input_scale(store) if cfg.normalize else 1.0,
        source={"store": str(store.path.resolve()), **store.source},
        training={**asdict(cfg), "holdout_seed": cfg.seed},
    )
    model = Dictionary(dict_cfg).to(device)
    batches = ShuffledBatches(store, cfg.batch_size, holdout=cfg.holdout, seed=cfg.seed,
                              buffer_shards=cfg.buffer_shards)
    if batches.n_train == 0:
        raise SaeaseError(f"{store.path}: no training rows left after holding out {cfg.holdout:.0%}")
    with torch.no_grad():  # start the decoder bias at the data mean
        first = next(iter(batches.epoch(0))).to(device)
        model.b_dec.copy_(model.scale_in(first).mean(0))

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.t0, T_mult=cfg.t_mult)
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    total_steps = cfg.epochs * batches.steps_per_epoch()
    bar = tqdm(total=total_steps, desc=f"train {cfg.kind}", unit="step", disable=not cfg.progress)
    started, step, terms = time.time(), 0, {}
    for epoch in range(cfg.epochs):
        for x in batches.epoch(epoch):
            x = x.to(device, non_blocking=True)
            terms = model.loss(x, generator=noise)
            if not torch.isfinite(terms["loss"]):
                raise SaeaseError(f"loss became {terms['loss'].item()} at step {step} (epoch {epoch}); "
                                  "lower --lr or raise --gamma-floor")
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % 20 == 0 or step == total_steps:
                bar.set_postfix(loss=f"{terms['loss'].item():.4g}", mse=f"{terms['mse'].item():.4g}")
    bar.close()

    model.eval()
    metrics = evaluate(model, heldout_batches(store, cfg.holdout, cfg.seed), progress=cfg.progress)
    metrics.update(steps=step, train_seconds=round(time.time() - started, 2),
                   final_loss=terms["loss"].item() if terms else None)
    model.cfg.metrics = metrics
    model.save(out)
    return model, {"out": str(out), "kind": cfg.kind, **metrics}
