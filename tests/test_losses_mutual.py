"""Hand-computed checks of the DML loss family and of gradient isolation between members."""

import math

import pytest
import torch
import torch.nn.functional as F

from peerlearn.losses import (cross_entropy, entropy, feature_l2, js_to_target, kl_to_target, mutual_mimicry,
                              soft_probs)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def test_kl_matches_hand_computation():
    z = torch.tensor([[1.0, 2.0, 0.5]])
    target = torch.tensor([[0.2, 0.5, 0.3]])
    q = [math.exp(v) for v in (1.0, 2.0, 0.5)]
    q = [v / sum(q) for v in q]
    assert kl_to_target(target, z).item() == pytest.approx(_kl([0.2, 0.5, 0.3], q), rel=1e-6)


def test_kl_with_temperature_uses_softened_student():
    z = torch.tensor([[3.0, -1.0, 0.0]])
    target = torch.tensor([[0.6, 0.1, 0.3]])
    q = F.softmax(z / 4.0, dim=1)[0].tolist()
    assert kl_to_target(target, z, temperature=4.0).item() == pytest.approx(_kl([0.6, 0.1, 0.3], q), rel=1e-6)


def test_js_is_symmetric_and_matches_hand_computation():
    p = [0.7, 0.2, 0.1]
    z = torch.log(torch.tensor([[0.3, 0.3, 0.4]]))
    q = [0.3, 0.3, 0.4]
    m = [(a + b) / 2 for a, b in zip(p, q)]
    expected = 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    assert js_to_target(torch.tensor([p]), z).item() == pytest.approx(expected, rel=1e-5)
    swapped = js_to_target(torch.tensor([q]), torch.log(torch.tensor([p])))
    assert swapped.item() == pytest.approx(expected, rel=1e-5)


def test_dml_pair_equals_paper_formula():
    """K=2: L_1 = CE(p_1, y) + KL(p_2 ‖ p_1)."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 3, 1, 4])
    p1, p2 = F.softmax(z1, 1), F.softmax(z2, 1)
    expected = 0.0
    for n in range(4):
        ce = -math.log(p1[n, y[n]].item())
        expected += ce + _kl(p2[n].tolist(), p1[n].tolist())
    expected /= 4
    loss = cross_entropy(z1, y) + mutual_mimicry(z1, [soft_probs(z2)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_dml_averages_over_k_minus_one_peers_and_dml_e_uses_mean_teacher():
    torch.manual_seed(1)
    z = [torch.randn(3, 4) for _ in range(4)]
    peers = [soft_probs(v) for v in z[1:]]
    p0 = F.softmax(z[0], 1)
    expected_peers = sum(_kl(p[n].tolist(), p0[n].tolist()) for p in peers for n in range(3)) / (3 * 3)
    assert mutual_mimicry(z[0], peers).item() == pytest.approx(expected_peers, rel=1e-5)
    mean = torch.stack(peers).mean(0)
    expected_e = sum(_kl(mean[n].tolist(), p0[n].tolist()) for n in range(3)) / 3
    assert mutual_mimicry(z[0], peers, teacher="ensemble").item() == pytest.approx(expected_e, rel=1e-5)
    # the averaged teacher is peakier-or-equal in KL terms: KL to the mean ≤ mean of KLs (convexity)
    assert expected_e <= expected_peers + 1e-9


def test_temperature_scales_mimicry_by_t_squared():
    z1, z2 = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    t = 3.0
    raw = kl_to_target(soft_probs(z2, t), z1, t)
    assert mutual_mimicry(z1, [soft_probs(z2, t)], temperature=t).item() == pytest.approx(raw.item() * 9, rel=1e-6)


def test_no_gradient_reaches_a_peer():
    a = torch.nn.Linear(3, 4)
    b = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3)
    za, zb = a(x), b(x)
    # even if the caller forgets to detach, the loss treats the peer as a constant
    loss = mutual_mimicry(za, [F.softmax(zb, 1)]) + mutual_mimicry(za, [F.softmax(zb, 1)], divergence="js")
    loss = loss + feature_l2(za, [zb])
    loss.backward()
    assert a.weight.grad is not None and a.weight.grad.abs().sum() > 0
    assert b.weight.grad is None


def test_feature_l2_hand_value():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    g = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # rows: (1+4)=5, (1+1)=2 -> mean 3.5
    assert feature_l2(f, [g]).item() == pytest.approx(3.5)


def test_cross_entropy_ignores_unlabelled_items_and_handles_none():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, -1])
    assert cross_entropy(z, y).item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), rel=1e-6)
    none = cross_entropy(z, torch.tensor([-1, -1]))
    none.backward()
    assert none.item() == 0.0


def test_entropy_of_uniform_and_one_hot():
    assert entropy(torch.full((1, 4), 0.25)).item() == pytest.approx(math.log(4))
    assert entropy(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dml_e_and_dml_have_the_same_gradient_with_kl(temperature):
    """∂KL(q ‖ softmax(z/T))/∂z = (softmax(z/T) − q)/T is linear in q: averaging the peers' KL terms or
    taking KL to the peers' mean probability gives the same update (the losses differ by a constant)."""
    torch.manual_seed(2)
    peers = [soft_probs(torch.randn(6, 5), temperature) for _ in range(3)]
    grads = []
    for teacher in ("peers", "ensemble"):
        z = torch.randn(6, 5, generator=torch.Generator().manual_seed(9)).requires_grad_()
        mutual_mimicry(z, peers, temperature, teacher=teacher).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1])
    # with JS the two differ
    z = torch.randn(6, 5, requires_grad=True)
    js_peers = torch.autograd.grad(mutual_mimicry(z, peers, divergence="js"), z)[0]
    js_mean = torch.autograd.grad(mutual_mimicry(z, peers, divergence="js", teacher="ensemble"), z)[0]
    assert not torch.allclose(js_peers, js_mean)


def test_one_pass_peer_kl_equals_the_sum_of_pairwise_kls_in_value_and_gradient():
    """mean_kl_from_peers is the plain 1/(K−1) Σ_l KL(p_l ‖ p_k), rearranged to cost one cross-entropy."""
    from peerlearn.losses import kl_to_target, mean_kl_from_peers

    torch.manual_seed(3)
    peers = [torch.softmax(torch.randn(6, 5) * 2, 1) for _ in range(3)]
    peers[0][0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])  # a zero probability contributes 0
    logits = torch.randn(6, 5, requires_grad=True)
    fast = mean_kl_from_peers(peers, logits, temperature=2.0)
    (fast_grad,) = torch.autograd.grad(fast, logits)
    plain = sum(kl_to_target(p, logits, 2.0) for p in peers) / 3
    (plain_grad,) = torch.autograd.grad(plain, logits)
    assert torch.allclose(fast, plain, atol=1e-6)
    assert torch.allclose(fast_grad, plain_grad, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_one_peer_kl_is_the_pairwise_kl_in_value_and_gradient(temperature):
    """K = 2 takes F.kl_div directly; it equals KL(p_l ‖ p_k) by hand and the several-peer formula."""
    from peerlearn.losses import mean_kl_from_peers

    torch.manual_seed(4)
    peer = torch.softmax(torch.randn(6, 5) * 2, 1)
    peer[0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])  # a zero probability contributes 0
    logits = torch.randn(6, 5, requires_grad=True)
    fast = mean_kl_from_peers([peer], logits, temperature)
    (fast_grad,) = torch.autograd.grad(fast, logits)
    log_p = torch.log_softmax(logits / temperature, 1)
    by_hand = (torch.xlogy(peer, peer) - peer * log_p).sum(1).mean()
    (hand_grad,) = torch.autograd.grad(by_hand, logits)
    two_copies = mean_kl_from_peers([peer, peer], logits, temperature)  # the stacked formula, same peer twice
    torch.testing.assert_close(fast, by_hand)
    torch.testing.assert_close(fast, two_copies)
    torch.testing.assert_close(fast_grad, hand_grad)
    torch.testing.assert_close(fast_grad, (torch.softmax(logits / temperature, 1) - peer).detach() / 6 / temperature)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_of_a_fully_labelled_batch_equals_the_masked_one(smoothing):
    """Every label ≥ 0 skips the masking; the value and gradient are those of the masked computation."""
    torch.manual_seed(5)
    z = torch.randn(7, 4, requires_grad=True)
    y = torch.randint(0, 4, (7,))
    full = cross_entropy(z, y, smoothing)
    (full_grad,) = torch.autograd.grad(full, z)
    rows = torch.arange(7)  # the masked path's indexing, on all rows
    masked = torch.nn.functional.cross_entropy(z[rows], y[rows], label_smoothing=smoothing)
    (masked_grad,) = torch.autograd.grad(masked, z)
    assert full.item() == masked.item()
    assert torch.equal(full_grad, masked_grad)
    # and a batch with an unlabelled item still averages over the labelled ones only
    y_part = y.clone()
    y_part[0] = -1
    expected = torch.nn.functional.cross_entropy(z[1:], y[1:], label_smoothing=smoothing)
    torch.testing.assert_close(cross_entropy(z, y_part, smoothing), expected)
