"""What the variational kinds (VAE, VAEase) share: a spread head σ² beside the mean head, the
Gaussian decoder variance γ, the KL to the N(0, I) prior (docs/kinds.md).

    σ² = sigmoid(h W_sig + b_sig)   (clamped at MIN_VAR),   z = μ + σ ⊙ ε,   ε ~ N(0, I)
    loss = ‖x − x̂‖²/(2γ) + d/2 log(2πγ) + KL(N(μ, σ²) ‖ N(0, I))

γ is the batch's optimal γ* = mean ‖x − x̂‖²/d (detached, floored) by default, or learned.
Each kind says how the decoder sees the sample (`gate`): the VAE decodes z, VAEase (1 − σ) ⊙ z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saease.dictionary import Dictionary, DictionaryConfig, EncoderOutput, flag, knob, sq_err
from saease.errors import SaeaseError

MIN_VAR = 1e-7  # σ² is clamped at this, as in the authors' code


@dataclass
class VariationalConfig(DictionaryConfig):
    encoder: Literal["text", "authors", "residual"] = knob(
        "text", "text: ReLU mean head; authors: Linear(d,2κ)+Swish split; residual: residual MLP trunk")
    gamma: Literal["optimal", "learned"] = knob("optimal", "decoder variance: optimal (batch γ*) or learned")
    gamma_floor: float = knob(1e-6, "lower bound on γ, in normalized units")
    log_gamma_init: float = knob(0.0, "initial log γ (learned mode)")
    sigma_init: float = knob(0.5, "the σ² every latent starts at (b_sig = logit(sigma_init))")
    kl_warmup: float = knob(0.02, "fraction of training over which the KL's weight ramps from 0 to 1 "
                            "(0: full weight from the first step)")
    kl_peak: float = knob(1.0, "the KL's weight β held right after the warm-up, before it returns to 1 "
                          "(1: no overshoot)")
    kl_peak_len: float = knob(0.05, "fraction of training β stays at kl_peak, and again to return to 1")
    reopen_every: float = knob(0.0, "each time training crosses a multiple of this fraction, re-open "
                               "the latents shut (σ² > 0.5) on every training row for `reopen_after` "
                               "rows (0: never)")
    reopen_after: int = knob(0, "training rows a latent must have been shut on, every row, before it is "
                             "re-opened (0: all the rows since the previous multiple of reopen_every)")
    reopen_until: float = knob(0.5, "fraction of training after which latents are no longer re-opened")

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.sigma_init < 1:
            raise SaeaseError(f"--sigma-init {self.sigma_init}: expected the initial σ², in (0, 1)")
        if self.gamma_floor <= 0:
            raise SaeaseError(f"--gamma-floor {self.gamma_floor}: expected a value > 0")
        if not 0 <= self.kl_warmup <= 1:
            raise SaeaseError(f"--kl-warmup {self.kl_warmup}: expected a fraction of training in [0, 1]")
        if self.kl_peak <= 0:
            raise SaeaseError(f"--kl-peak {self.kl_peak}: expected a weight > 0")
        if self.reopen_after < 0:
            raise SaeaseError(f"--reopen-after {self.reopen_after}: expected a number of training rows ≥ 0")
        if not 0 < self.kl_peak_len <= 1:
            raise SaeaseError(f"--kl-peak-len {self.kl_peak_len}: expected a fraction of training in (0, 1]")
        for name in ("reopen_every", "reopen_until"):
            if not 0 <= getattr(self, name) <= 1:
                raise SaeaseError(f"--{flag(name)} {getattr(self, name)}: expected a fraction of training in [0, 1]")

    @property
    def deep_encoder(self) -> bool:
        return super().deep_encoder or self.encoder == "authors"


class GaussianSample(torch.autograd.Function):
    """The elementwise core of the variational kinds' loss, fused (one-layer text encoder):

        μ = ReLU(pre), σ² = max(sigmoid(s), MIN_VAR), z = g(σ) ⊙ (μ + σ ⊙ ε),  Σ KL(N(μ, σ²) ‖ N(0, I))

    with g(σ) = 1 − σ (VAEase) or 1 (VAE). Returns (z, the KL summed over the batch). Autograd
    through the same expression allocates a batch × κ tensor for every intermediate and every
    gradient (~35 passes over memory on a wide step); this keeps three (μ, σ, ε) for the backward,
    which works in place in two more, with float masks (PyTorch's CPU kernels that mix bool and
    float tensors run several times slower). `tests/test_kinds.py` checks its gradients against
    autograd's."""

    @staticmethod
    def forward(ctx, pre: Tensor, s: Tensor, eps: Tensor, gated: bool):
        mu = torch.relu(pre)
        std = torch.sigmoid(s).clamp_min_(MIN_VAR).sqrt_()
        z = torch.addcmul(mu, std, eps)  # μ + σε
        if gated:
            z.addcmul_(std, z, value=-1)  # (1 − σ)(μ + σε)
        # Σ ½(μ² + σ² − log σ² − 1), the squares as dot products (no batch × κ temporaries)
        flat_mu, flat_std = mu.view(-1), std.view(-1)
        kl = 0.5 * (flat_mu.dot(flat_mu) + flat_std.dot(flat_std) - 2 * torch.log(std).sum() - mu.numel())
        ctx.save_for_backward(mu, std, eps)
        ctx.gated = gated
        return z, kl

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_kl: Tensor):
        mu, std, eps = ctx.saved_tensors
        beta = float(grad_kl)
        # ∂/∂σ: grad_z ⊙ (ε(1 − 2σ) − μ) for VAEase (grad_z ⊙ ε for the VAE), + KL's β(σ − 1/σ)
        g_std = torch.addcmul(eps, std, eps, value=-2).sub_(mu) if ctx.gated else eps.clone()
        scratch = std.reciprocal()
        g_std.mul_(grad_z).add_(std, alpha=beta).sub_(scratch, alpha=beta)
        # σ = sqrt(sigmoid(s)): dσ/ds = σ(1 − σ²)/2, zero where σ² was clamped at MIN_VAR
        torch.mul(std, std, out=scratch).sub_(1).mul_(std)  # −σ(1 − σ²)
        g_s = g_std.mul_(scratch).mul_(-0.5)
        if std.min() <= math.sqrt(MIN_VAR):
            g_s.masked_fill_(std <= math.sqrt(MIN_VAR), 0)
        # ∂/∂μ: grad_z ⊙ (1 − σ) (VAEase) or grad_z, + KL's βμ, through the ReLU
        g_pre = torch.addcmul(grad_z, grad_z, std, value=-1, out=scratch) if ctx.gated else scratch.copy_(grad_z)
        g_pre.add_(mu, alpha=beta).mul_(torch.sign(mu))  # 1{μ > 0}, a float mask (μ ≥ 0)
        return g_pre, g_s, None, None


def spread(s_pre: Tensor) -> Tensor:
    """σ² from the spread head's pre-activation: sigmoid, clamped at MIN_VAR."""
    return torch.sigmoid(s_pre).clamp_min(MIN_VAR)


def kl_divergence(mu: Tensor, var: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per sample: ½ Σ_j (μ² + σ² − log σ² − 1)."""
    return 0.5 * (mu.pow(2) + var - var.log() - 1).sum(-1)


def gaussian_nll(sq: Tensor, gamma: Tensor, d: int) -> Tensor:
    """−log N(x | x̂, γI) per sample, from the summed squared error ‖x − x̂‖²."""
    return sq / (2 * gamma) + 0.5 * d * torch.log(2 * math.pi * gamma)


class VariationalDictionary(Dictionary):
    Config = VariationalConfig
    ad_from_variance = True
    supports_mlp_decoder = True
    follows_schedule = True  # the KL's warm-up (and the option's overshoot and re-opening)

    def __init__(self, cfg):
        super().__init__(cfg)
        kappa = cfg.d_latent
        if cfg.encoder == "authors":
            # Linear(d, 2κ) + Swish, split into a mean half and a pre-spread half; Linear(κ, κ) spread.
            self.W_enc = nn.Parameter(torch.empty(self.d_head_in, 2 * kappa))
            self.b_enc = nn.Parameter(torch.zeros(2 * kappa))
            nn.init.kaiming_uniform_(self.W_enc.T, a=math.sqrt(5))
            self.W_sig = nn.Parameter(torch.empty(kappa, kappa))
        else:
            self.W_sig = nn.Parameter(torch.empty(self.d_head_in, kappa))
        nn.init.normal_(self.W_sig, std=0.01 / math.sqrt(self.W_sig.shape[0]))
        self.b_sig = nn.Parameter(torch.full((kappa,), math.log(cfg.sigma_init / (1 - cfg.sigma_init))))
        self.log_gamma = nn.Parameter(torch.tensor(float(cfg.log_gamma_init)), requires_grad=cfg.gamma == "learned")
        # training rows since each latent was last open (σ² ≤ 0.5 on some row), and rows since the
        # last re-opening check: saved, so a resumed run re-opens what an uninterrupted one would
        self.register_buffer("rows_since_open", torch.zeros(kappa, dtype=torch.long))
        self.register_buffer("rows_since_check", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # dictionaries and checkpoints written before the re-opening counters: start them at 0
        for name in ("rows_since_open", "rows_since_check"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- encoding -------------------------------------------------------------------------

    def encoder_output(self, x_scaled):
        """`pre`: the mean head's pre-activation; `var`: σ²."""
        h = self.trunk(x_scaled)
        kappa = self.cfg.d_latent
        if self.cfg.encoder == "authors":
            h = F.silu(h @ self.W_enc + self.b_enc)
            pre, s = h[..., :kappa], h[..., kappa:] @ self.W_sig + self.b_sig
        else:
            pre, s = h @ self.W_enc + self.b_enc, h @ self.W_sig + self.b_sig
        return EncoderOutput(pre=pre, var=spread(s))

    def mean(self, enc: EncoderOutput) -> Tensor:
        """μ: ReLU of the mean head for one-layer encoders; deep encoders' μ is unconstrained."""
        return enc.pre if self.cfg.deep_encoder else F.relu(enc.pre)

    # Whether the decoder sees (1 − σ) ⊙ z (VAEase) rather than z.
    gate_is_one_minus_sigma = False

    @classmethod
    def gate(cls, var: Tensor) -> Tensor | None:
        """What multiplies the latent before decoding, from σ² (None: nothing)."""
        return 1 - var.sqrt() if cls.gate_is_one_minus_sigma else None

    @classmethod
    def inference_code(cls, mu: Tensor, var: Tensor, exact: bool = False) -> Tensor:
        """The deterministic code from μ and σ²: the one definition of the kind's inference
        code, which saease.saelens_sae's SAELens classes call too. `exact`: zero the latents
        outside each input's active set (the two-means split of log σ² that AD counts)."""
        gate = cls.gate(var)
        code = mu if gate is None else gate * mu
        if exact:
            from saease.metrics import active_mask

            log_var = var.log()
            code = code * active_mask(log_var.reshape(-1, log_var.shape[-1]), True).view_as(code)
        return code

    @property
    def exact_code(self) -> bool:
        """Whether `encode` zeroes the inactive latents (VAEase's `--code exact`)."""
        return False

    def code_from(self, enc):
        return self.inference_code(self.mean(enc), enc.var, exact=self.exact_code)

    def activity(self, enc):
        return enc.var.log()  # small = active

    def usage(self, enc, codes):
        return 1 - enc.var.sqrt()  # σ → 1 marks a latent switched off for that input

    def saelens_export(self):
        """Architecture `saease-<kind>` (saease.saelens_sae's SAELens classes): both heads and
        the decoder in the store's units, as for a ReLU SAE."""
        if not self.linear:
            raise SaeaseError(f"a {self.kind} dictionary exports to SAELens only with a one-layer "
                              f"text encoder and a linear decoder")
        s = float(self.cfg.input_scale)
        return {"architecture": f"saease-{self.kind}"}, {
            "W_enc": self.W_enc * s, "b_enc": self.b_enc, "W_sig": self.W_sig * s, "b_sig": self.b_sig,
            "W_dec": self.W_dec / s, "b_dec": self.b_dec / s}

    # ---- training -------------------------------------------------------------------------

    def kl_weight(self) -> Tensor:
        """β of the KL term: min(1, progress / kl_warmup), a linear warm-up over the first
        `kl_warmup` of training, times `kl_peak` for the next `kl_peak_len`, which then returns
        linearly to 1 over as long (VAEase: 1.5; the overshoot prunes latents shared between
        subspaces, `after_step` re-opens what it pruned too far; docs/vaease.md). Without it, on normalized inputs, both the NLL and the KL push
        every gate shut (σ² → 1) within the first tens of steps, before the mean head and the
        decoder carry any signal, and a shut gate gets almost no gradient back (docs/kinds.md)."""
        c, p = self.cfg, self.progress
        ramp = torch.ones((), device=p.device) if c.kl_warmup == 0 else (p / c.kl_warmup).clamp(0, 1)
        if c.kl_peak == 1:
            return ramp
        back = ((p - c.kl_warmup - c.kl_peak_len) / c.kl_peak_len).clamp(0, 1)
        return ramp * (c.kl_peak + (1 - c.kl_peak) * back)

    @torch.no_grad()
    def after_step(self) -> None:
        """Re-open long-shut latents each time training crosses a multiple of `reopen_every`, up
        to `reopen_until`: a latent shut (σ² > 0.5) on every training row of every process for
        `reopen_after` rows — by default every row since the previous crossing, counted in `loss`
        — restarts as at initialisation: fresh head columns, σ² = sigma_init, its decoder row
        along the residual of one of the last batch's worst-reconstructed inputs, as SAE
        dead-latent resampling does. A shut gate gets almost no gradient back, so without this a
        direction the KL's overshoot (`kl_peak`) pruned would stay lost; a latent open on a
        single row of the interval (a rare feature's) is left alone (docs/vaease.md)."""
        super().after_step()
        c = self.cfg
        x, self._last_x = getattr(self, "_last_x", None), None
        if (c.reopen_every <= 0 or x is None or self.progress_span[0] >= c.reopen_until
                or not self.crossed(c.reopen_every)):
            return
        threshold = c.reopen_after or int(self.rows_since_check)
        self.rows_since_check.zero_()
        shut = (self.rows_since_open >= max(threshold, 1)).nonzero().flatten()
        if len(shut) == 0:
            return
        self.rows_since_open[shut] = 0
        enc = self.encoder_output(x)
        resid = x - self.decode_scaled(self.code_from(enc))
        worst = resid.pow(2).sum(-1).topk(min(len(shut), len(x))).indices
        worst = worst[torch.arange(len(shut), device=x.device) % len(worst)]  # as many as shut latents
        rows = self.sum_(resid[worst])  # the same on every process
        rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = torch.ones(c.d_latent, dtype=torch.bool, device=x.device)
        alive[shut] = False
        norm = self.W_dec[alive].norm(dim=1).median() if alive.any() else torch.ones((), device=x.device)
        self.W_dec[shut] = rows * norm
        # fresh head columns as `__init__` draws them, from a generator seeded by the step: the
        # same on every process and in a resumed run
        g = torch.Generator(device=x.device).manual_seed(round(self.progress_span[1] * 2 ** 31))
        fresh = torch.empty(len(shut), self.W_enc.shape[0], device=x.device, dtype=self.W_enc.dtype)
        self.W_enc[:, shut] = nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=g).T
        self.b_enc[shut] = 0
        self.W_sig[:, shut] = torch.randn(self.W_sig.shape[0], len(shut), generator=g, device=x.device,
                                          dtype=self.W_sig.dtype) * (0.01 / math.sqrt(self.W_sig.shape[0]))
        self.b_sig[shut] = math.log(c.sigma_init / (1 - c.sigma_init))

    def gamma(self, sq: Tensor | None = None) -> Tensor:
        """γ: the global batch's optimal γ* = mean ‖x − x̂‖²/d (detached) in "optimal" mode,
        exp(log γ) in "learned" mode; never below `gamma_floor`."""
        if self.cfg.gamma == "optimal" and sq is not None:
            total = self.sum_(torch.stack([sq.detach().sum(), torch.tensor(float(len(sq)), device=sq.device)]))
            return (total[0] / total[1] / self.cfg.d_in).clamp_min(self.cfg.gamma_floor)
        return self.log_gamma.exp() + self.cfg.gamma_floor

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        self._last_x = x.detach() if self.cfg.reopen_every > 0 else None
        n = len(x)
        if not self.cfg.deep_encoder:  # one linear layer per head: the fused elementwise core
            h = self.trunk(x)
            pre, s = torch.addmm(self.b_enc, h, self.W_enc), torch.addmm(self.b_sig, h, self.W_sig)
            noise = torch.randn(pre.shape, generator=generator, device=x.device, dtype=pre.dtype)
            z, kl_sum = GaussianSample.apply(pre, s, noise, self.gate_is_one_minus_sigma)
            kl, fired = kl_sum / n, pre.detach().amax(0) > 0
            open_ = s.detach().amin(0) <= 0 if self.cfg.reopen_every > 0 else None  # σ² ≤ 0.5 on some row
        else:
            enc = self.encoder_output(x)
            mu, std = self.mean(enc), enc.var.sqrt()
            noise = torch.randn(mu.shape, generator=generator, device=x.device, dtype=mu.dtype)
            z = mu + std * noise
            gate = self.gate(enc.var)
            if gate is not None:
                z = gate * z
            kl, fired = kl_divergence(mu, enc.var).mean(), mu.detach().amax(0) > 0
            open_ = enc.var.detach().amin(0) <= 0.5 if self.cfg.reopen_every > 0 else None
        if open_ is not None:  # the re-opening counters, over the global batch: one all-reduce
            with torch.no_grad():
                counts = self.sum_(torch.cat([open_.long(), torch.tensor([n], device=x.device)]))
                self.rows_since_open.add_(counts[-1]).masked_fill_(counts[:-1] > 0, 0)
                self.rows_since_check.add_(counts[-1])
        sq = sq_err(self.decode_scaled(z), x)
        gamma = self.gamma(sq)
        nll = gaussian_nll(sq, gamma, self.cfg.d_in).mean()
        beta = self.kl_weight()
        return {"loss": nll + beta * kl, "mse": sq.mean(), "nll": nll, "kl": kl, "kl_weight": beta.detach(),
                "gamma": gamma.detach(),
                "fired": fired if not self.cfg.deep_encoder else None}
