"""What a run reports while it trains: the progress bar and, with `--wandb`, Weights & Biases.

Every `log_every` steps: the loss and its terms, RE (‖x − x̂‖² per vector, in the store's
units), a cheap AD estimate and L0 (on up to 256 vectors of the batch, deterministic codes),
the dead fraction (latents whose code was zero for every vector since the last log), γ
(VAE kinds) and the learning rate. W&B keys are `train/<name>`; the held-out metrics at the
end are `eval/<name>` in the run's summary (what sweeps optimise).
"""

from __future__ import annotations

import os
import torch
from tqdm.auto import tqdm

from saease.dictionary import Dictionary
from saease.errors import SaeaseError
from saease.metrics import active_count

AD_ROWS = 256


class Monitor:
    def __init__(self, cfg, model: Dictionary, *, total_steps: int, step: int, main: bool,
                 wandb_id: str | None = None):
        self.cfg, self.model, self.main = cfg, model, main
        self.fired: torch.Tensor | None = None
        self.last: dict = {}
        self.bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.kind}", unit="step",
                        disable=not (cfg.progress and main), dynamic_ncols=True)
        self.run = start_wandb(cfg, model, wandb_id) if cfg.wandb and main else None

    @property
    def wandb_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def due(self, step: int) -> bool:
        """Whether step `step` (counted from 1) logs; the step then computes every loss term."""
        return step % self.cfg.log_every == 0 or step == self.bar.total

    def update(self, step: int, terms: dict, fired: torch.Tensor | None, x: torch.Tensor, lr: float) -> None:
        if fired is not None:
            self.fired = fired.clone() if self.fired is None else self.fired.logical_or_(fired)
        self.bar.update(1)
        if not self.due(step):
            return
        metrics = {k: v.item() for k, v in terms.items() if v is not None}
        scale = self.model.cfg.input_scale
        metrics["re"] = metrics["mse"] / scale ** 2
        metrics.update(self.codes_metrics(x, fired is None))
        metrics["lr"] = lr
        self.fired, self.last = None, metrics
        self.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "re", "ad", "l0", "dead") if k in metrics})
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=step)

    @torch.no_grad()
    def codes_metrics(self, x: torch.Tensor, need_fired: bool) -> dict:
        m = self.model
        rows = x if need_fired else x[:AD_ROWS]
        enc = m.encoder_output(m.scale_in(rows))
        codes = m.code_from(enc)
        if need_fired:  # the step did not report firing: this batch is the window
            self.fired = (codes != 0).any(0)
        ad = active_count(m.activity(enc)[:AD_ROWS], m.ad_from_variance).float().mean().item()
        codes = codes[:AD_ROWS]
        return {"ad": ad, "l0": (codes != 0).sum(-1).float().mean().item(),
                "dead": 1 - self.fired.float().mean().item()}

    def close(self, final: dict | None = None) -> None:
        self.bar.close()
        if self.run is not None:
            if final:
                self.run.summary.update({f"eval/{k}": v for k, v in final.items()
                                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
            self.run.finish()
            self.run = None


def start_wandb(cfg, model: Dictionary, wandb_id: str | None):
    """The W&B run to log to: the one already started (by `wandb agent` or a local sweep), or
    a new one (resuming `wandb_id` after a checkpoint)."""
    try:
        import wandb
    except ImportError:
        raise SaeaseError("--wandb: the wandb package is not installed; pip install wandb") from None
    config = {**cfg.flat_values(), "input_scale": model.cfg.input_scale, "d_in": model.cfg.d_in}
    if wandb.run is not None:
        wandb.run.config.update(config, allow_val_change=True)
        return wandb.run
    try:
        return wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=cfg.wandb_run_name,
                          config=config, id=wandb_id, resume="allow" if wandb_id else None,
                          mode=os.environ.get("WANDB_MODE") or None)
    except (wandb.errors.Error, OSError) as err:  # login, network and service problems
        raise SaeaseError(f"--wandb: could not start a W&B run ({str(err).splitlines()[0]}); "
                          "set WANDB_MODE=offline to log without a network") from None
