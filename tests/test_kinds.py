"""The SAE family's newer kinds (BatchTopK, JumpReLU, Gated, Matryoshka) and the TopK family's
dead-latent and decoder-norm handling: losses against hand computation, the properties each
kind is defined by, and the JumpReLU threshold's straight-through gradient checked numerically."""

import pytest
import torch

from saease import Dictionary
from saease.kinds.sae_jumprelu import JumpReLUWithL0


def make(kind, **kw):
    torch.manual_seed(0)
    d = Dictionary.create(kind, d_in=6, d_latent=8, **kw)
    with torch.no_grad():
        d.b_enc.normal_(0, 0.3)
        d.b_dec.normal_(0, 0.3)
    return d


def hand_mse(d, z, x):
    return ((z @ d.W_dec + d.b_dec - x) ** 2).sum(-1).mean()


def test_batchtopk_keeps_k_per_row_on_average_over_the_batch():
    d = make("sae-batchtopk", k=3)
    x = torch.randn(16, 6) * torch.linspace(0.1, 3, 16)[:, None]  # rows of very different size
    terms = d.loss(x)
    acts = torch.relu(x @ d.W_enc + d.b_enc)
    kept = acts.flatten().topk(3 * 16).values
    z = torch.where(acts >= kept.min(), acts, torch.zeros_like(acts))
    assert int((z > 0).sum()) == 3 * 16 and terms["l0"].item() == 3
    per_row = (z > 0).sum(-1)
    assert per_row.min() < 3 < per_row.max()  # the budget moves between rows: not a per-row top-k
    assert terms["mse"].item() == pytest.approx(hand_mse(d, z, x).item(), rel=1e-5)
    assert d.threshold.item() == pytest.approx(kept.min().item())  # first estimate: the smallest kept


def test_batchtopk_threshold_is_a_moving_average_used_at_inference():
    d = make("sae-batchtopk", k=3, threshold_decay=0.5)
    x1, x2 = torch.randn(16, 6), torch.randn(16, 6)
    d.loss(x1)
    first = d.threshold.item()
    d.loss(x2)
    acts2 = torch.relu(x2 @ d.W_enc + d.b_enc)
    second_min = acts2.flatten().topk(48).values.min().item()
    assert d.threshold.item() == pytest.approx(0.5 * first + 0.5 * second_min, rel=1e-5)
    d.eval()
    before = d.threshold.clone()
    d.loss(x1)  # eval mode: no update
    assert torch.equal(d.threshold, before)
    acts1 = torch.relu(x1 @ d.W_enc + d.b_enc)
    torch.testing.assert_close(d.encode(x1), acts1 * (acts1 > before))


def test_matryoshka_averages_the_prefix_reconstructions():
    d = make("sae-matryoshka", k=2, prefixes=[2, 5, 8])
    x = torch.randn(10, 6)
    terms = d.loss(x)
    acts = torch.relu(x @ d.W_enc + d.b_enc)
    kept = acts.flatten().topk(20).values.min()
    z = torch.where(acts >= kept, acts, torch.zeros_like(acts))
    prefix = [((z[:, :m] @ d.W_dec[:m] + d.b_dec - x) ** 2).sum(-1).mean() for m in (2, 5, 8)]
    assert terms["loss"].item() == pytest.approx(sum(prefix).item() / 3, rel=1e-5)
    assert terms["mse"].item() == pytest.approx(prefix[-1].item(), rel=1e-5)  # the whole dictionary's
    assert prefix[0] > prefix[-1]


def test_matryoshka_default_prefixes_nest_up_to_the_width():
    assert make("sae-matryoshka", k=2).cfg.prefixes == [1, 2, 4, 8]


def test_jumprelu_loss_by_hand_and_thresholds_in_the_code():
    d = make("sae-jumprelu", l0_coef=0.7, threshold_init=0.2)
    x = torch.randn(12, 6)
    terms = d.loss(x)
    pre = x @ d.W_enc + d.b_enc
    z = pre * (pre > 0.2)
    l0 = (pre > 0.2).float().sum(-1).mean()
    assert terms["l0"].item() == pytest.approx(l0.item())
    assert terms["loss"].item() == pytest.approx((hand_mse(d, z, x) + 0.7 * l0).item(), rel=1e-5)
    torch.testing.assert_close(d.encode(x), z)


def test_jumprelu_threshold_gradient_is_the_smoothed_steps_derivative():
    """The straight-through gradients equal finite differences of the kernel-smoothed step
    S((pre − θ)/ε), S(u) = clip(u + ½, 0, 1) (the rectangle kernel's integral): θ·∂S/∂θ for the
    code (the estimator of the paper, eq. 11), ∂S/∂θ for the L0; the code's gradient for `pre`
    is the mask."""
    torch.manual_seed(1)
    eps = 0.3
    pre = torch.randn(400, 3, dtype=torch.float64)
    up = torch.randn(400, 3, dtype=torch.float64)  # an arbitrary upstream gradient for the code
    theta = torch.tensor([0.1, 0.4, -0.2], dtype=torch.float64, requires_grad=True)

    def smoothed(t, weight):
        return (((pre - t) / eps + 0.5).clamp(0, 1) * weight).sum()

    h = 1e-6

    def numeric(weight):
        return torch.stack([(smoothed(theta.detach() + h * e, weight) - smoothed(theta.detach() - h * e, weight)) / (2 * h)
                            for e in torch.eye(3, dtype=torch.float64)])

    z, l0 = JumpReLUWithL0.apply(pre, theta, eps)
    torch.testing.assert_close(z, pre * (pre > theta.detach()))
    assert l0.item() == (pre > theta.detach()).sum().item()
    (l0_grad,) = torch.autograd.grad(l0, theta, retain_graph=True)
    torch.testing.assert_close(l0_grad, numeric(torch.ones_like(pre)), rtol=1e-6, atol=1e-6)
    assert (l0_grad != 0).all()
    (code_grad,) = torch.autograd.grad((z * up).sum(), theta, retain_graph=True)
    torch.testing.assert_close(code_grad, theta.detach() * numeric(up), rtol=1e-6, atol=1e-6)
    (both,) = torch.autograd.grad((z * up).sum() + 0.7 * l0, theta)  # the two add
    torch.testing.assert_close(both, code_grad + 0.7 * l0_grad)
    p = pre.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(JumpReLUWithL0.apply(p, theta.detach(), eps)[0].sum(), p)
    torch.testing.assert_close(g, (pre > theta.detach()).double())


@pytest.mark.parametrize("kind", ["sae-l1", "sae-log"])
def test_fused_relu_penalty_matches_autograd(kind):
    """ℓ1's and log's fused code-and-penalty has autograd's value and gradients (float64)."""
    from saease.kinds.sae_log import LOG_EPS

    torch.manual_seed(0)
    pre = torch.randn(40, 9, dtype=torch.float64, requires_grad=True)
    up = torch.randn(40, 9, dtype=torch.float64)
    z, total = make(kind).code_and_penalty(pre)
    fused = torch.autograd.grad((z * up).sum() + 0.37 * total, pre)
    z_ref = torch.relu(pre)
    total_ref = z_ref.abs().sum() if kind == "sae-l1" else torch.log(z_ref.abs() + LOG_EPS).sum()
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(total, total_ref)
    torch.testing.assert_close(fused, torch.autograd.grad((z_ref * up).sum() + 0.37 * total_ref, pre))


def test_fused_gated_code_matches_autograd():
    """The gated SAE's fused code has autograd's outputs and gradients (float64)."""
    from saease.kinds.sae_gated import GatedCode

    torch.manual_seed(0)
    proj = torch.randn(40, 9, dtype=torch.float64, requires_grad=True)
    r_mag, b_mag, b_gate = (torch.randn(9, dtype=torch.float64).mul(0.5).requires_grad_(True) for _ in range(3))
    up_z, up_gate = torch.randn(40, 9, dtype=torch.float64), torch.randn(40, 9, dtype=torch.float64)
    inputs = (proj, r_mag, b_mag, b_gate)
    z, gate_acts = GatedCode.apply(*inputs)
    fused = torch.autograd.grad((z * up_z).sum() + (gate_acts * up_gate).sum(), inputs)
    gate = proj + b_gate
    z_ref = (gate > 0) * torch.relu(proj * r_mag.exp() + b_mag)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(gate_acts, torch.relu(gate))
    ref = torch.autograd.grad((z_ref * up_z).sum() + (torch.relu(gate) * up_gate).sum(), inputs)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b)
    assert all((g != 0).any() for g in fused)


def test_gated_loss_by_hand_and_its_auxiliary_term_trains_the_gate():
    d = make("sae-gated", lambda1=0.3)
    with torch.no_grad():
        d.r_mag.normal_(0, 0.5)
        d.b_mag.normal_(0, 0.3)
    x = torch.randn(12, 6)
    terms = d.loss(x)
    proj = x @ d.W_enc
    gate, mag = proj + d.b_enc, proj * d.r_mag.exp() + d.b_mag
    z = (gate > 0) * torch.relu(mag)
    sparsity = (torch.relu(gate) * d.W_dec.norm(dim=1)).sum(-1).mean()
    aux = ((torch.relu(gate) @ d.W_dec + d.b_dec - x) ** 2).sum(-1).mean()
    expected = hand_mse(d, z, x) + 0.3 * sparsity + aux
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(d.encode(x), z)
    terms["loss"].backward()
    assert d.b_enc.grad.abs().sum() > 0  # the gate's bias learns (through the penalty and aux term)


def test_topk_aux_loss_revives_dead_latents_only():
    d = make("sae-topk", k=2, dead_after=10, aux_k=3, aux_coef=0.5)
    x = torch.randn(20, 6)
    assert "aux" not in d.loss(x)  # nobody is dead yet: 20 rows have passed, but all are fresh
    with torch.no_grad():
        d.rows_since_fired.fill_(0)
        d.rows_since_fired[:4] = 100  # latents 0-3 have been silent for 100 rows
    acts = torch.relu(x @ d.W_enc + d.b_enc)
    z = torch.zeros_like(acts).scatter(-1, acts.topk(2, -1).indices, acts.topk(2, -1).values)
    d.zero_grad()
    terms = d.loss(x)
    residual = (x - (z @ d.W_dec + d.b_dec)).detach()
    dead = acts.clone()
    dead[:, 4:] = 0
    z_aux = torch.zeros_like(dead).scatter(-1, dead.topk(3, -1).indices, dead.topk(3, -1).values)
    aux = 0.5 * min(1, 4 / 3) * ((z_aux @ d.W_dec - residual) ** 2).sum(-1).mean()
    assert terms["aux"].item() == pytest.approx(aux.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((hand_mse(d, z, x) + aux).item(), rel=1e-5)
    fired = (z > 0).any(0)
    assert torch.equal(d.rows_since_fired == 0, fired)  # the count restarts for the ones that fired


def test_unit_norm_decoder_moves_rows_on_the_sphere():
    d = make("sae-topk", k=2)
    d.W_dec.grad = torch.randn_like(d.W_dec)
    d.after_backward()
    radial = (d.W_dec.grad * d.W_dec).sum(1)
    torch.testing.assert_close(radial, torch.zeros(8), atol=1e-6, rtol=0)
    with torch.no_grad():
        d.W_dec.mul_(3)
    d.after_step()
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(8))
    l1 = make("sae-l1")  # the paper's SAEs penalise ‖W_dec‖² instead: their rows are left alone
    with torch.no_grad():
        l1.W_dec.mul_(3)
    l1.after_step()
    torch.testing.assert_close(l1.W_dec.norm(dim=1), torch.full((8,), 3.0))


@pytest.mark.parametrize("kind", ["sae-batchtopk", "sae-jumprelu", "sae-gated", "sae-matryoshka"])
def test_new_kinds_train_from_the_cli_and_lower_their_loss(tmp_path, kind, capsys):
    import json

    from saease.cli import main
    from saease.store import write_store

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=g) @ torch.randn(4, 12, generator=g)
    store = write_store(tmp_path / "s", x)
    knobs = ["--k", "4"] if kind in ("sae-batchtopk", "sae-matryoshka") else []
    code = main(["train", "--data", str(store.path), "--out", str(tmp_path / "d"), "--kind", kind, "--d-latent",
                 "16", "--epochs", "3", "--batch-size", "128", "--lr", "0.01", "--no-progress", "--threads", "1",
                 "--json", *knobs])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kind"] == kind and summary["explained_variance"] > 0.5
    assert 0 < summary["l0"] < 16
    loaded = Dictionary.load(tmp_path / "d")
    assert type(loaded).kind == kind


@pytest.mark.parametrize("gated", [True, False])
def test_fused_gaussian_sample_matches_autograd(gated):
    """The variational kinds' fused elementwise core has autograd's gradients (float64)."""
    from saease.kinds.variational import MIN_VAR, GaussianSample, kl_divergence

    torch.manual_seed(0)
    pre = torch.randn(32, 7, dtype=torch.float64, requires_grad=True)
    s = (torch.randn(32, 7, dtype=torch.float64) * 4).requires_grad_(True)
    with torch.no_grad():
        s[0, 0] = -30.0  # σ² clamped at MIN_VAR: no gradient there
    eps = torch.randn(32, 7, dtype=torch.float64)
    up = torch.randn(32, 7, dtype=torch.float64)
    z, kl = GaussianSample.apply(pre, s, eps, gated)
    fused = torch.autograd.grad((z * up).sum() + 0.37 * kl, (pre, s))

    mu, var = torch.relu(pre), torch.sigmoid(s).clamp_min(MIN_VAR)
    std = var.sqrt()
    z_ref = mu + std * eps
    if gated:
        z_ref = (1 - std) * z_ref
    kl_ref = kl_divergence(mu, var).sum()
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(kl, kl_ref)
    ref = torch.autograd.grad((z_ref * up).sum() + 0.37 * kl_ref, (pre, s))
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b)
    assert fused[1][0, 0] == 0


def test_schedule_crossings_depend_only_on_the_step():
    d = make("sae-l1")
    crossings = []
    for step in range(40):
        d.set_progress(step, 40)
        crossings += [step] if d.crossed(0.25) else []
    assert crossings == [9, 19, 29, 39]  # the steps whose end crosses 1/4, 2/4, 3/4, 1
    d.set_progress(19, 40)  # a resumed run at step 19 sees the same crossing
    assert d.crossed(0.25) and float(d.progress) == pytest.approx(19 / 40)


def test_vaease_reopens_latents_shut_on_the_whole_batch_only_at_a_crossing():
    """`--reopen-every`: a latent with σ² ≈ 1 on every row restarts at σ² = sigma_init with a
    decoder row along a badly reconstructed input's residual; open latents are untouched, and the
    fresh columns are the same in a second run at the same step (they do not use the global RNG)."""
    def shut_one(seed):
        torch.manual_seed(seed)
        d = Dictionary.create("vaease", d_in=6, d_latent=8, reopen_every=0.5, reopen_until=1.0)
        with torch.no_grad():
            d.b_sig[3] = 20.0  # σ² ≈ 1 for every input: latent 3 is shut
        return d

    x = torch.randn(64, 6)
    d = shut_one(0)
    d.set_progress(3, 10)  # no crossing of 0.5 in this step: nothing happens
    d.loss(x)
    d.after_step()
    assert d.b_sig[3] == 20.0
    before = {k: v.clone() for k, v in d.state_dict().items()}
    d.set_progress(4, 10)  # this step ends at 0.5
    d.loss(x)
    d.after_step()
    assert torch.sigmoid(d.b_sig[3]).item() == pytest.approx(d.cfg.sigma_init)
    assert not torch.equal(d.W_dec[3], before["W_dec"][3]) and not torch.equal(d.W_enc[:, 3], before["W_enc"][:, 3])
    others = [j for j in range(8) if j != 3]
    torch.testing.assert_close(d.W_dec[others], before["W_dec"][others])
    torch.testing.assert_close(d.W_enc[:, others], before["W_enc"][:, others])
    e = shut_one(0)
    torch.manual_seed(123)  # another global RNG state: the fresh columns do not depend on it
    e.set_progress(4, 10)
    e.loss(x)
    e.after_step()
    torch.testing.assert_close(e.W_enc, d.W_enc)


def test_vaease_reopens_only_latents_shut_since_the_previous_crossing():
    """A latent open on a single row of the interval (a rare feature's) is not re-opened, even
    when it is shut on the whole batch of the crossing step; `--reopen-after` sets the rows."""
    torch.manual_seed(0)
    d = Dictionary.create("vaease", d_in=6, d_latent=8, reopen_every=0.5, reopen_until=1.0)
    with torch.no_grad():
        d.b_sig[3] = 20.0  # latent 3 shut on every row
        d.b_sig[5] = 20.0  # latent 5 too, except on one row of one batch (below)
        d.W_sig[:, 5] = 0.0
        d.W_sig[0, 5] = -100.0
    x = torch.randn(64, 6)
    x[:, 0] = torch.rand(64) * 0.1  # σ² of latent 5 ≈ 1 here ...
    rare = x.clone()
    rare[7, 0] = 1.0  # ... and open on this one row
    for step, batch in enumerate([x, rare, x, x, x]):
        d.set_progress(step, 10)
        d.loss(batch)
        if step < 4:
            d.after_step()
    assert int(d.rows_since_open[3]) == 5 * 64 and int(d.rows_since_open[5]) == 3 * 64
    d.after_step()  # step 4 ends at 0.5: latent 3 re-opens, latent 5 (open at step 1) does not
    assert torch.sigmoid(d.b_sig[3]).item() == pytest.approx(d.cfg.sigma_init) and d.b_sig[5] == 20.0
    assert int(d.rows_since_open[3]) == 0 and int(d.rows_since_check) == 0
    e = Dictionary.create("vaease", d_in=6, d_latent=8, reopen_every=0.5, reopen_until=1.0, reopen_after=10_000)
    with torch.no_grad():
        e.b_sig[3] = 20.0
    e.set_progress(4, 10)
    e.loss(x)
    e.after_step()  # shut for 64 rows only: fewer than reopen_after
    assert e.b_sig[3] == 20.0


def test_vaease_saved_without_the_reopening_counters_still_loads(tmp_path):
    """Dictionaries (and checkpoints) written before the counters existed load, with them at 0."""
    from safetensors.torch import load_file, save_file

    from saease.dictionary import FORMAT

    d = Dictionary.create("vaease", d_in=6, d_latent=8, reopen_every=0.05)
    d.rows_since_open.fill_(7)
    folder = d.save(tmp_path / "d")
    tensors = load_file(folder / "dictionary.safetensors")
    assert int(tensors["rows_since_open"][0]) == 7  # saved with the dictionary
    old = {k: v for k, v in tensors.items() if not k.startswith("rows_since_")}
    save_file(old, folder / "dictionary.safetensors", metadata={"format": FORMAT})
    e = Dictionary.load(folder)
    assert int(e.rows_since_open.sum()) == 0 and int(e.rows_since_check) == 0
    torch.testing.assert_close(e.W_dec, d.W_dec)
    e.load_state_dict(old)  # strict, as a resumed checkpoint loads
