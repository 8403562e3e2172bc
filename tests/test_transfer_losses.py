"""CORAL, MMD and importance weights against hand computations and generated shifted data."""

import math

import pytest
import torch

from peerlearn.losses import coral_loss, covariance, median_bandwidths, mmd_loss
from peerlearn.transfer.importance import effective_sample_size, importance_weights


def test_covariance_is_unbiased():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    torch.testing.assert_close(covariance(x), torch.tensor([[2.0, 0.0], [0.0, 8.0]]) / 3)


def test_coral_of_known_covariances():
    # C_S = diag(2, 8)/3, C_T = diag(2, 2)/3: ‖C_S − C_T‖_F² = 4, d = 2 → 4 / (4·4) = 0.25
    source = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    target = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert coral_loss(source, target).item() == pytest.approx(0.25)


def test_coral_ignores_a_shift_and_is_zero_for_equal_covariance():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    assert coral_loss(x, x + 3.0).item() == pytest.approx(0.0, abs=1e-10)


def test_mmd_of_identical_sets_is_zero_biased():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    assert mmd_loss(x, x.clone(), bandwidths=[0.5, 1.0, 2.0]).item() == pytest.approx(0.0, abs=1e-6)


def test_mmd_two_points_by_hand():
    s, t = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # one bandwidth σ=1: 1 + 1 − 2 e^{−1/2}
    assert mmd_loss(s, t, [1.0]).item() == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-6)
    # σ ∈ {1, 2}: k(x, x) = 2, k(0, 1) = e^{−1/2} + e^{−1/8}
    expected = 2 + 2 - 2 * (math.exp(-0.5) + math.exp(-0.125))
    assert mmd_loss(s, t, [1.0, 2.0]).item() == pytest.approx(expected, rel=1e-6)


def test_mmd_unbiased_by_hand():
    # S = T = {0, 1}, σ = 1: the off-diagonal means are e^{−1/2}; the cross mean is (2 + 2e^{−1/2}) / 4
    s = torch.tensor([[0.0], [1.0]])
    expected = 2 * math.exp(-0.5) - 2 * (2 + 2 * math.exp(-0.5)) / 4
    assert mmd_loss(s, s.clone(), [1.0], unbiased=True).item() == pytest.approx(expected, rel=1e-6)
    assert expected < 0  # the U-statistic can be negative; the V-statistic of the same sets is 0
    assert mmd_loss(s, s.clone(), [1.0]).item() == pytest.approx(0.0, abs=1e-7)


def test_mmd_grows_with_shift_and_has_gradient():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(64, 3, generator=g)
    t = torch.randn(64, 3, generator=g)
    near, far = mmd_loss(s, t + 0.5), mmd_loss(s, t + 2.0)
    assert far > near > 0
    feats = s.clone().requires_grad_(True)
    mmd_loss(feats, t + 1.0).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_median_bandwidths_by_hand():
    # points 0 and 2: the only pairwise squared distance is 4 → σ_med = sqrt(4 / 2)
    sig = median_bandwidths(torch.tensor([[0.0]]), torch.tensor([[2.0]]), factors=(1.0,))
    assert sig[0] == pytest.approx(math.sqrt(2.0))


def _shifted(n_source=3000, n_target=300, shift=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(n_source, 2, generator=g)
    target = torch.randn(n_target, 2, generator=g) + torch.tensor([shift, 0.0])
    return source, target


def test_importance_weights_favour_target_like_samples():
    source, target = _shifted()
    w = importance_weights(source, target, clip=(0.01, 100.0))
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert w[source[:, 0] > 1].mean() > 5 * w[source[:, 0] < -1].mean()
    # the weighted source mean moves from 0 towards the target mean 1.5
    weighted_mean = float((w * source[:, 0]).sum() / w.sum())
    assert 1.0 < weighted_mean < 2.0
    # equal covariances: the true log ratio is 1.5·x0 − 1.125, linear in x0; the estimate follows it
    true_log = 1.5 * source[:, 0] - 1.125
    corr = torch.corrcoef(torch.stack([w.log(), true_log]))[0, 1]
    assert corr > 0.95


def test_importance_weights_clip_and_equal_domains():
    source, target = _shifted(shift=4.0)
    w = importance_weights(source, target, clip=(0.5, 2.0))
    assert w.max() <= 2.0 / w.new_tensor(0.5).item() and w.min() > 0
    assert w.max() / w.min() <= 4.0 + 1e-5  # the clip bounds the ratio of any two weights
    same_s, same_t = _shifted(shift=0.0)
    flat = importance_weights(same_s, same_t)
    assert effective_sample_size(flat) > 0.95 * len(flat)


def test_effective_sample_size():
    assert effective_sample_size(torch.ones(10)) == pytest.approx(10)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1)
