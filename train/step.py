"""One optimisation step's gradients: by autograd, or written out for linear dictionaries.

`AutogradStep` backpropagates `Dictionary.loss`; it serves every dictionary (MLP encoders
and decoders, the authors' encoder) and bf16 autocast / torch.compile on CUDA.

`FusedStep` computes the same gradients in closed form for the paper's LLM dictionaries (a
one-layer text encoder and a linear decoder), so that a step is the matmuls it cannot avoid
plus a few in-place elementwise passes over buffers kept between steps: a ReLU SAE does 5
matmuls (μ = ReLU(x W_enc + b_enc), x̂ = z W_dec + b_dec, and the gradients of W_dec, z and
W_enc), the VAE kinds 7 (the spread head and its gradient). Nothing of batch × κ size is
allocated per step: fresh large tensors cost a page fault per 4 KB on CPU, which made autograd
spend ~30% of a wide step outside the matmuls. `tests/test_train_step.py` checks it against
`AutogradStep` for every kind.

Both write the gradient of the batch-mean loss into each trainable parameter's `.grad` and
return the loss terms (0-d tensors): `mse` (‖x − x̂‖² per vector, in normalized units) always,
`nll`/`gamma` for the VAE kinds; the rest (`loss`, `kl`, `sparsity`, `decoder_norm`) are
only needed for reporting, and the fused step computes them when asked (`full=True`).
`fired` is a [κ] bool of the latents whose code was non-zero for some row, or None.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from saease.dictionary import LOG_EPS, MIN_VAR, Dictionary

Terms = dict[str, Tensor]


def fusable(model: Dictionary) -> bool:
    """Whether `FusedStep` implements this dictionary's loss."""
    c = model.cfg
    return c.encoder == "text" and c.encoder_layers == 1 and c.decoder_layers == 1


class AutogradStep:
    def __init__(self, model: Dictionary, generator: torch.Generator, *, bf16: bool = False,
                 compile: bool = False):
        self.model, self.generator, self.bf16 = model, generator, bf16
        self.loss = torch.compile(model.loss) if compile else model.loss
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, x: Float[Tensor, "batch d_in"], full: bool = True) -> tuple[Terms, Tensor | None]:
        for p in self.params:
            p.grad.zero_()  # the trainer's gradient views are accumulated into in place
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.loss(x, generator=self.generator)
        terms["loss"].backward()
        return {k: v.detach().float() for k, v in terms.items()}, None


class FusedStep:
    """Closed-form gradients of `Dictionary.loss` for a linear dictionary (see the module doc).

    `sum_across(t)` all-reduces (sums) a small tensor over processes in place; with several
    processes it makes the optimal γ* that of the global batch, as one process would have it.
    """

    def __init__(self, model: Dictionary, generator: torch.Generator,
                 sum_across: Callable[[Tensor], Tensor] | None = None):
        assert fusable(model), "FusedStep needs a one-layer text encoder and a linear decoder"
        self.model, self.generator, self.sum_across = model, generator, sum_across
        self.buffers: dict[str, Tensor] = {}
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)

    def buffer(self, name: str, rows: int, width: int) -> Tensor:
        """A [rows, width] scratch tensor kept between steps (the last batch may be shorter)."""
        b = self.buffers.get(name)
        if b is None or b.shape[0] < rows or b.shape[1] != width:
            b = self.buffers[name] = torch.empty(rows, width, device=self.model.device, dtype=self.model.W_dec.dtype)
        return b[:rows]

    def ones(self, rows: int) -> Tensor:
        return self.buffer("ones", rows, 1).fill_(1.0).view(-1)

    def __call__(self, x: Float[Tensor, "batch d_in"], full: bool = True) -> tuple[Terms, Tensor]:
        m = self.model
        with torch.no_grad():
            xs = torch.mul(x, m.cfg.input_scale, out=self.buffer("xs", len(x), m.cfg.d_in))  # any float dtype in
            return self.vae(xs, full) if m.cfg.is_vae else self.sae(xs, full)

    # ---- SAE kinds: ẑ = z = ReLU(x W_enc + b_enc) (TopK: its k largest) -----------------------

    def sae(self, xs: Tensor, full: bool) -> tuple[Terms, Tensor]:
        m, c, n = self.model, self.model.cfg, len(xs)
        z = torch.addmm(m.b_enc, xs, m.W_enc, out=self.buffer("z", n, c.d_latent)).relu_()
        if c.kind == "sae-topk":
            values, index = z.topk(c.k, dim=-1)
            z.zero_().scatter_(-1, index, values)
        err = torch.addmm(m.b_dec, z, m.W_dec, out=self.buffer("err", n, c.d_in)).sub_(xs)  # x̂ − x
        mse = err.pow(2).sum(-1).mean()
        terms = {"mse": mse}
        g = err.mul_(2 / n)  # ∂mse/∂x̂
        # decoder: ∂/∂W_dec = zᵀ g (+ 2 λ2 W_dec), ∂/∂b_dec = Σ_rows g
        torch.addmm(m.W_dec, z.T, g, beta=2 * c.lambda2, out=m.W_dec.grad)
        torch.sum(g, 0, out=m.b_dec.grad)
        # code: ∂/∂z = g W_decᵀ + λ1 ∂sparsity/∂z, then through the ReLU (and TopK's mask)
        gz = self.buffer("gz", n, c.d_latent)
        if c.kind == "sae-l1":  # Σ|z| = Σ z for z ≥ 0: a constant λ1/n where z > 0
            const = self.buffer("l1", 1, c.d_latent).fill_(c.lambda1 / n).view(-1)
            torch.addmm(const, g, m.W_dec.T, out=gz)
            if full:
                terms["sparsity"] = z.sum() / n
        elif c.kind == "sae-log":  # Σ log(|z| + ε): λ1 / (n (z + ε)) where z > 0
            r = torch.add(z, LOG_EPS, out=self.buffer("r", n, c.d_latent))
            if full:
                terms["sparsity"] = torch.log(r, out=gz).sum() / n
            torch.mm(g, m.W_dec.T, out=gz).add_(r.reciprocal_(), alpha=c.lambda1 / n)
        else:
            torch.mm(g, m.W_dec.T, out=gz)
        relu_backward_(gz, z)
        # encoder: ∂/∂W_enc = xᵀ gz, ∂/∂b_enc = Σ_rows gz
        torch.mm(xs.T, gz, out=m.W_enc.grad)
        torch.mv(gz.T, self.ones(n), out=m.b_enc.grad)
        fired = torch.mv(z.T, self.ones(n)) > 0  # z ≥ 0, so a positive column sum means it fired
        if full:
            if c.kind == "sae-topk":
                terms["loss"] = mse
            else:
                terms["decoder_norm"] = m.W_dec.pow(2).sum()
                terms["loss"] = mse + c.lambda1 * terms["sparsity"] + c.lambda2 * terms["decoder_norm"]
        return terms, fired

    # ---- VAE kinds: z = μ + σ ⊙ ε, VAEase decodes (1 − σ) ⊙ z ----------------------------------

    def vae(self, xs: Tensor, full: bool) -> tuple[Terms, Tensor]:
        m, c, n, d = self.model, self.model.cfg, len(xs), self.model.cfg.d_in
        kappa, gated = c.d_latent, c.kind == "vaease"
        mu = torch.addmm(m.b_enc, xs, m.W_enc, out=self.buffer("mu", n, kappa)).relu_()
        sd = torch.addmm(m.b_sig, xs, m.W_sig, out=self.buffer("sd", n, kappa))
        sd.sigmoid_().clamp_min_(MIN_VAR).sqrt_()  # σ = sqrt(max(sigmoid(s), MIN_VAR))
        eps = self.buffer("eps", n, kappa).normal_(generator=self.generator)
        z = torch.addcmul(mu, sd, eps, out=self.buffer("z", n, kappa))  # μ + σε
        if gated:
            z.addcmul_(sd, z, value=-1)  # (1 − σ)(μ + σε)
        err = torch.addmm(m.b_dec, z, m.W_dec, out=self.buffer("err", n, d)).sub_(xs)  # x̂ − x
        sq = err.pow(2).sum(-1)
        mean_sq = sq.mean()
        gamma = self.gamma(sq)
        nll = mean_sq / (2 * gamma) + 0.5 * d * torch.log(2 * math.pi * gamma)
        terms = {"mse": mean_sq, "nll": nll, "gamma": gamma}
        if full:  # KL = ½ Σ (μ² + σ² − log σ² − 1), batch mean
            log_sd_sum = torch.log(sd, out=self.buffer("gz", n, kappa)).sum()
            sum_sq = torch.linalg.vector_norm(mu) ** 2 + torch.linalg.vector_norm(sd) ** 2
            terms["kl"] = 0.5 * (sum_sq - 2 * log_sd_sum) / n - 0.5 * kappa
            terms["loss"] = nll + terms["kl"]
        fired = torch.mv(mu.T, self.ones(n)) > 0  # the code (1 − σ)μ or μ is non-zero iff μ > 0
        g = err.mul_(1 / (gamma * n))  # ∂nll/∂x̂
        torch.mm(z.T, g, out=m.W_dec.grad)
        torch.sum(g, 0, out=m.b_dec.grad)
        gz = torch.mm(g, m.W_dec.T, out=self.buffer("gz", n, kappa))  # ∂/∂ẑ
        # ∂/∂σ into eps: ε(1 − 2σ) − μ for VAEase, ε for the VAE; times ∂/∂ẑ
        if gated:
            eps.addcmul_(sd, eps, value=-2).sub_(mu)
        eps.mul_(gz)
        # ∂/∂μ into gz: (1 − σ) ∂/∂ẑ (VAEase) + KL's μ/n, through the ReLU
        if gated:
            gz.addcmul_(gz, sd, value=-1)
        gz.add_(mu, alpha=1 / n)
        relu_backward_(gz, mu)
        torch.mm(xs.T, gz, out=m.W_enc.grad)
        torch.mv(gz.T, self.ones(n), out=m.b_enc.grad)
        # ∂/∂s into eps, with σ² = sigmoid(s): ½ (1 − σ²) (σ ∂/∂σ − (1 − σ²)/n), zero where clamped
        one_minus_var = torch.addcmul(torch.ones((), device=sd.device), sd, sd, value=-1, out=mu)
        eps.mul_(sd).sub_(one_minus_var, alpha=1 / n).mul_(one_minus_var)
        torch.ops.aten.threshold_backward.grad_input(eps, sd, math.sqrt(MIN_VAR), grad_input=eps)
        torch.addmm(m.W_sig.grad, xs.T, eps, beta=0, alpha=0.5, out=m.W_sig.grad)
        torch.addmv(m.b_sig.grad, eps.T, self.ones(n), beta=0, alpha=0.5, out=m.b_sig.grad)
        if m.log_gamma.requires_grad:  # γ = exp(log γ) + floor
            e = m.log_gamma.exp()
            m.log_gamma.grad.copy_((d / (2 * gamma) - mean_sq / (2 * gamma ** 2)) * e)
        return terms, fired

    def gamma(self, sq: Tensor) -> Tensor:
        """γ as `Dictionary.gamma` has it; the optimal γ* over the global batch."""
        m = self.model
        if m.cfg.gamma != "optimal":
            return m.gamma()
        total = torch.stack([sq.sum(), torch.tensor(float(len(sq)), device=sq.device)])
        if self.sum_across is not None:
            self.sum_across(total)
        return m.gamma((total[0] / total[1]).reshape(1))


def relu_backward_(grad: Tensor, out: Tensor) -> Tensor:
    """grad ← grad where out > 0, else 0 (the ReLU's backward), in place."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)
