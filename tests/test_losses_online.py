"""Online distillation losses (ONE, CL-ILR, OKDDip, KDCL, PCL) against values and gradients computed by hand
in numpy, what each method keeps constant, KDCL's teacher rules, the EMA update and the ramp-ups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from peerlearn.losses import (OnlineLoss, cl_ilr_loss, cl_ilr_targets, ema_decay, ema_update, gated_ensemble,
                              generalization_weights, kdcl_loss, linear_teacher, linear_teacher_weights,
                              min_logit_teacher, okddip_loss, okddip_targets, one_loss, pcl_loss, peer_attention,
                              peer_mean_kl, sigmoid_rampup, weighted_teacher)

RNG = np.random.default_rng(7)
K, B, C = 3, 4, 5
LOGITS = RNG.normal(size=(K, B, C)) * 2.0
LABELS = np.array([0, 3, 1, 4])


# --------------------------------------------------------------------------- numpy references
def softmax(v, t=1.0):
    e = np.exp((v - v.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    """mean over rows of Σ p log(p / q)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)))


def ce(z, y):
    p = softmax(z)
    return float(np.mean([-math.log(p[i, y[i]]) for i in range(len(y))]))


def onehot(y, c=C):
    out = np.zeros((len(y), c))
    out[np.arange(len(y)), y] = 1
    return out


def tensor(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


LABELS_T = torch.tensor(LABELS)


# --------------------------------------------------------------------------- ONE
GATE = softmax(RNG.normal(size=(B, K)))


def test_gated_ensemble_is_the_gate_weighted_sum_of_branch_logits():
    expected = np.zeros((B, C))
    for b in range(B):
        for k in range(K):
            expected[b] += GATE[b, k] * LOGITS[k, b]
    got = gated_ensemble(tensor(LOGITS), tensor(GATE))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="gate must be"):
        gated_ensemble(tensor(LOGITS), tensor(GATE.T))


@pytest.mark.parametrize("temperature,kl_weight", [(3.0, 1.0), (1.0, 0.5), (4.0, 0.0)])
def test_one_loss_matches_hand_value(temperature, kl_weight):
    z_e = np.einsum("bk,kbc->bc", GATE, LOGITS)
    ce_branches = sum(ce(LOGITS[k], LABELS) for k in range(K))
    kl_sum = sum(kl(softmax(z_e, temperature), softmax(LOGITS[k], temperature)) for k in range(K))
    expected = ce_branches + ce(z_e, LABELS) + kl_weight * temperature**2 * kl_sum
    result = one_loss(tensor(LOGITS), tensor(GATE), LABELS_T, temperature, kl_weight)
    assert isinstance(result, OnlineLoss)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)
    assert result.parts["kl"].item() == pytest.approx(temperature**2 * kl_sum, rel=1e-10)
    assert result.parts["ce_ensemble"].item() == pytest.approx(ce(z_e, LABELS), rel=1e-10)


def test_one_teacher_is_constant_in_the_kl_and_the_gate_learns_from_ce_ensemble_only():
    temperature, kl_weight = 3.0, 0.7
    logits, gate = tensor(LOGITS, grad=True), tensor(GATE, grad=True)
    one_loss(logits, gate, LABELS_T, temperature, kl_weight).loss.backward()
    z_e = np.einsum("bk,kbc->bc", GATE, LOGITS)
    ce_e_grad = (softmax(z_e) - onehot(LABELS)) / B  # d CE(z_e) / d z_e
    # the gate: only CE(z_e, y) reaches it, d/dg[b, k] = Σ_c ce_e_grad[b, c] · z_k[b, c]
    np.testing.assert_allclose(gate.grad.numpy(), np.einsum("bc,kbc->bk", ce_e_grad, LOGITS), rtol=1e-9)
    # each branch: its CE, its share of CE(z_e), its KL with p_e constant: T · (p_k − p_e) / B
    for k in range(K):
        expected = ((softmax(LOGITS[k]) - onehot(LABELS)) / B + GATE[:, k:k + 1] * ce_e_grad
                    + kl_weight * temperature * (softmax(LOGITS[k], temperature) - softmax(z_e, temperature)) / B)
        np.testing.assert_allclose(logits.grad[k].numpy(), expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- CL-ILR
def _cl_targets(average, t):
    out = []
    for h in range(K):
        others = [j for j in range(K) if j != h]
        if average == "logits":
            out.append(softmax(sum(LOGITS[j] for j in others) / len(others), t))
        else:
            out.append(sum(softmax(LOGITS[j], t) for j in others) / len(others))
    return np.stack(out)


@pytest.mark.parametrize("average", ["logits", "probs"])
def test_cl_ilr_loss_matches_hand_value(average):
    temperature, beta = 2.0, 0.3
    targets = _cl_targets(average, temperature)
    np.testing.assert_allclose(cl_ilr_targets(tensor(LOGITS), temperature, average).numpy(), targets, rtol=1e-10)
    expected = sum((1 - beta) * ce(LOGITS[h], LABELS)
                   + beta * temperature**2 * kl(targets[h], softmax(LOGITS[h], temperature)) for h in range(K))
    result = cl_ilr_loss(tensor(LOGITS), LABELS_T, temperature, beta, average)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)


def test_cl_ilr_targets_are_constants():
    temperature, beta = 2.0, 0.5
    logits = tensor(LOGITS, grad=True)
    cl_ilr_loss(logits, LABELS_T, temperature, beta).loss.backward()
    targets = _cl_targets("logits", temperature)
    for h in range(K):
        expected = ((1 - beta) * (softmax(LOGITS[h]) - onehot(LABELS)) / B
                    + beta * temperature * (softmax(LOGITS[h], temperature) - targets[h]) / B)
        np.testing.assert_allclose(logits.grad[h].numpy(), expected, rtol=1e-9, atol=1e-12)


def test_cl_ilr_two_readings_differ():
    a = cl_ilr_targets(tensor(LOGITS), 2.0, "logits")
    b = cl_ilr_targets(tensor(LOGITS), 2.0, "probs")
    assert not torch.allclose(a, b)


# --------------------------------------------------------------------------- OKDDip
QUERIES = RNG.normal(size=(K, B, 2))
KEYS = RNG.normal(size=(K, B, 2))
LEADER = RNG.normal(size=(B, C)) * 2.0


def _attention(include_self):
    a = np.zeros((B, K, K))
    for b in range(B):
        for i in range(K):
            cols = [j for j in range(K) if include_self or j != i]
            energies = np.array([QUERIES[i, b] @ KEYS[j, b] for j in cols])
            weights = np.exp(energies) / np.exp(energies).sum()
            for j, w in zip(cols, weights):
                a[b, i, j] = w
    return a


@pytest.mark.parametrize("include_self", [False, True])
def test_peer_attention_matches_hand_softmax(include_self):
    got = peer_attention(tensor(QUERIES), tensor(KEYS), include_self).numpy()
    np.testing.assert_allclose(got, _attention(include_self), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)
    if not include_self:
        assert np.all(np.diagonal(got, axis1=1, axis2=2) == 0)


@pytest.mark.parametrize("include_self", [False, True])
def test_okddip_loss_matches_hand_value(include_self):
    temperature, weight = 3.0, 0.8
    a = _attention(include_self)
    targets = np.zeros((K, B, C))
    for i, b, j in itertools.product(range(K), range(B), range(K)):
        targets[i, b] += a[b, i, j] * LOGITS[j, b]
    np.testing.assert_allclose(okddip_targets(tensor(LOGITS), tensor(a)).numpy(), targets, rtol=1e-10)
    leader_target = LOGITS.mean(0)
    kl_peers = sum(kl(softmax(targets[i], temperature), softmax(LOGITS[i], temperature)) for i in range(K))
    kl_leader = kl(softmax(leader_target, temperature), softmax(LEADER, temperature))
    expected = (sum(ce(LOGITS[i], LABELS) for i in range(K)) + ce(LEADER, LABELS)
                + weight * temperature**2 * (kl_peers + kl_leader))
    result = okddip_loss(tensor(LOGITS), tensor(LEADER), tensor(a), LABELS_T, temperature, weight)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)
    assert result.parts["kl_leader"].item() == pytest.approx(temperature**2 * kl_leader, rel=1e-10)


def _okddip_grads(detach):
    logits, leader = tensor(LOGITS, grad=True), tensor(LEADER, grad=True)
    queries, keys = tensor(QUERIES, grad=True), tensor(KEYS, grad=True)
    attention = peer_attention(queries, keys)
    okddip_loss(logits, leader, attention, LABELS_T, 3.0, 1.0, detach).loss.backward()
    return logits.grad, leader.grad, queries.grad, keys.grad


def test_okddip_detach_all_makes_every_target_constant():
    temperature = 3.0
    logits_grad, leader_grad, q_grad, k_grad = _okddip_grads("all")
    assert q_grad is None and k_grad is None  # the attention gets no gradient at all
    a = _attention(False)
    targets = np.einsum("bij,jbc->ibc", a, LOGITS)
    for i in range(K):
        expected = ((softmax(LOGITS[i]) - onehot(LABELS)) / B
                    + temperature * (softmax(LOGITS[i], temperature) - softmax(targets[i], temperature)) / B)
        np.testing.assert_allclose(logits_grad[i].numpy(), expected, rtol=1e-9, atol=1e-12)
    leader_expected = ((softmax(LEADER) - onehot(LABELS)) / B
                       + temperature * (softmax(LEADER, temperature) - softmax(LOGITS.mean(0), temperature)) / B)
    np.testing.assert_allclose(leader_grad.numpy(), leader_expected, rtol=1e-9, atol=1e-12)


def test_okddip_detach_logits_trains_the_attention_but_not_through_the_peers():
    all_grads, logit_grads, none_grads = _okddip_grads("all"), _okddip_grads("logits"), _okddip_grads("none")
    # "logits": the peers' gradients are those of constant targets, the attention learns
    torch.testing.assert_close(logit_grads[0], all_grads[0])
    torch.testing.assert_close(logit_grads[1], all_grads[1])
    assert logit_grads[2].abs().sum() > 0 and logit_grads[3].abs().sum() > 0
    # "none" (the authors' code): the peers are also pulled through the targets; the leader's own gradient
    # does not change (its target is made of the peers only)
    assert not torch.allclose(none_grads[0], all_grads[0])
    torch.testing.assert_close(none_grads[1], all_grads[1])
    torch.testing.assert_close(none_grads[2], logit_grads[2])


# --------------------------------------------------------------------------- KDCL
def test_min_logit_teacher_definition():
    expected = np.zeros((B, C))
    for b in range(B):
        for c in range(C):
            expected[b, c] = min(LOGITS[k, b, c] - LOGITS[k, b, LABELS[b]] for k in range(K))
    got = min_logit_teacher(tensor(LOGITS, grad=True), LABELS_T)
    assert not got.requires_grad
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert np.all(got.numpy()[np.arange(B), LABELS] == 0)
    # never a worse cross-entropy than any member, item by item
    for b in range(B):
        teacher_ce = -math.log(softmax(expected[b])[LABELS[b]])
        assert all(teacher_ce <= -math.log(softmax(LOGITS[k, b])[LABELS[b]]) + 1e-12 for k in range(K))
    with pytest.raises(ValueError, match="label for every item"):
        min_logit_teacher(tensor(LOGITS), torch.tensor([0, -1, 1, 2]))


def _combined_ce(w, logits=LOGITS, labels=LABELS):
    return ce(np.einsum("k,kbc->bc", w, logits), labels)


def test_linear_teacher_weights_are_on_the_simplex_and_optimal():
    w = linear_teacher_weights(tensor(LOGITS), LABELS_T).numpy()
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
    best = _combined_ce(w)
    # no point of a fine grid of the simplex does better
    steps = 60
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            grid = np.array([i, j, steps - i - j]) / steps
            assert best <= _combined_ce(grid) + 1e-9
    # first-order optimality: the gradient is smallest, and equal, on the support
    grad = np.array([np.mean(np.sum((softmax(np.einsum("k,kbc->bc", w, LOGITS)) - onehot(LABELS)) * LOGITS[k], -1))
                     for k in range(K)])
    support = w > 1e-6
    assert np.ptp(grad[support]) < 1e-5
    assert np.all(grad[~support] >= grad[support].min() - 1e-6)


def test_linear_teacher_puts_the_weight_on_a_member_that_is_always_right():
    right = onehot(LABELS) * 6.0
    wrong = np.roll(right, 1, axis=1)
    logits = np.stack([wrong, right, np.zeros((B, C))])
    w = linear_teacher_weights(tensor(logits), LABELS_T).numpy()
    np.testing.assert_allclose(w, [0.0, 1.0, 0.0], atol=1e-6)
    teacher = linear_teacher(tensor(logits), LABELS_T)
    np.testing.assert_allclose(teacher.numpy(), np.einsum("k,kbc->bc", w, logits), atol=1e-9)


def test_generalization_weights_are_fitted_on_held_out_data():
    val_logits, val_labels = RNG.normal(size=(K, 12, C)) * 3.0, RNG.integers(0, C, size=12)
    w = generalization_weights(tensor(val_logits), torch.tensor(val_labels))
    torch.testing.assert_close(w, linear_teacher_weights(tensor(val_logits), torch.tensor(val_labels)))
    teacher = weighted_teacher(tensor(LOGITS), w)
    np.testing.assert_allclose(teacher.numpy(), np.einsum("k,kbc->bc", w.numpy(), LOGITS), rtol=1e-12)


def test_kdcl_loss_matches_hand_value_and_keeps_the_teacher_constant():
    temperature, weight = 2.0, 0.5
    teacher = min_logit_teacher(tensor(LOGITS), LABELS_T)
    t = teacher.numpy()
    expected = sum(ce(LOGITS[k], LABELS) + weight * temperature**2 * kl(softmax(t, temperature),
                                                                         softmax(LOGITS[k], temperature))
                   for k in range(K))
    logits = tensor(LOGITS, grad=True)
    result = kdcl_loss(list(logits.unbind(0)), teacher, LABELS_T, temperature, weight)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)
    result.loss.backward()
    for k in range(K):
        grad = ((softmax(LOGITS[k]) - onehot(LABELS)) / B
                + weight * temperature * (softmax(LOGITS[k], temperature) - softmax(t, temperature)) / B)
        np.testing.assert_allclose(logits.grad[k].numpy(), grad, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- PCL
ENSEMBLE = RNG.normal(size=(B, C)) * 2.0
MEANS = LOGITS + RNG.normal(size=(K, B, C)) * 0.5


@pytest.mark.parametrize("peers", ["others", "self"])
def test_pcl_loss_matches_hand_value(peers):
    temperature, alpha, beta = 3.0, 0.6, 0.3
    p = [softmax(LOGITS[k], temperature) for k in range(K)]
    p_mean = [softmax(MEANS[k], temperature) for k in range(K)]
    if peers == "others":
        mean_term = sum(kl(p_mean[l], p[k]) for k in range(K) for l in range(K) if l != k) / (K - 1)
    else:
        mean_term = sum(kl(p_mean[k], p[k]) for k in range(K))
    ensemble_term = sum(kl(softmax(ENSEMBLE, temperature), p[k]) for k in range(K))
    expected = (sum(ce(LOGITS[k], LABELS) for k in range(K)) + ce(ENSEMBLE, LABELS)
                + alpha * temperature**2 * ensemble_term + beta * temperature**2 * mean_term)
    result = pcl_loss(tensor(LOGITS), tensor(ENSEMBLE), tensor(MEANS), LABELS_T, temperature, alpha, beta, peers)
    assert result.loss.item() == pytest.approx(expected, rel=1e-10)
    assert result.parts["kl_mean"].item() == pytest.approx(temperature**2 * mean_term, rel=1e-10)
    assert peer_mean_kl(tensor(LOGITS), tensor(MEANS), temperature, peers).item() == pytest.approx(
        temperature**2 * mean_term, rel=1e-10)


def test_pcl_teachers_are_constant_where_the_paper_says():
    temperature = 3.0
    logits, ensemble, means = tensor(LOGITS, grad=True), tensor(ENSEMBLE, grad=True), tensor(MEANS, grad=True)
    pcl_loss(logits, ensemble, means, LABELS_T, temperature).loss.backward()
    assert means.grad is None  # the temporal mean is never trained by gradient
    # the ensemble teacher learns from its CE alone
    np.testing.assert_allclose(ensemble.grad.numpy(), (softmax(ENSEMBLE) - onehot(LABELS)) / B, rtol=1e-9)
    # a branch: CE + T(p_k − p_e)/B + T(p_k − mean of the other temporal means' p)/B
    for k in range(K):
        others = sum(softmax(MEANS[l], temperature) for l in range(K) if l != k) / (K - 1)
        expected = ((softmax(LOGITS[k]) - onehot(LABELS)) / B
                    + temperature * (softmax(LOGITS[k], temperature) - softmax(ENSEMBLE, temperature)) / B
                    + temperature * (softmax(LOGITS[k], temperature) - others) / B)
        np.testing.assert_allclose(logits.grad[k].numpy(), expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- EMA and ramp-ups
def _small_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("buffers", ["copy", "average", "keep"])
def test_ema_update_is_exact(buffers):
    ema, model = _small_net(0), _small_net(1)
    model.train()(torch.randn(8, 3))  # move the model's running statistics away from the EMA copy's
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    new = {k: v.clone() for k, v in model.state_dict().items()}
    decay = 0.9
    ema_update(ema, model, decay, buffers)
    got = ema.state_dict()
    for name, value in got.items():
        is_param = name in dict(ema.named_parameters())
        if is_param or (buffers == "average" and value.is_floating_point()):
            want = decay * old[name] + (1 - decay) * new[name]
        elif buffers == "keep":
            want = old[name]
        else:
            want = new[name]
        torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(model.state_dict()["0.weight"], new["0.weight"])  # the source is not touched


def test_ema_update_with_decay_zero_copies_and_checks_its_arguments():
    ema, model = _small_net(0), _small_net(1)
    ema_update(ema, model, 0.0)
    for (name, a), b in zip(ema.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="decay"):
            ema_update(ema, model, bad)
    with pytest.raises(ValueError, match="buffers"):
        ema_update(ema, model, 0.5, "mean")
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Sequential(nn.Linear(3, 4)), model, 0.5)


def test_ema_decay_and_sigmoid_rampup_values():
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.5 and ema_decay(9) == pytest.approx(0.9)
    assert ema_decay(10**6) == 0.999 and ema_decay(10**6, 0.99) == 0.99
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(200, 80) == 1.0 and sigmoid_rampup(3, 0) == 1.0


# --------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("call,name", [
    (lambda: one_loss(tensor(LOGITS), tensor(GATE), LABELS_T, temperature=0.0), "temperature"),
    (lambda: one_loss(tensor(LOGITS), tensor(GATE), LABELS_T, kl_weight=-1.0), "kl_weight"),
    (lambda: cl_ilr_loss(tensor(LOGITS), LABELS_T, -2.0), "temperature"),
    (lambda: cl_ilr_loss(tensor(LOGITS), LABELS_T, 2.0, beta=1.5), "beta"),
    (lambda: cl_ilr_loss(tensor(LOGITS), LABELS_T, 2.0, average="mean"), "average"),
    (lambda: cl_ilr_loss(tensor(LOGITS[:1]), LABELS_T, 2.0), "at least 2"),
    (lambda: okddip_loss(tensor(LOGITS), tensor(LEADER), tensor(_attention(False)), LABELS_T, float("inf")),
     "temperature"),
    (lambda: okddip_loss(tensor(LOGITS), tensor(LEADER), tensor(_attention(False)), LABELS_T, detach="some"),
     "detach"),
    (lambda: kdcl_loss(tensor(LOGITS), tensor(ENSEMBLE), LABELS_T, 0), "temperature"),
    (lambda: pcl_loss(tensor(LOGITS), tensor(ENSEMBLE), tensor(MEANS), LABELS_T, 3.0, mean_weight=-0.1),
     "mean_weight"),
    (lambda: pcl_loss(tensor(LOGITS), tensor(ENSEMBLE), tensor(MEANS), LABELS_T, 3.0, peers="all"), "peers"),
    (lambda: one_loss(tensor(LOGITS[0]), tensor(GATE), LABELS_T), r"\[K, B, C\]"),
    (lambda: sigmoid_rampup(1, -1), "length"),
])
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_unlabelled_items_are_left_out_of_the_cross_entropies():
    labels = torch.tensor([0, -1, 1, -1])
    kept = np.array([0, 2])
    result = kdcl_loss(tensor(LOGITS), tensor(ENSEMBLE), labels, 1.0)
    expected_ce = sum(ce(LOGITS[k][kept], np.array([0, 1])) for k in range(K))
    assert result.parts["ce"].item() == pytest.approx(expected_ce, rel=1e-10)


def test_cl_ilr_targets_with_a_graph_keep_the_value_and_change_the_gradient():
    detached, attached = tensor(LOGITS, grad=True), tensor(LOGITS, grad=True)
    a = cl_ilr_loss(detached, LABELS_T, 2.0, 0.5)
    b = cl_ilr_loss(attached, LABELS_T, 2.0, 0.5, detach_targets=False)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)
    a.loss.backward()
    b.loss.backward()
    assert not torch.allclose(detached.grad, attached.grad)
