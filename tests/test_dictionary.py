"""The paper's five kinds: loss terms against hand computation, encode/decode; every kind: save/load
and config checks. (The SAE family's newer kinds: tests/test_kinds.py.)"""

import math

import pytest
import torch

from saease import Dictionary, SaeaseError, kind_names, make_config
from saease.kinds.variational import gaussian_nll, kl_divergence
from saease.metrics import active_mask

PAPER_KNOBS = {"sae-l1": dict(lambda1=0.3, lambda2=0.2), "sae-log": dict(lambda1=0.3, lambda2=0.2),
               "sae-topk": dict(k=2, aux_coef=0.0), "sae-batchtopk": dict(k=2), "sae-matryoshka": dict(k=2)}


def make(kind, **kw):
    torch.manual_seed(0)
    return Dictionary.create(kind, d_in=6, d_latent=5, **{**PAPER_KNOBS.get(kind, {}), **kw})


def test_kl_and_nll_match_hand_computation():
    mu, var = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.25, 1.0]])
    hand = 0.5 * ((0.25 + 0.25 - math.log(0.25) - 1) + (1 + 1 - 0 - 1))
    assert kl_divergence(mu, var).item() == pytest.approx(hand)
    nll = gaussian_nll(torch.tensor([2.0]), torch.tensor(0.5), d=3).item()
    assert nll == pytest.approx(2.0 / 1.0 + 1.5 * math.log(2 * math.pi * 0.5))


@pytest.mark.parametrize("kind", ["sae-l1", "sae-log", "sae-topk"])
def test_sae_loss_terms_by_hand(kind):
    d = make(kind)
    x = torch.randn(4, 6)
    terms = d.loss(x)
    pre = x @ d.W_enc + d.b_enc
    z = torch.relu(pre)
    if kind == "sae-topk":
        keep = z.topk(2, dim=-1).indices
        z = torch.zeros_like(z).scatter(-1, keep, z.gather(-1, keep))
    mse = ((z @ d.W_dec + d.b_dec - x) ** 2).sum(-1).mean()
    assert terms["mse"].item() == pytest.approx(mse.item(), rel=1e-5)
    if kind == "sae-topk":
        assert terms["loss"].item() == pytest.approx(mse.item(), rel=1e-5)
        return
    penalty = z.abs().sum(-1) if kind == "sae-l1" else torch.log(z.abs() + 1e-4).sum(-1)
    expected = mse + 0.3 * penalty.mean() + 0.2 * (d.W_dec ** 2).sum()
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["vae", "vaease"])
def test_vae_loss_terms_by_hand(kind):
    d = make(kind, gamma="learned", log_gamma_init=-1.0)
    x = torch.randn(4, 6)
    gen = torch.Generator().manual_seed(3)
    terms = d.loss(x, generator=gen)
    eps = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    mu = torch.relu(x @ d.W_enc + d.b_enc)
    var = torch.sigmoid(x @ d.W_sig + d.b_sig).clamp_min(1e-7)
    z = mu + var.sqrt() * eps
    if kind == "vaease":
        z = (1 - var.sqrt()) * z
    sq = ((z @ d.W_dec + d.b_dec - x) ** 2).sum(-1)
    gamma = math.exp(-1.0) + d.cfg.gamma_floor
    nll = (sq / (2 * gamma) + 3 * math.log(2 * math.pi * gamma)).mean()
    kl = (0.5 * (mu ** 2 + var - var.log() - 1).sum(-1)).mean()
    assert terms["loss"].item() == pytest.approx((nll + kl).item(), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_kl_warms_up_over_the_first_fraction_of_training():
    d = make("vaease", kl_warmup=0.1)
    x = torch.randn(4, 6)
    full = d.loss(x, generator=torch.Generator().manual_seed(0))
    d.progress.fill_(0.05)  # halfway through the warm-up
    half = d.loss(x, generator=torch.Generator().manual_seed(0))
    assert half["kl_weight"].item() == pytest.approx(0.5)
    assert half["loss"].item() == pytest.approx((full["nll"] + 0.5 * full["kl"]).item(), rel=1e-5)
    assert full["loss"].item() == pytest.approx((full["nll"] + full["kl"]).item(), rel=1e-5)
    assert make("vaease", kl_warmup=0.0).kl_weight().item() == 1.0


def test_optimal_gamma_is_the_batch_mse_per_coordinate_with_a_floor():
    d = make("vaease")
    sq = torch.tensor([6.0, 12.0])
    assert d.gamma(sq).item() == pytest.approx(9.0 / 6)
    assert d.gamma(torch.zeros(2)).item() == pytest.approx(d.cfg.gamma_floor)


def test_deterministic_codes():
    x = torch.randn(3, 6)
    soft = make("vaease", code="soft")
    enc = soft.encoder_output(x)
    assert torch.allclose(soft.encode(x), (1 - enc.var.sqrt()) * torch.relu(enc.pre))
    exact = make("vaease")  # the default: zero outside each row's active set, so L0 = AD's count
    active = active_mask(enc.var.log(), True)
    assert torch.allclose(exact.encode(x), (1 - enc.var.sqrt()) * torch.relu(enc.pre) * active)
    assert ((exact.encode(x) != 0).sum(-1) <= active.sum(-1)).all()
    vae = make("vae")
    assert torch.allclose(vae.encode(x), torch.relu(vae.encoder_output(x).pre))
    topk = make("sae-topk")
    assert ((topk.encode(x) != 0).sum(-1) <= 2).all()
    assert torch.equal(make("sae-l1").encode(x), torch.relu(x @ make("sae-l1").W_enc + make("sae-l1").b_enc))


def test_input_scale_is_undone_by_decode():
    d = make("sae-l1", input_scale=4.0)
    x = torch.randn(3, 6)
    assert torch.allclose(d(x), (torch.relu(4 * x @ d.W_enc + d.b_enc) @ d.W_dec + d.b_dec) / 4, atol=1e-6)


@pytest.mark.parametrize("kind", kind_names())
@pytest.mark.parametrize("encoder", ["text", "authors"])
def test_save_load_round_trip_is_bit_exact(tmp_path, kind, encoder):
    if encoder == "authors" and kind not in ("vae", "vaease"):
        with pytest.raises(SaeaseError, match="--encoder 'authors': choose from text, residual"):
            make(kind, encoder=encoder)
        return
    d = make(kind, encoder=encoder, encoder_layers=2)
    d.loss(torch.randn(8, 6))  # kinds with training state (dead-latent counts, thresholds) update it
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn_like(p))
    d.save(tmp_path / "d")
    loaded = Dictionary.load(tmp_path / "d")
    for (name, a), (_, b) in zip(d.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(5, 6)
    assert torch.equal(d.encode(x), loaded.encode(x))
    assert loaded.cfg == d.cfg and type(loaded) is type(d) and not loaded.training


def test_load_refuses_other_formats(tmp_path):
    make("vae").save(tmp_path / "d")
    cfg = (tmp_path / "d" / "config.json")
    cfg.write_text(cfg.read_text().replace("saease.dictionary/2", "saease.dictionary/9"))
    with pytest.raises(SaeaseError, match="saease.dictionary/9.*expected 'saease.dictionary/2'"):
        Dictionary.load(tmp_path / "d")
    with pytest.raises(SaeaseError, match="not a saease dictionary"):
        Dictionary.load(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{not json")
    with pytest.raises(SaeaseError, match="not valid JSON"):
        Dictionary.load(tmp_path / "x")


@pytest.mark.parametrize("kind, bad, match", [
    ("sparse", {}, "unknown kind 'sparse'; choose from vaease, vae, sae-l1, sae-log, sae-topk, sae-batchtopk"),
    ("sae-topk", dict(k=9), "--k 9: expected 1 ≤ k ≤ d_latent = 3"),
    ("sae-l1", dict(encoder="authors"), "--encoder 'authors': choose from text, residual"),
    ("vae", dict(gamma="fixed"), "--gamma 'fixed': choose from optimal, learned"),
    ("vae", dict(d_latent=0), "--d-latent 0: expected a positive integer"),
    ("vaease", dict(k=3), "--k: not a setting of vaease"),
    ("sae-matryoshka", dict(k=1, prefixes=[2, 1, 3]), "--prefixes 2 1 3: expected ascending"),
    ("sae-jumprelu", dict(bandwidth=0), "bandwidth > 0"),
])
def test_bad_configs(kind, bad, match):
    with pytest.raises(SaeaseError, match=match):
        make_config(kind, **{"d_in": 4, "d_latent": 3, **bad})


def test_mlp_decoders_only_where_the_loss_supports_them():
    assert make("vaease", decoder_layers=2).cfg.decoder_layers == 2
    with pytest.raises(SaeaseError, match="sae-topk needs a linear decoder"):
        make("sae-topk", decoder_layers=2)
