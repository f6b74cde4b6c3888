"""What every dictionary kind shares: the config, the decoder, save/load, and the registry.

Every kind decodes the same way, `x̂ = ẑ @ W_dec + b_dec` with `W_dec` [d_latent, d_in], and
differs in how it encodes (the code `ẑ` the decoder sees) and in its training loss. A kind is
one module in `saease/kinds/` that defines

- a config dataclass, a subclass of `DictionaryConfig` holding that kind's own knobs (its
  fields are also the `saease train` flags), and
- a `Dictionary` subclass, decorated with `@register("name")`, that implements
  `code_from(enc)` (the inference code), `loss(x)` (the training loss and its terms) and, if
  it needs them, `activity` (what AD reads), `after_backward`/`after_step` (decoder-norm
  handling) and `saelens_export` (SAELens's format).

Nothing outside a kind's module asks for a kind by name: the trainer, metrics, eval, lens and
SAELens interop call these methods. Units: the trainer may set `input_scale` so that inputs
have mean norm √d_in; `encode` and `decode` take and return the store's units and apply the
scale inside, while `W_dec`, `loss` and the `*_scaled` methods work in the scaled units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar, Literal, get_args

import safetensors.torch
import torch
from jaxtyping import Float
from torch import Tensor, nn

from saease.errors import SaeaseError

FORMAT = "saease.dictionary/2"

Encoder = Literal["text", "residual"]


def record(doc: str):
    """A config field that records facts about a run (not a flag): source, training, metrics."""
    return knob({}, doc, cli=False)


def knob(default, doc: str, **metadata):
    """A dictionary config field with its --help text (saease.cli.option, which every command
    config uses too)."""
    from saease.cli import option

    return option(default, doc, **metadata)


@dataclass
class DictionaryConfig:
    """The fields every kind has; each kind's config adds its own. Saved as config.json."""

    kind: ClassVar[str] = ""  # set by @register

    d_in: int = knob(0, "input width (taken from the store)", cli=False)
    d_latent: int = knob(300, "latent width κ")
    encoder: Encoder = knob("text", "text: linear heads on the input; residual: residual MLP trunk (App. D.2)")
    encoder_layers: int = knob(1, "1 = linear heads; N > 1 = Swish MLP (hidden 2κ) or N residual blocks")
    encoder_hidden: int | None = knob(None, "deep encoders' width (default: 2κ Swish MLP, 8κ residual)")
    decoder_layers: int = knob(1, "1 = linear dictionary; N > 1 = MLP decoder")
    input_scale: float = knob(1.0, "inputs are multiplied by this inside the dictionary", cli=False)
    source: dict = record("where the training activations came from")
    training: dict = record("the training settings")
    metrics: dict = record("held-out metrics at the end of training")

    def __post_init__(self):
        for name in ("d_latent", "encoder_layers", "decoder_layers"):
            if int(getattr(self, name)) < 1:
                raise SaeaseError(f"--{flag(name)} {getattr(self, name)}: expected a positive integer")
        if self.encoder_hidden is not None and int(self.encoder_hidden) < 1:
            raise SaeaseError(f"--encoder-hidden {self.encoder_hidden}: expected a positive integer")
        for f in fields(self):  # Literal-typed options: one check for every kind's choices
            choices = literal_choices(self, f.name)
            if choices and getattr(self, f.name) not in choices:
                raise SaeaseError(f"--{flag(f.name)} {getattr(self, f.name)!r}: choose from "
                                  f"{', '.join(map(str, choices))} (for {self.kind})")

    @property
    def deep_encoder(self) -> bool:
        return self.encoder_layers > 1 or self.encoder == "residual"


def flag(name: str) -> str:
    return name.replace("_", "-")


def literal_choices(cfg_or_cls, name: str) -> tuple | None:
    """The allowed values of a `Literal[...]`-typed config field, else None."""
    import typing

    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    hint = typing.get_type_hints(cls).get(name)
    if typing.get_origin(hint) is Literal:
        return get_args(hint)
    return None


@dataclass
class EncoderOutput:
    """What the encoder says about a batch (scaled units).

    `pre`: the pre-activation [batch, d_latent] (what `hook_sae_acts_pre` shows); `var`: σ²
    of the variational kinds; `gate`: the gate path's pre-activation of the gated SAE."""

    pre: Float[Tensor, "batch d_latent"]
    var: Float[Tensor, "batch d_latent"] | None = None
    gate: Float[Tensor, "batch d_latent"] | None = None


REGISTRY: dict[str, type["Dictionary"]] = {}


def register(name: str):
    """Class decorator: make a Dictionary subclass (and its `Config`) the kind `name`."""

    def add(cls: type[Dictionary]) -> type[Dictionary]:
        if name in REGISTRY:
            raise ValueError(f"dictionary kind {name!r} registered twice")
        cls.kind = cls.Config.kind = name
        REGISTRY[name] = cls
        return cls

    return add


def kind_names() -> tuple[str, ...]:
    import saease.kinds  # noqa: F401  (registers the built-in kinds)

    return tuple(REGISTRY)


def kind_class(name: str) -> type["Dictionary"]:
    names = kind_names()
    if name not in REGISTRY:
        raise SaeaseError(f"unknown kind {name!r}; choose from {', '.join(names)}")
    return REGISTRY[name]


def config_class(name: str) -> type[DictionaryConfig]:
    return kind_class(name).Config


def make_config(kind: str, **values) -> DictionaryConfig:
    """`kind`'s config from field values; a one-line error for a field the kind does not have."""
    cls = config_class(kind)
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in values.items() if k in known or v is not None}  # None: not set
    unknown = sorted(set(values) - known)
    if unknown:
        raise SaeaseError(f"{', '.join('--' + flag(u) for u in unknown)}: not a setting of {kind} "
                          f"(its settings: {', '.join(sorted(known - {'source', 'training', 'metrics', 'd_in', 'input_scale'}))})")
    return cls(**values)


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


class Dictionary(nn.Module):
    """The base of every kind. Build with `Dictionary.build(cfg)` (or the kind's class) or
    `Dictionary.load(DIR)`; use `encode`, `decode`, `forward` (reconstruction) and `loss`."""

    Config: ClassVar[type[DictionaryConfig]] = DictionaryConfig
    kind: ClassVar[str] = ""
    # AD reads the encoder's variance σ² (the variational kinds), not the code's magnitude.
    ad_from_variance: ClassVar[bool] = False
    # Keep decoder rows at unit norm (the gradient's radial part removed, rows renormalised).
    unit_norm_decoder: ClassVar[bool] = False
    # Whether the kind's loss works with an MLP decoder (decoder_layers > 1).
    supports_mlp_decoder: ClassVar[bool] = False
    # Whether the loss follows a schedule over training (reads `progress` or `crossed`).
    follows_schedule: ClassVar[bool] = False

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(cfg).__name__}")
        if cfg.decoder_layers > 1 and not self.supports_mlp_decoder:
            raise SaeaseError(f"--decoder-layers {cfg.decoder_layers}: {self.kind} needs a linear decoder "
                              "(--decoder-layers 1); MLP decoders work with vaease, vae, sae-l1 and sae-log")
        self.cfg = cfg
        # Sums a small tensor over training processes in place (set by the trainer under torchrun).
        self.all_reduce: Callable[[Tensor], Tensor] | None = None
        # How far training has got, step / total steps (the trainer sets it before each step), for
        # kinds whose loss follows a schedule; 1 outside training. A tensor, so torch.compile
        # does not specialise on its value.
        self.register_buffer("progress", torch.tensor(1.0), persistent=False)
        # The same as Python floats, before and after this step (no device sync to read them).
        self.progress_span = (1.0, 1.0)
        d_in, d_latent = cfg.d_in, cfg.d_latent

        # Encoder trunk: the synthetic experiments' deeper encoders (Swish MLP, hidden 2κ), or
        # `encoder_layers` residual blocks of 3 linear layers, hidden 8κ (App. D.2).
        self.d_head_in = d_in
        if cfg.encoder == "residual":
            self.d_head_in = cfg.encoder_hidden or 8 * d_latent
            self.trunk = ResidualMLP(d_in, self.d_head_in, cfg.encoder_layers)
        elif cfg.encoder_layers > 1:
            self.d_head_in = cfg.encoder_hidden or 2 * d_latent
            self.trunk = mlp(d_in, self.d_head_in, cfg.encoder_layers - 1, nn.SiLU())
        else:
            self.trunk = nn.Identity()
        self.W_enc = nn.Parameter(torch.empty(self.d_head_in, d_latent))
        self.b_enc = nn.Parameter(torch.zeros(d_latent))

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
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)  # unit-norm dictionary rows
            if self.linear:
                self.W_enc.copy_(self.W_dec.T)  # tied initialisation, as SAEs are usually started
            else:
                nn.init.kaiming_uniform_(self.W_enc.T, a=math.sqrt(5))

    @classmethod
    def build(cls, cfg: DictionaryConfig) -> "Dictionary":
        """The dictionary of `cfg`'s kind."""
        return kind_class(cfg.kind)(cfg)

    @classmethod
    def create(cls, kind: str, **values) -> "Dictionary":
        """A new dictionary of `kind`: `Dictionary.create("sae-topk", d_in=512, d_latent=4096, k=32)`."""
        return cls.build(make_config(kind, **values))

    @property
    def linear(self) -> bool:
        """One linear encoder layer on the input and a linear decoder (the LLM dictionaries)."""
        return not self.cfg.deep_encoder and self.cfg.decoder_layers == 1

    # ---- encoding -------------------------------------------------------------------------

    def scale_in(self, x: Float[Tensor, "batch d_in"]) -> Tensor:
        return x.to(self.W_dec.dtype) * self.cfg.input_scale

    def encoder_output(self, x_scaled: Float[Tensor, "batch d_in"]) -> EncoderOutput:
        """The pre-activation (and whatever else the kind's encoder computes)."""
        return EncoderOutput(pre=self.trunk(x_scaled) @ self.W_enc + self.b_enc)

    def code_from(self, enc: EncoderOutput) -> Float[Tensor, "batch d_latent"]:
        """The deterministic code the decoder sees at inference (each kind defines it)."""
        raise NotImplementedError

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

    def activity(self, enc: EncoderOutput) -> Float[Tensor, "batch d_latent"]:
        """Per (sample, latent) activity for AD (docs/kinds.md): log |code| (−inf where the code is 0,
        i.e. inactive); the variational kinds return log σ² (small = active)."""
        return self.code_from(enc).abs().log()

    def usage(self, enc: EncoderOutput, codes: Tensor) -> Float[Tensor, "batch d_latent"]:
        """How much each latent is used per sample, to order the masking curve: |code|."""
        return codes.abs()

    # ---- training -------------------------------------------------------------------------

    def loss(self, x: Float[Tensor, "batch d_in"], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The training loss (batch mean) and its terms, in scaled units: `loss` (to minimise),
        `mse` (‖x − x̂‖² per vector) and the kind's own terms. May also return `fired`, a [κ]
        bool of the latents whose training code was non-zero in some row."""
        raise NotImplementedError

    def set_progress(self, step: int, total: int) -> None:
        """Training is at `step` of `total` (the trainer calls this before each step)."""
        self.progress.fill_(min(1.0, step / total))
        self.progress_span = (min(1.0, step / total), min(1.0, (step + 1) / total))

    def crossed(self, every: float) -> bool:
        """Whether this step crosses a multiple of the fraction `every` of training: a schedule
        that depends only on the step, so a resumed run does what an uninterrupted one does."""
        start, end = self.progress_span
        return math.floor(end / every) > math.floor(start / every)

    def sum_(self, t: Tensor) -> Tensor:
        """`t` summed over training processes, in place (a no-op in one process)."""
        return self.all_reduce(t) if self.all_reduce is not None else t

    @torch.no_grad()
    def after_backward(self) -> None:
        """Called between backward and the optimiser step: drop the decoder gradient's component
        along each row (unit-norm kinds), so the step moves rows on the sphere."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            W, g = self.W_dec, self.W_dec.grad
            g.sub_((g * W).sum(1, keepdim=True) * W / W.pow(2).sum(1, keepdim=True))

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after the optimiser step: renormalise decoder rows (unit-norm kinds)."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def saelens_export(self) -> tuple[dict, dict[str, Tensor]]:
        """(cfg.json fields, tensors) of this dictionary as a SAELens SAE in the store's units."""
        raise SaeaseError(f"a {self.kind} dictionary has no SAELens equivalent")

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
        atomic_write_json(path / "config.json", config_dict(self.cfg))
        return path

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "Dictionary":
        """A saved dictionary, in eval mode."""
        from saease.store import load_safetensors, read_json

        path = Path(path)
        if not (path / "config.json").exists():
            raise SaeaseError(f"{path}: not a saease dictionary (no config.json; expected a folder "
                              "written by `saease train`)")
        cfg = config_from_dict(read_json(path / "config.json", "a dictionary config"), f"{path}/config.json")
        model = Dictionary.build(cfg)
        weights = path / "dictionary.safetensors"
        state = load_safetensors(weights, "dictionary")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SaeaseError(f"{weights}: tensors do not match a {cfg.kind} dictionary "
                              f"(missing {missing}, unexpected {unexpected})")
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def extra_repr(self) -> str:
        c = self.cfg
        return f"kind={c.kind}, d_in={c.d_in}, d_latent={c.d_latent}, encoder={c.encoder}x{c.encoder_layers}"


def config_dict(cfg: DictionaryConfig) -> dict:
    """The config as saved: format, kind, then every field."""
    return {"format": FORMAT, "kind": cfg.kind, **asdict(cfg)}


def config_from_dict(raw: dict, where: str) -> DictionaryConfig:
    if raw.get("format") != FORMAT:
        raise SaeaseError(f"{where}: dictionary format {raw.get('format')!r} is not supported; expected {FORMAT!r}")
    values = {k: v for k, v in raw.items() if k not in ("format", "kind")}
    cls = config_class(str(raw.get("kind")))
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise SaeaseError(f"{where}: unknown fields {unknown} for a {raw.get('kind')} dictionary; "
                          "written by another saease version?")
    return cls(**values)


def topk_mask(z: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row of z, zero the rest."""
    values, indices = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, indices, values)


def sq_err(x_hat: Tensor, x: Tensor) -> Tensor:
    """‖x − x̂‖² per row."""
    return (x_hat - x).pow(2).sum(-1)


