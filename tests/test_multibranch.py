"""Shared-trunk multi-branch networks: branch(k) is the k-th output, the trunk is shared (same parameter
objects), state-dict keys are the zoo's, CL-ILR's gradient rescaling, and the online methods' trainable parts."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.losses import ema_update, gated_ensemble, one_loss
from peerlearn.models import (Branch, BranchNet, MultiBranchNet, OneGate, PeerAttention, PeerEnsembleClassifier,
                              PeerModel, available_multibranch, branch_state_dict, create_model, create_multibranch,
                              scale_gradient)

# (name, options, input shape): small so each test is fast on a CPU
CASES = [("small_cnn", {"width": 8, "in_channels": 1}, (4, 1, 28, 28)),
         ("resnet20", {}, (4, 3, 16, 16)),
         ("cifar_resnet", {"depth": 8}, (4, 3, 16, 16)),
         ("mlp", {"in_features": 12, "widths": [16, 8]}, (4, 12))]


def build(name, options, k=3, seed=0):
    torch.manual_seed(seed)
    return create_multibranch(name, 7, num_branches=k, **options)


def test_the_zoo_splits_are_registered():
    assert {"small_cnn", "resnet20", "resnet32", "resnet56", "cifar_resnet", "mlp"} <= set(available_multibranch())
    with pytest.raises(ValueError, match="no multi-branch split"):
        create_multibranch("mobilenet", 10)
    with pytest.raises(ValueError, match="at least 2 hidden layers"):
        create_multibranch("mlp", 10, in_features=12, widths=[16])
    with pytest.raises(ValueError, match="num_branches"):
        create_multibranch("resnet20", 10, num_branches=0)


@pytest.mark.parametrize("name,options,shape", CASES)
def test_branch_k_is_the_kth_output(name, options, shape):
    net = build(name, options)
    x = torch.randn(*shape)
    for mode in ("eval", "train"):
        getattr(net, mode)()
        out = net(x)
        assert out.logits.shape == (3, shape[0], 7)
        assert out.features.shape == (3, shape[0], net.feature_dim)
        for k in range(3):
            branch = net.branch(k)
            assert isinstance(branch, PeerModel)
            with torch.no_grad():
                torch.testing.assert_close(branch(x), out.logits[k], rtol=1e-5, atol=1e-6)
                logits, feats = branch.forward_with_features(x)
            torch.testing.assert_close(feats, out.features[k], rtol=1e-5, atol=1e-6)
    # branches start from independent initialisations
    assert not torch.allclose(out.logits[0], out.logits[1])


@pytest.mark.parametrize("name,options,shape", CASES)
def test_one_view_per_branch_equals_each_branch_on_its_view(name, options, shape):
    net = build(name, options).eval()
    views = [torch.randn(*shape) for _ in range(3)]
    out = net(views)
    assert isinstance(out.trunk, tuple) and len(out.trunk) == 3
    with torch.no_grad():
        for k in range(3):
            torch.testing.assert_close(net.branch(k)(views[k]), out.logits[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one view per branch"):
        net(views[:2])


@pytest.mark.parametrize("name,options,shape", CASES)
def test_the_trunk_is_shared_and_the_branches_are_not(name, options, shape):
    net = build(name, options)
    trunk_ids = {id(p) for p in net.trunk.parameters()}
    branch_ids = [{id(p) for p in b.parameters()} for b in net.branches]
    for k in range(3):
        view_ids = {id(p) for p in net.branch(k).parameters()}
        assert view_ids == trunk_ids | branch_ids[k]  # the same objects, not copies
    assert not branch_ids[0] & branch_ids[1]
    single = create_model(name, 7, **options)
    trunk_size = sum(p.numel() for p in net.trunk.parameters())
    branch_size = sum(p.numel() for p in net.branches[0].parameters())
    assert trunk_size + branch_size == sum(p.numel() for p in single.parameters())
    assert sum(p.numel() for p in net.parameters()) == trunk_size + 3 * branch_size
    # a change through the multi-branch net is seen by the branch
    with torch.no_grad():
        next(net.trunk.parameters()).add_(1.0)
    assert torch.equal(next(net.branch(2).parameters()), next(net.trunk.parameters()))


@pytest.mark.parametrize("name,options,shape", CASES)
def test_branch_state_dict_uses_the_zoo_keys(name, options, shape):
    net = build(name, options).eval()
    x = torch.randn(*shape)
    state = net.state_dict()
    assert all(key.startswith(("trunk.", "branches.")) for key in state)
    for k in range(3):
        extracted = branch_state_dict(state, k)
        assert list(extracted) == list(net.branch(k).state_dict())
        plain = create_model(name, 7, **options).eval()
        plain.load_state_dict(extracted)  # strict: the same keys as a fresh zoo network
        with torch.no_grad():
            torch.testing.assert_close(plain(x), net(x).logits[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="no branch 3"):
        branch_state_dict(state, 3)


def test_documented_resnet_keys():
    net = build("resnet20", {})  # n = 3: groups 1-2 are blocks 0-5, group 3 is blocks 6-8
    keys = set(net.state_dict())
    assert "trunk.stem.0.weight" in keys and "trunk.blocks.5.conv1.weight" in keys
    assert "branches.2.blocks.6.conv1.weight" in keys and "branches.2.classifier.bias" in keys
    assert not any(k.startswith("trunk.blocks.6") for k in keys)


def test_deepcopy_keeps_the_sharing_inside_the_copy():
    net = build("resnet20", {})
    twin = copy.deepcopy(net)
    assert twin.branch(1).stem is twin.trunk.stem
    assert twin.branch(1).stem is not net.trunk.stem
    # an EMA copy of the whole network averages trunk and branches alike
    twin.requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = twin.branch(0).classifier.weight.clone()
    ema_update(twin, net, 0.5)
    torch.testing.assert_close(twin.branch(0).classifier.weight,
                               0.5 * before + 0.5 * net.branch(0).classifier.weight)


def _trunk_and_branch_grads(scale):
    torch.manual_seed(3)
    net = create_multibranch("small_cnn", 5, num_branches=3, in_channels=1, width=4,
                             trunk_grad_scale=scale).eval()
    x, y = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    logits = net(x).logits
    sum(F.cross_entropy(z, y) for z in logits).backward()
    trunk = [p.grad.clone() for p in net.trunk.parameters()]
    branches = [p.grad.clone() for p in net.branches.parameters()]
    return trunk, branches


def test_cl_ilr_rescaling_divides_the_trunk_gradient_only():
    heads = 3
    trunk_plain, branches_plain = _trunk_and_branch_grads(1.0)
    trunk_scaled, branches_scaled = _trunk_and_branch_grads(1.0 / heads)
    for plain, scaled in zip(trunk_plain, trunk_scaled):
        torch.testing.assert_close(scaled, plain / heads, rtol=1e-5, atol=1e-8)
    for plain, scaled in zip(branches_plain, branches_scaled):
        torch.testing.assert_close(scaled, plain)
    assert any(g.abs().sum() > 0 for g in trunk_plain)


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.25, 0.5, 0.75]))
    with pytest.raises(ValueError, match="factor"):
        scale_gradient(x, float("nan"))
    with pytest.raises(ValueError, match="trunk_grad_scale"):
        create_multibranch("resnet20", 10, trunk_grad_scale=0.0)


def test_a_network_of_ones_own_parts():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    branches = [Branch(OrderedDict(hidden=nn.Linear(8, 4), act=nn.ReLU()), nn.Linear(4, 3)) for _ in range(2)]
    net = MultiBranchNet(trunk, branches)
    x = torch.randn(5, 6)
    out = net(x)
    view = net.branch(1)
    assert isinstance(view, BranchNet)
    torch.testing.assert_close(view(x), out.logits[1])
    assert set(view.state_dict()) == {"trunk.0.weight", "trunk.0.bias", "branch.hidden.weight",
                                      "branch.hidden.bias", "branch.classifier.weight", "branch.classifier.bias"}
    view.reset_classifier(9)  # replaces the branch's classifier, in the multi-branch net too
    assert view(x).shape == (5, 9) and net.branches[1].classifier.out_features == 9
    with pytest.raises(RuntimeError):
        net(x)  # branch 0 still has 3 classes: the logits no longer stack
    with pytest.raises(IndexError):
        net.branch(2)
    with pytest.raises(ValueError, match="classifier"):
        Branch(OrderedDict(classifier=nn.Identity()), nn.Linear(4, 3))


# --------------------------------------------------------------------------- trainable parts
def test_one_gate_is_pool_fc_bn_relu_softmax():
    torch.manual_seed(0)
    gate = OneGate(6, 3)
    h = torch.randn(4, 6, 5, 5)
    g = gate(h)
    pooled = h.mean(dim=(2, 3))
    a = pooled @ gate.fc.weight.T + gate.fc.bias
    a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + gate.bn.eps) * gate.bn.weight + gate.bn.bias
    torch.testing.assert_close(g, torch.softmax(torch.relu(a), dim=1))
    torch.testing.assert_close(g.sum(1), torch.ones(4))


def test_one_step_on_a_multibranch_net_trains_gate_trunk_and_branches():
    torch.manual_seed(0)
    net = create_multibranch("small_cnn", 5, num_branches=3, in_channels=1, width=4)
    gate = OneGate(4, 3)
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 5, (6,))
    out = net(x)
    result = one_loss(out.logits, gate(out.trunk), y, temperature=3.0)
    result.loss.backward()
    for module in (gate, net.trunk, *net.branches):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    assert gated_ensemble(out.logits, gate(out.trunk)).shape == (6, 5)


def test_a_detached_gate_sends_no_gradient_into_the_trunk():
    torch.manual_seed(0)
    h = torch.randn(4, 6, requires_grad=True)
    OneGate(6, 3, detach_input=True)(h).sum().backward()
    assert h.grad is None
    h2 = torch.randn(4, 6, requires_grad=True)
    (OneGate(6, 3)(h2) * torch.randn(4, 3)).sum().backward()
    assert h2.grad is not None and h2.grad.abs().sum() > 0


@pytest.mark.parametrize("include_self", [False, True])
def test_peer_attention_module_projects_features_and_learns(include_self):
    torch.manual_seed(0)
    attention = PeerAttention(16, factor=8, include_self=include_self)
    features = torch.randn(3, 4, 16)
    a = attention(features)
    assert a.shape == (4, 3, 3)
    q, k = features @ attention.query.weight.T, features @ attention.key.weight.T
    energy = torch.einsum("ibd,jbd->bij", q, k)
    if not include_self:
        energy = energy.masked_fill(torch.eye(3, dtype=torch.bool), float("-inf"))
    torch.testing.assert_close(a, torch.softmax(energy, -1))
    (a * torch.randn(4, 3, 3)).sum().backward()
    assert attention.query.weight.grad.abs().sum() > 0 and attention.key.weight.grad.abs().sum() > 0


def test_peer_ensemble_classifier_reads_features_in_branch_order():
    torch.manual_seed(0)
    head = PeerEnsembleClassifier(feature_dim=4, num_branches=3, num_classes=5)
    features = torch.randn(3, 2, 4)
    concatenated = torch.cat([features[0], features[1], features[2]], dim=1)
    torch.testing.assert_close(head(features), concatenated @ head.fc.weight.T + head.fc.bias)
    with pytest.raises(ValueError, match="K, D"):
        head(torch.randn(2, 2, 4))
