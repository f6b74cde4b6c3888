"""The variance-criterion split and AD/RE on constructed data."""

import pytest
import torch

from saease import Dictionary
from saease.metrics import active_count, evaluate, tensor_batches, variance_split


def brute_force_split(values):
    """Lower-group size minimising the summed within-group squared deviation (all cuts tried)."""
    v = sorted(values)
    best, best_i = float("inf"), 0
    for i in range(1, len(v)):
        left, right = torch.tensor(v[:i]), torch.tensor(v[i:])
        sse = ((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum()
        if sse < best:
            best, best_i = sse.item(), i
    return best_i


def test_split_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(50, 12, generator=gen) * torch.rand(50, 1, generator=gen) * 3
    expected = torch.tensor([brute_force_split(row.tolist()) for row in values])
    assert torch.equal(variance_split(values), expected)


def test_split_finds_the_clusters():
    # Two clear clusters in log σ²: 3 active (≈ log 1e-4) and 7 inactive (≈ 0).
    row = torch.tensor([[-9.2, -0.01, -9.0, -0.02, 0.0, -9.4, -0.03, -0.01, 0.0, -0.05]])
    assert active_count(row, from_variance=True).item() == 3
    # SAE: zeros are never in the split; log|z| large = active.
    z = torch.tensor([[0.0, 2.0, 0.0, 1e-3, 3.0, 2.5, 0.0, 2e-3]])
    assert active_count(z.abs().log(), from_variance=False).item() == 3


def test_split_edge_cases():
    flat = torch.zeros(1, 6)
    assert active_count(flat, from_variance=True).item() == 0  # all σ² = 1: nothing active
    one = torch.tensor([[0.0, 0.0, 5.0, 0.0]]).log()
    assert active_count(one, from_variance=False).item() == 1  # a single non-zero is active
    equal = torch.tensor([[2.0, 2.0, 0.0]]).log()
    assert active_count(equal, from_variance=False).item() == 2
    none = torch.zeros(1, 4).log()
    assert active_count(none, from_variance=False).item() == 0


def test_variance_split_respects_valid_mask():
    values = torch.tensor([[0.0, 10.0, 10.1, 100.0]])
    valid = torch.tensor([[False, True, True, True]])
    assert variance_split(values, valid).item() == 2  # {10, 10.1} | {100}


def exact_dictionary(d):
    """sae-l1 with W_enc = [I, −I], W_dec = [I; −I]: ReLU(x) − ReLU(−x) = x exactly."""
    dic = Dictionary.create("sae-l1", d_in=d, d_latent=2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        dic.W_enc.copy_(torch.cat([eye, -eye], 1))
        dic.b_enc.zero_()
        dic.W_dec.copy_(torch.cat([eye, -eye], 0))
        dic.b_dec.zero_()
    return dic


def test_evaluate_on_an_exact_dictionary():
    torch.manual_seed(0)
    x = torch.randn(1000, 5)
    x[:, 4] = 0  # one coordinate never used
    labels = (torch.arange(1000) % 2)
    m = evaluate(exact_dictionary(5), tensor_batches(x, labels, batch_size=300), progress=False)
    assert m["re"] == pytest.approx(0, abs=1e-10)
    assert m["explained_variance"] == pytest.approx(1.0)
    assert m["l0"] == pytest.approx(4.0)  # each of 4 used coordinates fires on one side
    assert m["dead_fraction"] == pytest.approx(2 / 10)
    assert m["n"] == 1000 and set(m["ad_per_label"]) == {"0", "1"}


def test_explained_variance_is_about_the_mean():
    torch.manual_seed(0)
    x = torch.randn(500, 3) + 10
    dic = Dictionary.create("sae-l1", d_in=3, d_latent=2)
    with torch.no_grad():
        dic.W_enc.zero_(); dic.b_enc.zero_(); dic.b_dec.copy_(x.mean(0))
    m = evaluate(dic, tensor_batches(x), progress=False)
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-4)
    assert m["re"] == pytest.approx(x.var(0, unbiased=False).sum().item(), rel=1e-4)
