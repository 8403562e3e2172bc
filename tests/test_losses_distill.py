"""Hand-computed checks of the distillation losses (Hinton et al. 2015) and of logit matching."""

import math

import pytest
import torch

from peerlearn.losses import distillation_loss, logit_matching, soft_target_loss, teacher_probs


def _softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def test_distillation_loss_matches_hand_computation():
    z = [2.0, -1.0, 0.5]  # student logits
    v = [3.0, 0.0, -2.0]  # teacher logits
    temperature, alpha, label = 2.0, 0.3, 0
    q_teacher, q_student = _softmax(v, temperature), _softmax(z, temperature)
    ce = -math.log(_softmax(z)[label])
    expected = alpha * ce + (1 - alpha) * temperature**2 * _kl(q_teacher, q_student)
    loss = distillation_loss(torch.tensor([z]), torch.tensor([q_teacher]), torch.tensor([label]), temperature, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_t1_alpha0_is_plain_kl_and_needs_no_labels():
    z, target = [1.0, 2.0, 0.5, -0.5], [0.1, 0.6, 0.2, 0.1]
    expected = _kl(target, _softmax(z))
    loss = distillation_loss(torch.tensor([z]), torch.tensor([target]), None, temperature=1.0, alpha=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # labels are ignored entirely when α = 0 (even unlabelled −1 items)
    with_labels = distillation_loss(torch.tensor([z]), torch.tensor([target]), torch.tensor([-1]), 1.0, 0.0)
    assert with_labels.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        distillation_loss(torch.tensor([z]), torch.tensor([target]), None, temperature=1.0, alpha=0.5)


def test_soft_term_gradient_is_t_times_probability_difference():
    """d/dz [T² · KL(q ‖ softmax(z/T))] = T · (softmax(z/T) − q) / N, so it does not shrink as T grows."""
    z = torch.tensor([[1.5, -0.5, 0.25], [0.0, 2.0, -1.0]], requires_grad=True)
    q = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1]])
    for temperature in (1.0, 3.0, 10.0):
        z.grad = None
        soft_target_loss(z, q, temperature).backward()
        for n in range(2):
            p = _softmax(z[n].tolist(), temperature)
            hand = [temperature * (p[i] - q[n, i].item()) / 2 for i in range(3)]
            assert z.grad[n].tolist() == pytest.approx(hand, rel=1e-5, abs=1e-7)
    # without the T² factor the gradient would be T² times smaller
    z.grad = None
    soft_target_loss(z, q, 10.0).backward()
    scaled = z.grad.clone()
    z.grad = None
    (soft_target_loss(z, q, 10.0) / 100.0).backward()
    torch.testing.assert_close(z.grad * 100.0, scaled)


def test_several_teachers_are_averaged_in_probability():
    v1, v2 = [2.0, 0.0, -1.0], [-1.0, 1.0, 0.5]
    temperature = 3.0
    p1, p2 = _softmax(v1, temperature), _softmax(v2, temperature)
    mean = [(a + b) / 2 for a, b in zip(p1, p2)]
    got = teacher_probs([torch.tensor([v1]), torch.tensor([v2])], temperature)
    assert got[0].tolist() == pytest.approx(mean, rel=1e-6)
    # … which is not the softmax of the mean logits
    assert got[0].tolist() != pytest.approx(_softmax([(a + b) / 2 for a, b in zip(v1, v2)], temperature), rel=1e-3)
    z = [0.3, 0.1, -0.2]
    loss = distillation_loss(torch.tensor([z]), got, None, temperature, 0.0)
    assert loss.item() == pytest.approx(temperature**2 * _kl(mean, _softmax(z, temperature)), rel=1e-5)
    with pytest.raises(ValueError):
        teacher_probs([], 1.0)


def test_unlabelled_items_are_left_out_of_the_hard_term():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    y = torch.tensor([0, -1])
    soft = soft_target_loss(z, q, 1.0).item()
    ce_first = -math.log(_softmax([2.0, 0.0])[0])
    assert distillation_loss(z, q, y, 1.0, 0.4).item() == pytest.approx(0.4 * ce_first + 0.6 * soft, rel=1e-6)


def test_logit_matching_hand_value_and_no_gradient_to_teacher():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], requires_grad=True)
    v = torch.tensor([[0.0, 2.0, 5.0], [1.0, -1.0, 1.0]], requires_grad=True)
    # row 1: ½(1 + 0 + 4) = 2.5; row 2: ½(1 + 1 + 0) = 1; mean 1.75
    loss = logit_matching(z, v)
    assert loss.item() == pytest.approx(1.75)
    loss.backward()
    assert v.grad is None
    torch.testing.assert_close(z.grad, (z - v).detach() / 2)


def test_high_temperature_distillation_gradient_tends_to_logit_matching_over_c():
    torch.manual_seed(0)
    z = torch.randn(4, 5)
    v = torch.randn(4, 5)
    z, v = (z - z.mean(1, keepdim=True)).requires_grad_(), v - v.mean(1, keepdim=True)  # zero-mean logits
    soft_target_loss(z, teacher_probs([v], 1000.0), 1000.0).backward()
    distill_grad = z.grad.clone()
    z.grad = None
    logit_matching(z, v).backward()
    torch.testing.assert_close(distill_grad, z.grad / 5, rtol=1e-2, atol=1e-4)
