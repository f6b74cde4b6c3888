"""SAE-TopK: ẑ = the k largest of ReLU(x W_enc + b_enc) per row, loss ‖x − x̂‖² (+ the auxiliary-k
loss that revives dead latents), decoder rows kept at unit norm.

Training decodes sparsely: the kept entries are a `SparseCode` (row by row, as CSR), and
x̂ = Σ_kept value · W_dec[latent] + b_dec is one `embedding_bag` over the k rows of W_dec each
input uses, so the decoder's forward and backward cost B·k·d instead of B·κ·d (sparsify's
kernels do the same gather).

Dead latents (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): a latent that has
not fired for `dead_after` training rows is dead. The auxiliary loss asks the `aux_k` largest
dead pre-activations to reconstruct the residual e = x − x̂ (held fixed), so their encoder and
decoder rows get a gradient again: aux = ‖e − ê‖², weighted by `aux_coef`·min(1, dead/aux_k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from saease.dictionary import Dictionary, DictionaryConfig, knob, register, sq_err, topk_mask
from saease.errors import SaeaseError


@dataclass
class TopKConfig(DictionaryConfig):
    k: int = knob(30, "active latents kept per row")
    aux_k: int | None = knob(None, "dead latents the auxiliary loss uses (default: d_in/2, at most κ)")
    aux_coef: float = knob(1 / 32, "weight of the auxiliary-k loss (0 turns it off)")
    dead_after: int = knob(1_000_000, "training rows without firing after which a latent counts as dead")

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.k <= self.d_latent:
            raise SaeaseError(f"--k {self.k}: expected 1 ≤ k ≤ d_latent = {self.d_latent}")
        if self.aux_k is not None and self.aux_k < 1:
            raise SaeaseError(f"--aux-k {self.aux_k}: expected a positive integer")
        if self.aux_coef < 0 or self.dead_after < 1:
            raise SaeaseError(f"--aux-coef {self.aux_coef} / --dead-after {self.dead_after}: expected "
                              "aux-coef ≥ 0 and dead-after ≥ 1")


@dataclass
class SparseCode:
    """The kept entries of a [rows, κ] code, row by row: row r keeps `values[offsets[r]:offsets[r+1]]`
    at latents `latents[offsets[r]:offsets[r+1]]`."""

    values: Float[Tensor, "kept"]
    latents: Int[Tensor, "kept"]
    offsets: Int[Tensor, "rows"]
    shape: tuple[int, int]

    @classmethod
    def top_k_per_row(cls, acts: Float[Tensor, "rows kappa"], k: int) -> "SparseCode":
        values, latents = acts.topk(k, dim=-1)
        rows = acts.shape[0]
        return cls(values.flatten(), latents.flatten(), torch.arange(0, rows * k, k, device=acts.device),
                   tuple(acts.shape))

    @classmethod
    def top_k_of_batch(cls, acts: Float[Tensor, "rows kappa"], k: int) -> "SparseCode":
        """The k·rows largest entries of the whole batch (BatchTopK), ties broken by topk."""
        rows, kappa = acts.shape
        flat = acts.flatten()
        index = flat.topk(min(k * rows, flat.numel())).indices.sort().values  # row-major: grouped by row
        offsets = torch.searchsorted(index // kappa, torch.arange(rows, device=acts.device))
        return cls(flat[index], index % kappa, offsets, (rows, kappa))

    def decode(self, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
        """Σ value · W_dec[latent] (+ b_dec) per row, reading only the kept rows of W_dec."""
        out = F.embedding_bag(self.latents, W_dec, self.offsets, mode="sum", per_sample_weights=self.values)
        return out if b_dec is None else out + b_dec

    def split_by_latent(self, boundaries: list[int]) -> list["SparseCode"]:
        """The code cut into the latent ranges [0, b_1), [b_1, b_2), …, [b_n, κ): one SparseCode
        each, so that each range is decoded once (Matryoshka's nested prefixes)."""
        rows = self.shape[0]
        row_of = torch.searchsorted(self.offsets, torch.arange(len(self.latents), device=self.latents.device),
                                    right=True) - 1
        group = torch.bucketize(self.latents, torch.tensor(boundaries, device=self.latents.device), right=True)
        parts = []
        for g in range(len(boundaries) + 1):
            keep = (group == g).nonzero().squeeze(1)
            offsets = torch.searchsorted(row_of[keep], torch.arange(rows, device=keep.device))
            parts.append(SparseCode(self.values[keep], self.latents[keep], offsets, self.shape))
        return parts

    def fired(self) -> Tensor:
        """[κ] bool: latents with a positive kept value in some row."""
        kept = self.latents[self.values > 0]
        return torch.zeros(self.shape[1], dtype=torch.bool, device=kept.device).index_fill_(0, kept, True)

    def l0(self) -> Tensor:
        return (self.values > 0).sum() / self.shape[0]


@register("sae-topk")
class TopKSAE(Dictionary):
    Config = TopKConfig
    unit_norm_decoder = True

    def __init__(self, cfg):
        super().__init__(cfg)
        # training rows since each latent last fired (saved, so a resumed run sees the same dead set)
        self.register_buffer("rows_since_fired", torch.zeros(cfg.d_latent, dtype=torch.long))

    def code_from(self, enc):
        return topk_mask(F.relu(enc.pre), self.cfg.k)

    def train_code(self, enc) -> SparseCode:
        """The code the training loss decodes (BatchTopK: top k·B over the whole batch)."""
        return SparseCode.top_k_per_row(F.relu(enc.pre), self.cfg.k)

    def reconstruction_loss(self, z: SparseCode, x):
        """(the reconstruction term of the loss, x̂ of the whole code, ‖x − x̂‖² of it (batch mean))."""
        x_hat = z.decode(self.W_dec, self.b_dec)
        mse = sq_err(x_hat, x).mean()
        return mse, x_hat, mse

    def loss(self, x, generator=None):
        x = self.scale_in(x)
        enc = self.encoder_output(x)
        z = self.train_code(enc)
        recon, x_hat, mse = self.reconstruction_loss(z, x)
        fired = z.fired()
        terms = {"mse": mse, "fired": fired, "l0": z.l0().detach()}
        aux = self.aux_loss(enc, x_hat, x)
        terms["loss"] = recon if aux is None else recon + aux
        if aux is not None:
            terms["aux"] = aux.detach()
        with torch.no_grad():  # dead-latent bookkeeping over the global batch: one all-reduce
            counts = self.sum_(torch.cat([fired.long(), torch.tensor([len(x)], device=x.device)]))
            self.rows_since_fired.add_(counts[-1]).masked_fill_(counts[:-1] > 0, 0)
        return terms

    def aux_loss(self, enc, x_hat, x):
        """The auxiliary-k loss on the dead latents (None when none are dead or it is off)."""
        c = self.cfg
        dead = self.rows_since_fired >= c.dead_after
        n_dead = int(dead.sum())
        if c.aux_coef == 0 or n_dead == 0:
            return None
        aux_k = min(c.aux_k or max(c.d_in // 2, 1), n_dead)
        residual = (x - x_hat).detach()
        z_aux = SparseCode.top_k_per_row(F.relu(enc.pre).masked_fill(~dead, 0), aux_k)
        weight = c.aux_coef * min(1.0, n_dead / aux_k)
        return weight * sq_err(z_aux.decode(self.W_dec, torch.zeros_like(self.b_dec)), residual).mean()

    def saelens_export(self):
        from saease.kinds.sae_l1 import plain_relu_tensors

        return {"architecture": "topk", "k": self.cfg.k, "rescale_acts_by_decoder_norm": False}, \
            plain_relu_tensors(self)
