"""The public losses and the Lightning modules check their arguments: a temperature of 0 or below, a
non-finite or negative weight, an alpha outside [0, 1], logits of another shape or class count, labels of
another length are a ValueError naming the argument. The checks read shapes and Python numbers only: the
same losses run on meta tensors (which have no values to read), so no check synchronises a device."""

import math

import pytest
import torch
from torch import nn

from peerlearn.losses import (CenterLoss, center_loss, coral_loss, cross_entropy, distillation_loss,
                              distillation_terms, feature_l2, js_to_target, kl_to_target, logit_matching,
                              mean_kl_from_peers, mmd_loss, mutual_learning_losses, mutual_mimicry, rbf_kernel,
                              soft_probs, soft_target_loss, soft_targets, stacked_feature_l2,
                              stacked_mutual_mimicry, teacher_probs, update_centers)

Z = torch.randn(4, 3)
Q = torch.softmax(torch.randn(4, 3), -1)
Y = torch.tensor([0, 1, 2, -1])
BAD_TEMPERATURES = [0, 0.0, -1.0, math.nan, math.inf, "2", True, None]


@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
@pytest.mark.parametrize("call", [
    lambda T: soft_probs(Z, T),
    lambda T: kl_to_target(Q, Z, T),
    lambda T: js_to_target(Q, Z, T),
    lambda T: mean_kl_from_peers([Q], Z, T),
    lambda T: mutual_mimicry(Z, [Q], T),
    lambda T: stacked_mutual_mimicry(torch.stack([Z, Z]), T),
    lambda T: mutual_learning_losses([Z, Z], Y, 1.0, T),
    lambda T: teacher_probs([Z], T),
    lambda T: soft_targets([Z], T, "logit_mse"),
    lambda T: soft_target_loss(Z, Q, T),
    lambda T: distillation_loss(Z, Q, Y, T, 0.5),
], ids=["soft_probs", "kl_to_target", "js_to_target", "mean_kl_from_peers", "mutual_mimicry",
        "stacked_mutual_mimicry", "mutual_learning_losses", "teacher_probs", "soft_targets", "soft_target_loss",
        "distillation_loss"])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused(call, temperature):
    with pytest.raises(ValueError, match="temperature"):
        call(temperature)


def test_the_refused_temperature_would_have_given_nan_or_a_wrong_value():
    """Why the check exists: T = 0 is NaN, T < 0 a finite value that favours the wrong class."""
    assert torch.isnan(torch.softmax(Z / 0.0, -1)).any()
    assert torch.equal(torch.softmax(Z / -1.0, -1).argmax(-1), (-Z).argmax(-1))


@pytest.mark.parametrize("weight", [-0.5, math.nan, math.inf, "1"])
def test_a_mimicry_weight_must_be_finite_and_not_negative(weight):
    with pytest.raises(ValueError, match="weight"):
        mutual_learning_losses([Z, Z], Y, weight)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_alpha_must_be_in_the_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        distillation_terms(Z, Q, Y, 2.0, alpha)


@pytest.mark.parametrize("call, name", [
    (lambda: kl_to_target(torch.softmax(torch.randn(4, 5), -1), Z), "target_probs"),       # other class count
    (lambda: js_to_target(Q[:3], Z), "target_probs"),                                      # other batch size
    (lambda: mutual_mimicry(Z, [Q, torch.softmax(torch.randn(4, 2), -1)]), r"peer_probs\[1\]"),
    (lambda: mutual_mimicry(Z[0], [Q[0]]), "logits"),                                      # not [N, C]
    (lambda: mutual_learning_losses([Z, torch.randn(4, 5)], Y), r"logits\[1\]"),
    (lambda: mutual_learning_losses([Z, Z], Y[:3]), "labels"),
    (lambda: mutual_learning_losses([Z, Z], Y.float()), "labels"),
    (lambda: mutual_learning_losses([], Y), "logits"),
    (lambda: cross_entropy(Z, Y[:2]), "labels"),
    (lambda: stacked_mutual_mimicry(Z), "logits"),
    (lambda: teacher_probs([Z, torch.randn(4, 5)]), r"teacher_logits\[1\]"),
    (lambda: teacher_probs([]), "teacher_logits"),
    (lambda: distillation_terms(Z, torch.randn(4, 5), Y, 2.0, 0.5), "targets"),
    (lambda: distillation_terms(Z, Q, Y[:3], 2.0, 0.5), "labels"),
    (lambda: logit_matching(Z, torch.randn(5, 3)), "teacher_logits"),
    (lambda: feature_l2(Z, [torch.randn(4, 2)]), r"peer_features\[0\]"),
    (lambda: stacked_feature_l2(Z), "features"),
    (lambda: coral_loss(torch.randn(5, 3), torch.randn(5, 4)), "feature size"),
    (lambda: mmd_loss(torch.randn(5, 3), torch.randn(5, 3), bandwidths=[1.0, 0.0]), r"bandwidths\[1\]"),
    (lambda: rbf_kernel(Z, Z, []), "bandwidths"),
    (lambda: center_loss(torch.randn(4, 2), Y, torch.zeros(3, 5)), "centers"),
    (lambda: update_centers(torch.zeros(3, 2), torch.randn(4, 2), Y, 0.0), "alpha"),
    (lambda: CenterLoss(3, 0), "feature_dim"),
    (lambda: soft_targets([Z], 2.0, "mse"), "soft_loss"),
    (lambda: mutual_mimicry(Z, [Q], divergence="l2"), "divergence"),
    (lambda: stacked_mutual_mimicry(torch.stack([Z, Z]), teacher="all"), "teacher"),
])
def test_shapes_class_counts_and_choices_are_checked_with_the_argument_named(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_the_checks_read_no_tensor_value_so_they_never_synchronise_a_device():
    """Meta tensors have shapes but no values: reading one (``.item()``, ``bool(t)``) raises. The losses
    below run on them, so their checks cost no device synchronisation; wrong shapes are still caught."""
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
    z, q, f = meta(8, 5), meta(8, 5), meta(8, 16)
    assert mutual_mimicry(z, [q, q], temperature=2.0).device.type == "meta"
    assert stacked_mutual_mimicry(meta(3, 8, 5), temperature=2.0, divergence="js", teacher="ensemble").shape == (3,)
    assert kl_to_target(q, z, 4.0).device.type == "meta"
    assert distillation_terms(z, q, None, 4.0, 0.0).loss.device.type == "meta"
    assert logit_matching(z, q).device.type == "meta"
    assert feature_l2(f, [f]).device.type == "meta"
    assert coral_loss(f, f).device.type == "meta"
    with pytest.raises(ValueError, match="peer_probs"):
        mutual_mimicry(z, [meta(8, 4)])
    # a temperature given as a tensor is not read by the check either (it may live on the device)
    from peerlearn.losses.checks import check_positive

    check_positive(torch.tensor(2.0, device="meta"))


def test_the_lightning_modules_check_their_settings_when_built():
    pytest.importorskip("lightning")
    from peerlearn.lightning import DistillationModule, MutualLearningModule

    def mlp():
        return nn.Sequential(nn.Linear(6, 4))

    for kwargs, name in [({"temperature": 0.0}, "temperature"), ({"temperature": -2.0}, "temperature"),
                         ({"weight": math.nan}, "weight"), ({"weight": -1.0}, "weight"),
                         ({"divergence": "l2"}, "divergence"), ({"teacher": "all"}, "teacher")]:
        with pytest.raises(ValueError, match=name):
            MutualLearningModule([mlp(), mlp()], **kwargs)
    for kwargs, name in [({"temperature": 0}, "temperature"), ({"temperature": math.inf}, "temperature"),
                         ({"alpha": 1.5}, "alpha"), ({"soft_loss": "mse"}, "soft_loss")]:
        with pytest.raises(ValueError, match=name):
            DistillationModule(mlp(), mlp(), **kwargs)
    # sound settings still build
    MutualLearningModule([mlp(), mlp()], weight=0.0, temperature=0.5)
    DistillationModule(mlp(), [mlp(), mlp()], alpha=0.0, temperature=8)
