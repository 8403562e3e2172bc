"""peerlearn.losses as a public API: saturation-safe Jensen–Shannon, the labelled mask, the K-member DML
losses, the centre-loss module, one distillation implementation, and the package's exports."""

import mpmath
import pytest
import torch

import peerlearn.losses as losses
from peerlearn.losses import (CenterLoss, center_loss, cross_entropy, distillation_loss, distillation_terms,
                              js_to_target, logit_matching, mutual_learning_losses, mutual_mimicry, soft_probs,
                              soft_target_loss, soft_targets, stacked_mutual_mimicry, teacher_probs)

mpmath.mp.dps = 60


def _js_reference(target, logits, temperature):
    """JS(t, softmax(z/T)) of one row and its gradient in z, with 60-digit arithmetic (independent of torch)."""
    t = [mpmath.mpf(v) for v in target]

    def value(z):
        scaled = [mpmath.mpf(v) / temperature for v in z]
        top = max(scaled)
        norm = mpmath.log(sum(mpmath.exp(v - top) for v in scaled)) + top
        p = [mpmath.exp(v - norm) for v in scaled]
        m = [(a + b) / 2 for a, b in zip(t, p)]
        kl = lambda a: sum(ai * mpmath.log(ai / mi) for ai, mi in zip(a, m) if ai > 0)  # noqa: E731
        return (kl(t) + kl(p)) / 2

    z = [mpmath.mpf(v) for v in logits]
    grad = []
    for i in range(len(z)):
        step = mpmath.mpf("1e-20")
        up, down = list(z), list(z)
        up[i] += step
        down[i] -= step
        grad.append((value(up) - value(down)) / (2 * step))
    return float(value(z)), [float(g) for g in grad]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_js_mimicry_stays_finite_and_exact_when_probabilities_saturate(temperature):
    """Issue 14.5: a logit gap far above 104·T made both probabilities 0 in one class; log(0) before the
    clamp gave NaN gradients. Row 0 saturates (gap 1000), row 1 does not."""
    peer = torch.tensor([[0.0, 1000.0, -1000.0], [0.3, -0.2, 1.0]])
    target = soft_probs(peer, temperature)
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [1.0, 0.5, -0.5]], requires_grad=True)
    value = js_to_target(target, logits, temperature)
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    rows = [_js_reference(target[n].tolist(), logits[n].tolist(), temperature) for n in range(2)]
    assert value.item() == pytest.approx(sum(v for v, _ in rows) / 2, rel=1e-6)
    expected_grad = torch.tensor([g for _, g in rows]) / 2  # batch mean
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert rows[0][0] == pytest.approx(0.6931471805599453, rel=1e-9)  # disjoint supports: JS = log 2


@pytest.mark.parametrize("teacher", ["peers", "ensemble"])
def test_js_through_the_cohort_functions_has_finite_gradients_at_saturation(teacher):
    stacked = torch.tensor([[[1000.0, 0.0, -1000.0]], [[0.0, 1000.0, -1000.0]], [[-1000.0, 0.0, 1000.0]]],
                           requires_grad=True)
    for term in (stacked_mutual_mimicry(stacked, 2.0, "js", teacher).sum(),
                 sum(mutual_mimicry(stacked[k], [soft_probs(stacked[l], 2.0) for l in range(3) if l != k], 2.0,
                                    "js", teacher) for k in range(3))):
        (grad,) = torch.autograd.grad(term, stacked)
        assert torch.isfinite(term) and torch.isfinite(grad).all()


def test_mask_keeps_only_the_chosen_rows():
    torch.manual_seed(0)
    z, peer = torch.randn(6, 4), soft_probs(torch.randn(6, 4))
    labels = torch.tensor([0, -1, 2, -1, 3, 1])
    keep = labels >= 0
    for divergence in ("kl", "js"):
        masked = mutual_mimicry(z, [peer], 2.0, divergence, mask=keep)
        assert masked.item() == pytest.approx(mutual_mimicry(z[keep], [peer[keep]], 2.0, divergence).item())
        stacked = stacked_mutual_mimicry(torch.stack([z, torch.randn(6, 4)]), 2.0, divergence, mask=keep)
        assert stacked.shape == (2,) and torch.isfinite(stacked).all()
    assert mutual_mimicry(z, [peer], mask=torch.zeros(6, dtype=torch.bool)).item() == 0.0


def test_mutual_learning_losses_are_ce_plus_weighted_mimicry_and_isolate_members():
    torch.manual_seed(1)
    members = [torch.nn.Linear(5, 3) for _ in range(3)]
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, -1, -1])
    logits = [m(x) for m in members]
    got = mutual_learning_losses(logits, y, weight=0.5, temperature=2.0)
    probs = [soft_probs(z, 2.0) for z in logits]
    for k in range(3):
        expected = cross_entropy(logits[k], y) + 0.5 * mutual_mimicry(logits[k], probs[:k] + probs[k + 1:], 2.0)
        assert got[k].item() == pytest.approx(expected.item(), rel=1e-6)
    # one backward of the sum gives each member the gradient of its own loss only
    sum(got).backward()
    alone = members[0].weight.grad.clone()
    members[0].zero_grad()
    mutual_learning_losses([m(x) for m in members], y, weight=0.5, temperature=2.0)[0].backward()
    torch.testing.assert_close(members[0].weight.grad, alone)


def test_center_loss_module_equals_the_function_and_moves_its_centres():
    module = CenterLoss(num_classes=3, feature_dim=2, alpha=0.5)
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    # centres at 0: rows give 1, 9, 4 -> ½ · mean = ½ · 14/3
    loss = module(features, labels)
    assert loss.item() == pytest.approx(0.5 * 14 / 3)
    # Wen et al. eq. 4: Δc_0 = (2·0 − (1 + 3)) / (1 + 2) = −4/3, c_0 ← 0 − 0.5·(−4/3) = 2/3 (x); c_1 = (0, 0.5)
    torch.testing.assert_close(module.centers, torch.tensor([[2 / 3, 0.0], [0.0, 0.5], [0.0, 0.0]]))
    loss.backward()
    assert features.grad is not None
    before = module.centers.clone()
    module.eval()
    assert module(features, labels).item() == pytest.approx(center_loss(features, labels, before).item())
    assert torch.equal(module.centers, before)  # no update outside training
    assert "centers" in module.state_dict()
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        module(torch.zeros(2, 5), labels[:2])


def test_distillation_terms_and_loss_are_one_implementation():
    torch.manual_seed(2)
    z, y = torch.randn(5, 4, requires_grad=True), torch.tensor([0, 1, -1, 3, 2])
    teachers = [torch.randn(5, 4), torch.randn(5, 4)]
    q = soft_targets(teachers, 3.0)
    torch.testing.assert_close(q, teacher_probs(teachers, 3.0))
    terms = distillation_terms(z, q, y, 3.0, 0.25)
    expected = 0.25 * cross_entropy(z, y) + 0.75 * soft_target_loss(z, q, 3.0)
    torch.testing.assert_close(terms.loss, expected)
    torch.testing.assert_close(distillation_loss(z, q, y, 3.0, 0.25), expected)
    torch.testing.assert_close(terms.soft, soft_target_loss(z, q, 3.0))
    # logit matching with the mean teacher logits, and a caller's own hard term
    v = soft_targets(teachers, soft_loss="logit_mse")
    torch.testing.assert_close(v, (teachers[0] + teachers[1]) / 2)
    hard = torch.tensor(2.0)
    got = distillation_loss(z, v, None, alpha=0.5, soft_loss="logit_mse", hard_loss=hard)
    torch.testing.assert_close(got, 0.5 * hard + 0.5 * logit_matching(z, v))
    with pytest.raises(ValueError, match="soft_loss"):
        distillation_loss(z, q, y, soft_loss="mse")


def test_the_distill_recipe_computes_its_loss_with_distillation_loss(tiny):
    """recipes/distill.py calls peerlearn.losses.distillation_terms; its student loss is distillation_loss."""
    from test_distill_recipe import _batches, _prepared, distill_config

    for method, loss in (("kd", "kl"), ("mse", "logit_mse")):
        config = distill_config(tiny)
        config["distill"] = {**config["distill"], "method": method}
        recipe = _prepared(config)
        batch = _batches(recipe.train_stream, 1)[0]
        z = recipe.cohort["student"].model(batch.x)
        targets = recipe.targets_for(batch)
        got, parts = recipe.student_loss("student", z, targets, batch)
        s = recipe.settings
        torch.testing.assert_close(got, distillation_loss(z, targets, batch.y, s.temperature, s.alpha, loss))
        assert set(parts) == {"soft", "ce"}


def test_the_package_exports_its_api_and_the_old_paths_still_work():
    for name in losses.__all__:
        assert getattr(losses, name) is not None, name
        obj = getattr(losses, name)
        if callable(obj) and not isinstance(obj, dict):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"
    from peerlearn.transfer import alignment

    assert alignment.coral_loss is losses.coral_loss and alignment.ALIGNMENT_LOSSES is losses.ALIGNMENT_LOSSES


def test_a_js_cohort_step_with_saturated_members_leaves_finite_weights(tiny):
    """End to end (issue 14.5): the loss of saturated members was finite, so the non-finite-loss guard let
    NaN gradients through into the weights. Now the step keeps every weight finite."""
    from peerlearn.api import prepare_run
    from peerlearn.config import load_config

    _, _, recipe = prepare_run(load_config(tiny(recipe="mutual", mutual={"divergence": "js"})))
    for member in recipe.cohort:
        head = [m for m in member.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.weight.mul_(1e4)  # logit gaps in the thousands: probabilities 0 in float32
    batch = next(iter(recipe.train_stream.epoch(0)))[1]
    with torch.no_grad():
        probs = [torch.softmax(m.model(batch.x), 1) for m in recipe.cohort]
    assert bool(((probs[0] == 0) & (probs[1] == 0)).any())  # both members give 0 to some class
    recipe.cohort.train()
    recipe.step(batch)
    assert all(bool(torch.isfinite(p).all()) for m in recipe.cohort for p in m.model.parameters())
