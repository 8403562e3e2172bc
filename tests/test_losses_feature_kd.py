"""Feature, relational and logit-relation distillation losses (issue 26.2): each against values computed here
independently (numpy and plain loops, float64), the paper-vs-code readings and their factors, the invariances the
papers claim, gradients (the teacher gets none), argument checks, and CRD's memory banks."""

import itertools
import math

import numpy as np
import pytest
import torch

from peerlearn.losses import (FEATURE_LOSS_WEIGHTS, CRDLoss, HintRegressor, attention_map, attention_transfer_loss,
                              dist_loss, dist_terms, dkd_loss, dkd_terms, dkd_warmup, hint_loss, kl_to_target,
                              nce_critic_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss, rkd_loss,
                              similarity_preserving_loss, soft_probs)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


# --- independent references ----------------------------------------------------------------------------------


def _np(x):
    return x.detach().numpy().astype(np.float64)


def _huber(d):
    d = abs(d)
    return 0.5 * d * d if d <= 1 else d - 0.5


def _softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


# --- FitNets ---------------------------------------------------------------------------------------------------


def test_hint_loss_paper_and_mean_readings():
    s, t = _randn(3, 2, 2, 2, seed=1), _randn(3, 2, 2, 2, seed=2)
    diff = _np(s) - _np(t)
    per_item = [0.5 * sum(v * v for v in diff[n].ravel()) for n in range(3)]
    assert hint_loss(s, t).item() == pytest.approx(sum(per_item) / 3, rel=1e-12)
    mean = hint_loss(s, t, reduction="mean").item()
    assert mean == pytest.approx(float((diff**2).mean()), rel=1e-12)
    assert hint_loss(s, t).item() == pytest.approx(mean * 8 / 2, rel=1e-12)  # E = 8 elements per item


def test_hint_regressor_shapes_and_the_paper_kernel():
    reg = HintRegressor((4, 8, 8), (6, 5, 5))
    assert reg.map.kernel_size == (4, 4) and reg.map.padding == (0, 0)  # 8 − 5 + 1
    out = reg(torch.randn(2, 4, 8, 8))
    assert out.shape == (2, 6, 5, 5) and (out >= 0).all()  # ReLU like the hint layer
    assert HintRegressor((10,), (3,), activation=None)(torch.randn(4, 10)).shape == (4, 3)
    assert isinstance(HintRegressor((4, 8, 8), (6, 5, 5), batch_norm=True).norm, torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="at least as large"):
        HintRegressor((4, 4, 4), (6, 5, 5))
    with pytest.raises(ValueError, match="guided layer"):
        reg(torch.randn(2, 4, 7, 7))
    with pytest.raises(ValueError, match="same shape"):
        hint_loss(torch.randn(2, 3), torch.randn(2, 4))


# --- AT --------------------------------------------------------------------------------------------------------


def _at_reference(students, teachers, squared):
    total = 0.0
    for a_s, a_t in zip(students, teachers):
        a_s, a_t = _np(a_s), _np(a_t)
        n, _, h, w = a_s.shape
        layer = 0.0
        for i in range(n):
            q = []
            for a in (a_s[i], a_t[i]):
                m = np.array([[np.mean([a[c, y, x] ** 2 for c in range(a.shape[0])]) for x in range(w)]
                              for y in range(h)]).ravel()
                q.append(m / math.sqrt(sum(v * v for v in m)))
            d = math.sqrt(sum((u - v) ** 2 for u, v in zip(*q)))
            layer += d * d if squared else d
        total += layer / (n * h * w)
    return total


@pytest.mark.parametrize("squared", [False, True])
def test_attention_transfer_against_loops(squared):
    students = [_randn(2, 3, 4, 4, seed=3), _randn(2, 5, 2, 3, seed=4)]
    teachers = [_randn(2, 6, 4, 4, seed=5), _randn(2, 2, 2, 3, seed=6)]  # channels may differ
    got = attention_transfer_loss(students, teachers, squared=squared).item()
    assert got == pytest.approx(_at_reference(students, teachers, squared), rel=1e-12)


def test_attention_maps_are_unit_rows_and_scale_free():
    a = _randn(3, 4, 5, 5, seed=7)
    q = attention_map(a)
    assert q.shape == (3, 25)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(attention_map(3.5 * a), q)  # so channel sum and channel mean agree too
    t = _randn(3, 2, 5, 5, seed=8)
    torch.testing.assert_close(attention_transfer_loss(7.0 * a, t), attention_transfer_loss(a, t))
    with pytest.raises(ValueError, match="same N, H and W"):
        attention_transfer_loss(a, _randn(3, 2, 4, 4))


def test_attention_transfer_gradient_is_finite_when_maps_agree():
    a = _randn(2, 3, 4, 4, seed=9).requires_grad_()
    loss = attention_transfer_loss(a, a.detach().clone())
    (grad,) = torch.autograd.grad(loss, a)
    assert loss.item() == 0.0 and torch.isfinite(grad).all()


# --- SP --------------------------------------------------------------------------------------------------------


def _sp_reference(s, t):
    s, t = _np(s).reshape(len(s), -1), _np(t).reshape(len(t), -1)
    b = len(s)

    def gram_rows(q):
        g = [[float(np.dot(q[i], q[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

    gs, gt = gram_rows(s), gram_rows(t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def test_similarity_preserving_against_loops_and_its_invariances():
    s, t = _randn(5, 3, 2, 2, seed=10), _randn(5, 7, seed=11)
    got = similarity_preserving_loss(s, t)
    assert got.item() == pytest.approx(_sp_reference(s, t), rel=1e-12)
    assert similarity_preserving_loss([s, s], [t, t]).item() == pytest.approx(2 * got.item(), rel=1e-12)
    # scale and rotation of the student's activations leave the Gram rows unchanged
    rotation, _ = torch.linalg.qr(_randn(12, 12, seed=12))
    moved = (4.0 * s.flatten(1) @ rotation).view_as(s)
    assert similarity_preserving_loss(moved, t).item() == pytest.approx(got.item(), rel=1e-10)


# --- RKD -------------------------------------------------------------------------------------------------------


def _rkd_reference(s, t):
    s, t = _np(s).reshape(len(s), -1), _np(t).reshape(len(t), -1)
    b = len(s)

    def dist(e, i, j):
        return math.sqrt(sum((u - v) ** 2 for u, v in zip(e[i], e[j])))

    def mean_dist(e):
        pairs = [dist(e, i, j) for i in range(b) for j in range(b) if i != j]
        return sum(pairs) / len(pairs)

    mu_s, mu_t = mean_dist(s), mean_dist(t)
    distance_sum = sum(_huber(dist(t, i, j) / mu_t - dist(s, i, j) / mu_s)
                       for i in range(b) for j in range(b) if i != j)

    def cos(e, i, j, k):
        u, v = e[i] - e[j], e[k] - e[j]
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    angle_sum = sum(_huber(cos(t, i, j, k) - cos(s, i, j, k))
                    for i, j, k in itertools.product(range(b), repeat=3) if len({i, j, k}) == 3 or (i == k != j))
    return distance_sum, angle_sum


def test_rkd_against_loops_in_both_readings():
    s, t = _randn(5, 4, seed=13), 3.0 * _randn(5, 6, seed=14)  # distances beyond 1: both Huber branches
    distance_sum, angle_sum = _rkd_reference(s, t)
    assert rkd_distance_loss(s, t, reduction="sum").item() == pytest.approx(distance_sum, rel=1e-10)
    assert rkd_angle_loss(s, t, reduction="sum").item() == pytest.approx(angle_sum, rel=1e-10)
    # the authors' code averages over b² pairs and b³ triplets (degenerate ones contribute 0)
    assert rkd_distance_loss(s, t).item() == pytest.approx(distance_sum / 25, rel=1e-10)
    assert rkd_angle_loss(s, t).item() == pytest.approx(angle_sum / 125, rel=1e-10)
    assert rkd_loss(s, t).item() == pytest.approx(25 * distance_sum / 25 + 50 * angle_sum / 125, rel=1e-10)


def test_rkd_is_scale_and_translation_invariant():
    s, t = _randn(6, 4, seed=15), _randn(6, 3, seed=16)
    base = rkd_loss(s, t).item()
    assert rkd_loss(5.0 * s + 2.0, t).item() == pytest.approx(base, rel=1e-10)
    assert rkd_loss(s, 0.1 * t - 1.0).item() == pytest.approx(base, rel=1e-10)
    assert rkd_loss(s, 0.5 * s).item() == pytest.approx(0.0, abs=1e-12)


# --- PKT -------------------------------------------------------------------------------------------------------


def _pkt_reference(s, t, variant, eps=1e-7):
    s, t = _np(s).reshape(len(s), -1), _np(t).reshape(len(t), -1)
    b = len(s)

    def kernel(e, i, j):
        if variant == "code":
            a, c = e[i] / (np.linalg.norm(e[i]) + eps), e[j] / (np.linalg.norm(e[j]) + eps)
            return (float(np.dot(a, c)) + 1) / 2
        return (float(np.dot(e[i], e[j]) / (np.linalg.norm(e[i]) * np.linalg.norm(e[j]))) + 1) / 2

    total = 0.0
    for i in range(b):
        others = [j for j in range(b) if variant == "code" or j != i]
        zs, zt = sum(kernel(s, i, k) for k in others), sum(kernel(t, i, k) for k in others)
        for j in others:
            p, q = kernel(t, i, j) / zt, kernel(s, i, j) / zs
            total += p * math.log((p + eps) / (q + eps)) if variant == "code" else p * math.log(p / q)
    return total / (b * b) if variant == "code" else total


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_pkt_against_loops(variant):
    s, t = _randn(5, 4, seed=17), _randn(5, 2, 3, seed=18)
    assert pkt_loss(s, t, variant=variant).item() == pytest.approx(_pkt_reference(s, t, variant), rel=1e-9)


def test_pkt_is_zero_for_the_same_cosines_and_scale_invariant():
    s, t = _randn(6, 4, seed=19), _randn(6, 5, seed=20)
    assert pkt_loss(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-12)
    assert pkt_loss(2.0 * s, t).item() == pytest.approx(pkt_loss(s, t).item(), rel=1e-12)


# --- DKD -------------------------------------------------------------------------------------------------------


def _dkd_reference(z_s, z_t, labels, alpha, beta, temperature, t_squared=True):
    tckd = nckd = 0.0
    rows = [n for n in range(len(labels)) if labels[n] >= 0]
    for n in rows:
        ps, pt, c = _softmax(_np(z_s)[n] / temperature), _softmax(_np(z_t)[n] / temperature), int(labels[n])
        tckd += pt[c] * math.log(pt[c] / ps[c]) + (1 - pt[c]) * math.log((1 - pt[c]) / (1 - ps[c]))
        hs = [ps[i] / (1 - ps[c]) for i in range(len(ps)) if i != c]
        ht = [pt[i] / (1 - pt[c]) for i in range(len(pt)) if i != c]
        nckd += sum(a * math.log(a / b) for a, b in zip(ht, hs))
    scale = temperature**2 if t_squared else 1.0
    tckd, nckd = scale * tckd / len(rows), scale * nckd / len(rows)
    return alpha * tckd + beta * nckd, tckd, nckd


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_against_loops(temperature):
    z_s, z_t = 2.0 * _randn(6, 5, seed=21), 3.0 * _randn(6, 5, seed=22)
    labels = torch.tensor([0, 4, 2, -1, 1, 2])  # the unlabelled item is left out
    got = dkd_terms(z_s, z_t, labels, alpha=1.0, beta=8.0, temperature=temperature)
    loss, tckd, nckd = _dkd_reference(z_s, z_t, labels.tolist(), 1.0, 8.0, temperature)
    assert (got.loss.item(), got.tckd.item(), got.nckd.item()) == pytest.approx((loss, tckd, nckd), rel=1e-10)
    plain = dkd_loss(z_s, z_t, labels, 0.5, 2.0, temperature, t_squared=False).item()
    assert plain == pytest.approx(_dkd_reference(z_s, z_t, labels.tolist(), 0.5, 2.0, temperature, False)[0],
                                  rel=1e-10)
    assert got.loss.item() == pytest.approx(temperature**2 * dkd_loss(z_s, z_t, labels, 1.0, 8.0, temperature,
                                                                       t_squared=False).item(), rel=1e-12)


def test_dkd_reformulates_kd_as_the_paper_states():
    """KD = TCKD + (1 − p_t^T) · NCKD, per item (the paper's eq. 1)."""
    z_s, z_t, labels = _randn(4, 6, seed=23), _randn(4, 6, seed=24), torch.tensor([1, 0, 5, 3])
    for n in range(4):
        row = slice(n, n + 1)
        parts = dkd_terms(z_s[row], z_t[row], labels[row], temperature=2.0, t_squared=False)
        p_target = soft_probs(z_t[row], 2.0)[0, labels[n]]
        kd = kl_to_target(soft_probs(z_t[row], 2.0), z_s[row], 2.0)
        assert kd.item() == pytest.approx((parts.tckd + (1 - p_target) * parts.nckd).item(), rel=1e-10)


def test_dkd_stays_finite_with_saturated_logits_and_warms_up():
    z_s = torch.tensor([[300.0, -300.0, 0.0]], requires_grad=True)
    z_t = torch.tensor([[-300.0, 300.0, 0.0]])
    loss = dkd_loss(z_s, z_t, torch.tensor([0]), temperature=1.0)
    (grad,) = torch.autograd.grad(loss, z_s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert dkd_loss(z_s, z_t, torch.tensor([-1])).item() == 0.0  # nothing labelled
    assert [dkd_warmup(e) for e in (1, 10, 20, 40)] == [0.05, 0.5, 1.0, 1.0] and dkd_warmup(3, 0) == 1.0


# --- DIST ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dist_against_numpy_correlations(temperature):
    z_s, z_t = _randn(6, 4, seed=25), 2.0 * _randn(6, 4, seed=26)
    ys = np.array([_softmax(r / temperature) for r in _np(z_s)])
    yt = np.array([_softmax(r / temperature) for r in _np(z_t)])
    inter = temperature**2 * np.mean([1 - _pearson(ys[i], yt[i]) for i in range(6)])
    intra = temperature**2 * np.mean([1 - _pearson(ys[:, j], yt[:, j]) for j in range(4)])
    got = dist_terms(z_s, z_t, beta=2.0, gamma=0.5, temperature=temperature)
    assert got.inter.item() == pytest.approx(inter, rel=1e-6)  # the code's eps = 1e-8 in the denominator
    assert got.intra.item() == pytest.approx(intra, rel=1e-6)
    assert got.loss.item() == pytest.approx(2.0 * inter + 0.5 * intra, rel=1e-6)


def test_dist_is_zero_for_the_same_predictions():
    z = _randn(5, 4, seed=27)
    # 1 − ρ = eps / (‖a − ā‖² + eps) with the code's eps = 1e-8: about 1e-7 for probabilities; 0 without it
    assert dist_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert dist_terms(z + 3.0, z, eps=0.0).loss.item() == pytest.approx(0.0, abs=1e-12)  # softmax: shift-invariant


# --- CRD -------------------------------------------------------------------------------------------------------


def _nce_reference(pos, neg, temperature, num_data, log_z=0.0):
    k = len(neg[0])

    def h(u):
        e = math.exp(u / temperature - log_z)
        return e / (e + k / num_data)

    total = 0.0
    for p, row in zip(pos, neg):
        total += math.log(h(p)) + sum(math.log(1 - h(u)) for u in row)
    return -total / len(pos)


def test_nce_critic_loss_against_the_formula():
    pos, neg = torch.tensor([0.9, 0.2, -0.4], dtype=torch.float64), _randn(3, 4, seed=28).tanh()
    for log_z in (None, 2.5):
        got = nce_critic_loss(pos, neg, 0.5, 20, None if log_z is None else torch.tensor(log_z))
        assert got.item() == pytest.approx(_nce_reference(pos.tolist(), neg.tolist(), 0.5, 20, log_z or 0.0),
                                           rel=1e-12)
    at_paper_temperature = nce_critic_loss(pos, neg, 0.07, 20)  # e^{u/0.07} up to e^{14}: finite
    assert torch.isfinite(at_paper_temperature)


def _crd(variant="paper", num_data=12, negatives=4, momentum=0.5):
    torch.manual_seed(0)
    return CRDLoss(6, 5, num_data, feature_dim=3, num_negatives=negatives, temperature=0.5, momentum=momentum,
                   variant=variant).double()


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_crd_module_against_an_independent_computation():
    crd = _crd(momentum=0.25)  # not 0.5, so that μ and 1 − μ cannot be swapped unnoticed
    f_s, f_t = _randn(3, 6, seed=29), _randn(3, 5, seed=30)
    idx, neg = torch.tensor([2, 7, 0]), torch.tensor([[1, 3, 4, 5], [0, 2, 11, 9], [6, 8, 10, 1]])
    banks = {name: _np(getattr(crd, name)).copy() for name in ("student_bank", "teacher_bank")}
    g_s = _unit(_np(f_s) @ _np(crd.embed_student.linear.weight).T + _np(crd.embed_student.linear.bias))
    g_t = _unit(_np(f_t) @ _np(crd.embed_teacher.linear.weight).T + _np(crd.embed_teacher.linear.bias))
    pos = [float(np.dot(g_t[n], g_s[n])) for n in range(3)]
    teacher_anchor = _nce_reference(pos, [[float(np.dot(g_t[n], banks["student_bank"][k])) for k in neg[n]]
                                          for n in range(3)], 0.5, 12)
    student_anchor = _nce_reference(pos, [[float(np.dot(g_s[n], banks["teacher_bank"][k])) for k in neg[n]]
                                          for n in range(3)], 0.5, 12)
    loss = crd(f_s, f_t, idx, neg)
    assert loss.item() == pytest.approx(teacher_anchor + student_anchor, rel=1e-10)
    # the banks moved: m ← normalise(μ · m + (1 − μ) · v) at the batch's rows, nothing else changed
    for name, v in (("student_bank", g_s), ("teacher_bank", g_t)):
        expected = banks[name].copy()
        expected[idx.numpy()] = _unit(0.25 * banks[name][idx.numpy()] + 0.75 * v)
        np.testing.assert_allclose(_np(getattr(crd, name)), expected, rtol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(_np(getattr(crd, name))[idx.numpy()], axis=1), 1.0, rtol=1e-12)


def test_crd_code_variant_scores_bank_positives_and_fixes_z_once():
    crd = _crd("code")
    f_s, f_t = _randn(2, 6, seed=31), _randn(2, 5, seed=32)
    idx, neg = torch.tensor([3, 5]), torch.tensor([[3, 1, 2, 0], [4, 5, 6, 7]])  # own index allowed as negative
    sb, tb = _np(crd.student_bank).copy(), _np(crd.teacher_bank).copy()
    g_s = _unit(_np(f_s) @ _np(crd.embed_student.linear.weight).T + _np(crd.embed_student.linear.bias))
    g_t = _unit(_np(f_t) @ _np(crd.embed_teacher.linear.weight).T + _np(crd.embed_teacher.linear.bias))
    expected = 0.0
    for anchor, bank in ((g_t, sb), (g_s, tb)):
        scores = [[float(np.dot(anchor[n], bank[k])) for k in [idx[n].item()] + neg[n].tolist()] for n in range(2)]
        log_z = math.log(np.mean(np.exp(np.array(scores) / 0.5)) * 12)  # Z = M · mean e(u), first batch
        expected += _nce_reference([r[0] for r in scores], [r[1:] for r in scores], 0.5, 12, log_z)
    assert crd(f_s, f_t, idx, neg).item() == pytest.approx(expected, rel=1e-10)
    fixed = crd.log_normalizer.clone()
    assert torch.isfinite(fixed).all()
    crd(_randn(2, 6, seed=33), _randn(2, 5, seed=34), idx, neg)
    assert torch.equal(crd.log_normalizer, fixed)  # kept after the first batch


def test_crd_negatives_skip_the_item_in_the_paper_variant():
    crd = CRDLoss(4, 4, num_data=5, feature_dim=2, num_negatives=400, variant="paper")
    idx = torch.tensor([0, 2, 4])
    neg = crd.sample_negatives(idx)
    assert neg.shape == (3, 400) and (neg != idx[:, None]).all() and neg.min() >= 0 and neg.max() <= 4
    assert all(set(neg[n].tolist()) == set(range(5)) - {idx[n].item()} for n in range(3))  # uniform over the rest


def test_crd_both_scoring_paths_agree():
    crd = _crd(num_data=50, negatives=4)  # M = 50 > K·D = 12: rows gathered
    anchor, neg = torch.nn.functional.normalize(_randn(3, 3, seed=35), dim=1), torch.randint(50, (3, 4))
    gathered = crd.negative_scores(anchor, crd.student_bank, neg)
    whole = (anchor @ crd.student_bank.T).gather(1, neg)
    torch.testing.assert_close(gathered, whole)


def test_crd_banks_are_checkpointed_and_measured():
    crd = CRDLoss(8, 6, num_data=100, feature_dim=16, num_negatives=10, variant="code")
    crd(torch.randn(4, 8), torch.randn(4, 6), torch.tensor([1, 2, 3, 4]))
    assert crd.bank_bytes() == 2 * 100 * 16 * 4  # N × D × 2 float32
    state = crd.state_dict()
    assert sum(state[k].numel() * state[k].element_size() for k in ("student_bank", "teacher_bank")) == crd.bank_bytes()
    restored = CRDLoss(8, 6, num_data=100, feature_dim=16, num_negatives=10, variant="code")
    restored.load_state_dict(state)
    for key, value in crd.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, equal_nan=True)
    f_s, f_t, idx, neg = torch.randn(4, 8), torch.randn(4, 6), torch.tensor([5, 6, 7, 8]), torch.randint(100, (4, 10))
    crd.eval(), restored.eval()
    torch.testing.assert_close(restored(f_s, f_t, idx, neg), crd(f_s, f_t, idx, neg))
    before = crd.student_bank.clone()
    crd(f_s, f_t, idx, neg)
    assert torch.equal(crd.student_bank, before)  # eval mode: the banks stay


def test_crd_settings_are_checked():
    with pytest.raises(ValueError, match="momentum"):
        CRDLoss(4, 4, 10, momentum=1.0)
    with pytest.raises(ValueError, match="temperature"):
        CRDLoss(4, 4, 10, temperature=0.0)
    with pytest.raises(ValueError, match="num_negatives"):
        CRDLoss(4, 4, 10, num_negatives=0)
    with pytest.raises(ValueError, match="variant"):
        CRDLoss(4, 4, 10, variant="other")
    with pytest.raises(ValueError, match="indices must be int64"):
        CRDLoss(4, 4, 10)(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0.0, 1.0]))


# --- gradients: the student gets one, the teacher none ---------------------------------------------------------


def _feature_maps():
    return _randn(4, 3, 4, 4, seed=36), _randn(4, 5, 4, 4, seed=37)


CASES = {
    "at": lambda s, t: attention_transfer_loss(s, t),
    "sp": lambda s, t: similarity_preserving_loss(s, t),
    "rkd": lambda s, t: rkd_loss(s.flatten(1), t.flatten(1)),
    "pkt_paper": lambda s, t: pkt_loss(s, t),
    "pkt_code": lambda s, t: pkt_loss(s, t, variant="code"),
}


@pytest.mark.parametrize("name", ["at", "sp", "rkd", "pkt_paper", "pkt_code"])
def test_feature_losses_give_the_student_a_gradient_and_the_teacher_none(name):
    s, t = (x.requires_grad_() for x in _feature_maps())
    CASES[name](s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_hint_and_logit_losses_give_the_teacher_no_gradient():
    reg = HintRegressor((3, 4, 4), (5, 2, 2)).double()
    s, t = _feature_maps()
    s.requires_grad_()
    hint = torch.randn(4, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    hint_loss(reg(s), hint).backward()
    assert hint.grad is None and s.grad.abs().sum() > 0 and reg.map.weight.grad.abs().sum() > 0
    labels = torch.tensor([0, 1, 2, 3])
    for loss in (lambda z, v: dkd_loss(z, v, labels), lambda z, v: dist_loss(z, v)):
        z, v = _randn(4, 5, seed=38).requires_grad_(), _randn(4, 5, seed=39).requires_grad_()
        loss(z, v).backward()
        assert v.grad is None and z.grad.abs().sum() > 0


def test_crd_gradient_reaches_the_student_and_both_heads_not_the_teacher():
    crd = _crd()
    f_s, f_t = _randn(3, 6, seed=40).requires_grad_(), _randn(3, 5, seed=41).requires_grad_()
    crd(f_s, f_t, torch.tensor([0, 1, 2])).backward()
    assert f_t.grad is None and f_s.grad.abs().sum() > 0
    assert crd.embed_teacher.linear.weight.grad.abs().sum() > 0  # the teacher's head belongs to the critic
    assert not any(b.requires_grad for b in crd.buffers())


# --- argument checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, argument", [
    (lambda: dkd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), temperature=0.0), "temperature"),
    (lambda: dkd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), beta=float("nan")), "beta"),
    (lambda: dkd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1])), "teacher_logits"),
    (lambda: dkd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0])), "labels"),
    (lambda: dist_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=-1.0), "temperature"),
    (lambda: dist_loss(torch.randn(2, 3), torch.randn(2, 3), gamma=float("inf")), "gamma"),
    (lambda: rkd_loss(torch.randn(3, 2), torch.randn(4, 2)), "same number of items"),
    (lambda: rkd_loss(torch.randn(3, 2), torch.randn(3, 2), angle_weight=-1.0), "angle_weight"),
    (lambda: rkd_loss(torch.randn(3, 2), torch.randn(3, 2), reduction="batchmean"), "reduction"),
    (lambda: pkt_loss(torch.randn(3, 2), torch.randn(3, 2), variant="x"), "variant"),
    (lambda: similarity_preserving_loss([torch.randn(3, 2)], []), "teacher_features"),
    (lambda: attention_transfer_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), p=0), "p must"),
    (lambda: nce_critic_loss(torch.randn(3), torch.randn(3, 2), 0.07, 0), "num_data"),
    (lambda: dkd_warmup(-1), "epoch"),
])
def test_bad_arguments_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_paper_weights_cover_every_method():
    assert set(FEATURE_LOSS_WEIGHTS) == {"fitnets", "at", "sp", "rkd", "pkt", "crd", "dkd", "dist"}
    assert FEATURE_LOSS_WEIGHTS["at"] == 500.0 and FEATURE_LOSS_WEIGHTS["crd"] == 0.8
