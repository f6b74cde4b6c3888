"""The dictionary family (SPEC §1): VAEase, VAE, SAE-ℓ1, SAE-log and SAE-TopK.

Every kind shares one decoder, `x̂ = ẑ @ W_dec + b_dec` with `W_dec` [d_latent, d_in], and
differs in the code `ẑ` the decoder sees and in the loss:

    sae-l1    ẑ = μ(x)                        ‖x−x̂‖² + λ1 Σ|z| + λ2 ‖W_dec‖²_F
    sae-log   ẑ = μ(x)                        ‖x−x̂‖² + λ1 Σ log(|z|+ε) + λ2 ‖W_dec‖²_F
    sae-topk  ẑ = top-k of μ(x)               ‖x−x̂‖²
    vae       ẑ = μ + σ⊙ε                     ‖x−x̂‖²/(2γ) + d/2 log(2πγ) + KL
    vaease    ẑ = (1−σ)⊙(μ + σ⊙ε)             the same, decoded from the gated sample

`Dictionary.encode` returns the deterministic code ((1−σ)⊙μ for VAEase, μ for the VAE, z for
the SAEs) and `Dictionary.decode` maps codes back, both in the units of the activations the
dictionary was trained on (an input scale set by the trainer is applied inside).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from saease.errors import SaeaseError

FORMAT = "saease.dictionary/1"
KINDS = ("vaease", "vae", "sae-l1", "sae-log", "sae-topk")
VAE_KINDS = ("vaease", "vae")
ENCODERS = ("text", "authors", "residual")
GAMMA_MODES = ("optimal", "learned")
LOG_EPS = 1e-4  # ε of the SAE-log penalty
MIN_VAR = 1e-7  # σ² is clamped at this, as in the authors' code


@dataclass
class DictionaryConfig:
    """Everything needed to rebuild a dictionary; saved as config.json beside the weights."""

    kind: str = "vaease"
    d_in: int = 512
    d_latent: int = 300
    encoder: str = "text"
    encoder_layers: int = 1
    encoder_hidden: int | None = None  # deep encoders' width: None = 2κ (Swish MLP), 8κ (residual)
    decoder_layers: int = 1
    k: int | None = None
    lambda1: float = 0.0
    lambda2: float = 0.0
    gamma: str = "optimal"
    gamma_floor: float = 1e-6
    log_gamma_init: float = 0.0
    sigma_init: float = 0.5  # VAE kinds: σ² every latent starts at (b_sig = logit(sigma_init))
    input_scale: float = 1.0
    source: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SaeaseError(f"unknown kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.encoder not in ENCODERS:
            raise SaeaseError(f"unknown encoder {self.encoder!r}; choose from {', '.join(ENCODERS)}")
        if self.encoder == "authors" and self.kind not in VAE_KINDS:
            raise SaeaseError(f"encoder 'authors' applies to vae/vaease, not {self.kind!r}; use --encoder text")
        if self.gamma not in GAMMA_MODES:
            raise SaeaseError(f"unknown gamma mode {self.gamma!r}; choose from {', '.join(GAMMA_MODES)}")
        for name in ("d_in", "d_latent", "encoder_layers", "decoder_layers"):
            if int(getattr(self, name)) < 1:
                raise SaeaseError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.encoder_hidden is not None and int(self.encoder_hidden) < 1:
            raise SaeaseError(f"encoder-hidden must be a positive integer, got {self.encoder_hidden}")
        if self.kind == "sae-topk":
            if self.k is None or not 1 <= self.k <= self.d_latent:
                raise SaeaseError(f"sae-topk needs --k between 1 and d_latent={self.d_latent}, got {self.k}")
        if not 0 < self.sigma_init < 1:
            raise SaeaseError(f"sigma-init must be in (0, 1) (the initial σ²), got {self.sigma_init}")
        if self.gamma_floor <= 0:
            raise SaeaseError(f"gamma-floor must be > 0, got {self.gamma_floor}")

    @property
    def is_vae(self) -> bool:
        return self.kind in VAE_KINDS


@dataclass
class EncoderOutput:
    """What the encoder says about a batch: the mean `mu`, the variance `var` = σ² (VAE kinds)."""

    mu: Float[Tensor, "batch d_latent"]
    var: Float[Tensor, "batch d_latent"] | None


def mlp(d_in: int, d_hidden: int, n_layers: int, activation: nn.Module) -> nn.Sequential:
    """n_layers linear layers d_in → d_hidden → … → d_hidden, each followed by `activation`."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(d_in if i == 0 else d_hidden, d_hidden), activation]
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """The nonlinear synthetic experiment's encoder trunk (App. D.2): Linear(d_in, d_hidden) + Swish,
    then `n_blocks` residual blocks h ← h + f(h), f = 3 linear layers d_hidden → d_hidden with Swish
    between them."""

    def __init__(self, d_in: int, d_hidden: int, n_blocks: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d_hidden, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_hidden), nn.SiLU(),
                          nn.Linear(d_hidden, d_hidden))
            for _ in range(n_blocks))

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        for block in self.blocks:
            h = h + block(h)
        return h


def kl_divergence(mu: Tensor, var: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per sample: ½ Σ_j (μ² + σ² − log σ² − 1)."""
    return 0.5 * (mu.pow(2) + var - var.log() - 1).sum(-1)


def gaussian_nll(sq_err: Tensor, gamma: Tensor, d: int) -> Tensor:
    """−log N(x | x̂, γI) per sample, from the summed squared error ‖x − x̂‖²."""
    return sq_err / (2 * gamma) + 0.5 * d * torch.log(2 * math.pi * gamma)


def topk_mask(z: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row of z, zero the rest."""
    values, indices = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, indices, values)


class Dictionary(nn.Module):
    """One dictionary of any kind. Build with `Dictionary(DictionaryConfig(...))` or
    `Dictionary.load(DIR)`; use `encode`, `decode`, `forward` (reconstruction) and `loss`."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_latent = cfg.d_in, cfg.d_latent

        # Encoder trunk: the synthetic experiments' deeper encoders (Swish MLP, hidden 2κ).
        # encoder "residual": `encoder_layers` residual blocks of 3 linear layers, hidden 8κ (App. D.2).
        d_head_in = d_in
        if cfg.encoder == "residual":
            d_head_in = cfg.encoder_hidden or 8 * d_latent
            self.trunk = ResidualMLP(d_in, d_head_in, cfg.encoder_layers)
        elif cfg.encoder_layers > 1:
            d_head_in = cfg.encoder_hidden or 2 * d_latent
            self.trunk = mlp(d_in, d_head_in, cfg.encoder_layers - 1, nn.SiLU())
        else:
            self.trunk = nn.Identity()

        if cfg.encoder == "authors":
            # Linear(d, 2κ) + Swish, split into a mean half and a pre-spread half; Linear(κ, κ) spread.
            self.W_enc = nn.Parameter(torch.empty(d_head_in, 2 * d_latent))
            self.b_enc = nn.Parameter(torch.zeros(2 * d_latent))
            self.W_sig = nn.Parameter(torch.empty(d_latent, d_latent))
            nn.init.kaiming_uniform_(self.W_enc.T, a=math.sqrt(5))
        else:
            self.W_enc = nn.Parameter(torch.empty(d_head_in, d_latent))
            self.b_enc = nn.Parameter(torch.zeros(d_latent))
            if cfg.is_vae:
                self.W_sig = nn.Parameter(torch.empty(d_head_in, d_latent))
        if cfg.is_vae:
            self.b_sig = nn.Parameter(torch.full((d_latent,), math.log(cfg.sigma_init / (1 - cfg.sigma_init))))
            nn.init.normal_(self.W_sig, std=0.01 / math.sqrt(self.W_sig.shape[0]))
            self.log_gamma = nn.Parameter(torch.tensor(float(cfg.log_gamma_init)),
                                          requires_grad=cfg.gamma == "learned")

        # Decoder: linear (the dictionary) unless decoder_layers > 1 (nonlinear synthetic data).
        d_dec_in = d_latent
        if cfg.decoder_layers > 1:
            self.dec_trunk = nn.Sequential(*[
                m for i in range(cfg.decoder_layers - 1)
                for m in (nn.Linear(d_latent if i == 0 else 4 * d_latent, 4 * d_latent), nn.LeakyReLU(0.2))])
            d_dec_in = 4 * d_latent
        else:
            self.dec_trunk = nn.Identity()
        self.W_dec = nn.Parameter(torch.randn(d_dec_in, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)  # unit-norm dictionary columns
            if cfg.encoder == "text" and cfg.encoder_layers == 1 and cfg.decoder_layers == 1:
                self.W_enc.copy_(self.W_dec.T)  # tied initialisation, as SAEs are usually started
            elif cfg.encoder != "authors":
                nn.init.kaiming_uniform_(self.W_enc.T, a=math.sqrt(5))

    # ---- encoding -------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.cfg.kind

    def scale_in(self, x: Float[Tensor, "batch d_in"]) -> Tensor:
        return x.to(self.W_dec.dtype) * self.cfg.input_scale

    def encoder_output(self, x_scaled: Float[Tensor, "batch d_in"]) -> EncoderOutput:
        """μ and σ² for inputs already multiplied by `input_scale`."""
        h = self.trunk(x_scaled)
        kappa = self.cfg.d_latent
        if self.cfg.encoder == "authors":
            h = F.silu(h @ self.W_enc + self.b_enc)
            mu, pre_spread = h[..., :kappa], h[..., kappa:]
            s = pre_spread @ self.W_sig + self.b_sig
        else:
            mu = h @ self.W_enc + self.b_enc
            deep = self.cfg.encoder_layers > 1 or self.cfg.encoder == "residual"
            if not self.cfg.is_vae or not deep:
                mu = F.relu(mu)
            s = h @ self.W_sig + self.b_sig if self.cfg.is_vae else None
        var = torch.sigmoid(s).clamp_min(MIN_VAR) if s is not None else None
        return EncoderOutput(mu=mu, var=var)

    def code_from(self, enc: EncoderOutput) -> Float[Tensor, "batch d_latent"]:
        """The deterministic code: (1−σ)⊙μ (VAEase), μ (VAE), z (SAE kinds)."""
        if self.kind == "vaease":
            return (1 - enc.var.sqrt()) * enc.mu
        if self.kind == "sae-topk":
            return topk_mask(enc.mu, self.cfg.k)
        return enc.mu

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_latent"]:
        """Deterministic codes of activations `x` (in the store's units)."""
        return self.code_from(self.encoder_output(self.scale_in(x)))

    def decode_scaled(self, codes: Float[Tensor, "batch d_latent"]) -> Float[Tensor, "batch d_in"]:
        return self.dec_trunk(codes) @ self.W_dec + self.b_dec

    def decode(self, codes: Float[Tensor, "batch d_latent"]) -> Float[Tensor, "batch d_in"]:
        """Reconstruction in the store's units."""
        return self.decode_scaled(codes) / self.cfg.input_scale

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        return self.decode(self.encode(x))

    def activity(self, enc: EncoderOutput) -> Tensor:
        """Per (sample, latent) activity used by AD (SPEC §2): log σ² for the VAE kinds (small =
        active), log |z| for the SAE kinds (large = active; −inf where z = 0, i.e. inactive)."""
        if self.cfg.is_vae:
            return enc.var.log()
        return self.code_from(enc).abs().log()

    # ---- training -------------------------------------------------------------------------

    def gamma(self, sq_err: Tensor | None = None) -> Tensor:
        """Decoder variance γ: the batch's optimal γ* = mean ‖x − x̂‖²/d (detached) in "optimal"
        mode, exp(log γ) in "learned" mode; never below `gamma_floor`."""
        if self.cfg.gamma == "optimal" and sq_err is not None:
            return (sq_err.detach().mean() / self.cfg.d_in).clamp_min(self.cfg.gamma_floor)
        return self.log_gamma.exp() + self.cfg.gamma_floor

    def loss(self, x: Float[Tensor, "batch d_in"], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The training loss (mean over the batch) and its terms, all in the scaled units.

        Returns a dict with `loss` (to minimise) and the terms that make it up: `mse`
        (‖x − x̂‖² per sample), and `sparsity`/`decoder_norm` (SAEs) or `nll`/`kl`/`gamma` (VAEs).
        """
        cfg = self.cfg
        x = self.scale_in(x)
        enc = self.encoder_output(x)
        if cfg.is_vae:
            std = enc.var.sqrt()
            noise = torch.randn(enc.mu.shape, generator=generator, device=x.device, dtype=x.dtype)
            z = enc.mu + std * noise
            if cfg.kind == "vaease":
                z = (1 - std) * z
            sq_err = (self.decode_scaled(z) - x).pow(2).sum(-1)
            gamma = self.gamma(sq_err)
            nll = gaussian_nll(sq_err, gamma, cfg.d_in).mean()
            kl = kl_divergence(enc.mu, enc.var).mean()
            return {"loss": nll + kl, "mse": sq_err.mean(), "nll": nll, "kl": kl, "gamma": gamma.detach()}
        z = self.code_from(enc)
        sq_err = (self.decode_scaled(z) - x).pow(2).sum(-1).mean()
        out = {"mse": sq_err}
        if cfg.kind == "sae-topk":
            out["loss"] = sq_err
            return out
        if cfg.kind == "sae-l1":
            sparsity = z.abs().sum(-1).mean()
        else:
            sparsity = torch.log(z.abs() + LOG_EPS).sum(-1).mean()
        decoder_norm = self.W_dec.pow(2).sum()
        out.update(sparsity=sparsity, decoder_norm=decoder_norm,
                   loss=sq_err + cfg.lambda1 * sparsity + cfg.lambda2 * decoder_norm)
        return out

    # ---- save / load ----------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write DIR/config.json and DIR/dictionary.safetensors (each atomically)."""
        from saease.store import atomic_write_bytes, atomic_write_json

        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SaeaseError(f"{path}: cannot create the output folder ({err.strerror})") from None
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(path / "dictionary.safetensors",
                           safetensors.torch.save(tensors, metadata={"format": FORMAT}))
        atomic_write_json(path / "config.json", {"format": FORMAT, **asdict(self.cfg)})
        return path

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "Dictionary":
        from saease.store import load_safetensors, read_json

        path = Path(path)
        if not (path / "config.json").exists():
            raise SaeaseError(f"{path}: not a saease dictionary (no config.json; expected a folder "
                              "written by `saease train`)")
        raw = read_json(path / "config.json", "a dictionary config")
        if raw.get("format") != FORMAT:
            raise SaeaseError(f"{path}: dictionary format {raw.get('format')!r} is not supported; "
                              f"expected {FORMAT!r}")
        known = {f.name for f in fields(DictionaryConfig)}
        unknown = sorted(set(raw) - known - {"format"})
        if unknown:
            raise SaeaseError(f"{path}/config.json: unknown fields {unknown}; written by another saease version?")
        cfg = DictionaryConfig(**{k: v for k, v in raw.items() if k in known})
        model = cls(cfg)
        weights = path / "dictionary.safetensors"
        state = load_safetensors(weights, "dictionary")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SaeaseError(f"{weights}: tensors do not match a {cfg.kind} dictionary "
                              f"(missing {missing}, unexpected {unexpected})")
        return model.to(device)

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def extra_repr(self) -> str:
        c = self.cfg
        return f"kind={c.kind}, d_in={c.d_in}, d_latent={c.d_latent}, encoder={c.encoder}x{c.encoder_layers}"

