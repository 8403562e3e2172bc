"""Fused cohort: stacked losses by hand and against the per-member forms; fused steps equal the loop."""

import copy
import math
import re

import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.cli import main
from peerlearn.config import config_yaml, load_config
from peerlearn.recipes import get_recipe
from peerlearn.engine.executors import FusedExecutor
from peerlearn.errors import ConfigError
from peerlearn.losses import feature_l2, mutual_mimicry, soft_probs, stacked_feature_l2, stacked_mutual_mimicry


# ------------------------------------------------------------------ stacked losses
def test_stacked_kl_of_two_members_matches_hand_computation():
    z = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]])  # p_a = (1/4, 3/4), p_b = (1/2, 1/2)
    pa, pb = (0.25, 0.75), (0.5, 0.5)
    kl_b_a = sum(b * math.log(b / a) for a, b in zip(pa, pb))  # KL(p_b ‖ p_a): a's term
    kl_a_b = sum(a * math.log(a / b) for a, b in zip(pa, pb))
    got = stacked_mutual_mimicry(z)
    assert got.tolist() == pytest.approx([kl_b_a, kl_a_b], rel=1e-6)


@pytest.mark.parametrize("divergence", ["kl", "js"])
@pytest.mark.parametrize("teacher", ["peers", "ensemble"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_stacked_mimicry_equals_per_member_mimicry_values_and_gradients(divergence, teacher, temperature):
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5, requires_grad=True)
    stacked = stacked_mutual_mimicry(logits, temperature, divergence, teacher)
    probs = [soft_probs(z, temperature) for z in logits]
    looped = torch.stack([mutual_mimicry(logits[k], [p for l, p in enumerate(probs) if l != k], temperature,
                                         divergence, teacher) for k in range(4)])
    torch.testing.assert_close(stacked, looped, rtol=1e-5, atol=1e-6)
    g_stacked, = torch.autograd.grad(stacked.sum(), logits)
    g_looped, = torch.autograd.grad(looped.sum(), logits)
    torch.testing.assert_close(g_stacked, g_looped, rtol=1e-5, atol=1e-6)


def test_stacked_feature_l2_equals_per_member_pull():
    torch.manual_seed(1)
    features = torch.randn(3, 5, 4)
    expected = torch.stack([feature_l2(features[k], [features[l] for l in range(3) if l != k]) for k in range(3)])
    torch.testing.assert_close(stacked_feature_l2(features), expected)
    # by hand for two members: both pulls are the mean squared distance
    two = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]]])
    assert stacked_feature_l2(two).tolist() == [25.0, 25.0]


# ------------------------------------------------------------------ validation
def test_fused_needs_one_architecture_and_names_the_members(tiny, capsys):
    config = tiny(members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8}},
                           {"name": "b", "model": "small_cnn", "model_args": {"width": 16}}],
                  engine={"fused": True})
    with pytest.raises(ConfigError, match="'a'.*'b'.*architecture"):
        load_config(config)
    assert main(["train", "members.1.model=mlp", "engine.fused=true"]) == 2
    assert "engine.fused" in capsys.readouterr().err


def test_fused_refuses_compile_at_config_load(tiny):
    with pytest.raises(ConfigError, match="choose one"):
        load_config(tiny(engine={"fused": True, "compile": True}))


def test_fused_refuses_the_sequential_update_by_the_mutual_recipes_rule(tiny, tmp_path, capsys):
    """The update order is the mutual recipe's setting, so the rule is its own (``check_capabilities``);
    ``peerlearn train`` stops on it with exit 2 before reading data or creating a run directory."""
    config = load_config(tiny(recipe="mutual", engine={"fused": True}, mutual={"update": "sequential"}))
    with pytest.raises(ConfigError, match="'mutual.update' is 'sequential'.*fused cohort updates all members"):
        get_recipe("mutual").check_capabilities(config)
    get_recipe("mutual").check_capabilities(config.model_copy(update={"engine": config.engine.model_copy(
        update={"fused": False})}))
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(config))
    assert main(["train", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert "mutual.update" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_vmap_fusion_refuses_dropout(tiny):
    """vmap would draw one random stream for all members: a network that is not packed may not use dropout."""
    config = load_config(tiny(members=[{"name": n, "model": "small_cnn", "model_args": {"width": 4, "dropout": 0.2}}
                                       for n in "ab"], engine={"fused": True}))
    _, _, built = prepare_run(config)
    assert built.executor.mode == "packed"  # packed: each member draws its own mask (tested below)
    with pytest.raises(ConfigError, match="dropout"):
        FusedExecutor(built, mode="vmap")


# ------------------------------------------------------------------ fused equals the loop
def _recipe(tiny, fused, recipe="mutual", mode="auto", model="small_cnn", model_args=None, **sections):
    """A built recipe whose members compute in float64: the comparison below checks that the fused step is the
    loop's computation; in float32 a 1e-7 rounding difference can flip a ReLU at a pre-activation near 0 and
    move one weight by lr · O(1) (seen with the feature pull), which says nothing about the implementation."""
    args = {"width": 4} if model_args is None else model_args
    members = [{"name": n, "model": model, "model_args": args} for n in "abc"]
    config = load_config(tiny(recipe=recipe, members=members, engine={"fused": fused}, **sections))
    _, _, built = prepare_run(config)
    for member in built.cohort:
        member.model.double()
    built.cohort.train()
    if fused and mode != "auto":
        built.executor = FusedExecutor(built, mode=mode)
    return built


def _double(batch):
    return type(batch)(batch.x.double(), batch.y, batch.index)


def _assert_same_state(loop, fused):
    for ours, theirs in zip(loop.cohort, fused.cohort):
        for (name, a), b in zip(ours.model.state_dict().items(), theirs.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"{ours.name}.{name}")
        for group_a, group_b in zip(ours.optimizer.state.values(), theirs.optimizer.state.values()):
            for key in group_a:
                torch.testing.assert_close(group_a[key], group_b[key], rtol=1e-9, atol=1e-11)


def _run_both(loop, fused, steps=5):
    for _, batch in zip(range(steps), (_double(b) for _, b in loop.train_stream.epoch(0))):
        log_loop, log_fused = loop.step(batch), fused.step(batch)
        assert float(log_fused["loss"]) == pytest.approx(float(log_loop["loss"]), rel=1e-5)


VARIANTS = [
    ("mutual", {}),
    ("independent", {}),
    ("mutual", {"optim": {"name": "adam", "lr": 0.003}}),
    ("mutual", {"mutual": {"divergence": "js", "temperature": 2.0}}),
    ("mutual", {"mutual": {"teacher": "ensemble", "feature_l2": 0.1}}),
]


@pytest.mark.parametrize("mode", ["packed", "vmap"])
@pytest.mark.parametrize("recipe, sections", VARIANTS)
def test_fused_steps_equal_the_loop_weights_buffers_and_optimizer_state(tiny, recipe, sections, mode):
    loop, fused = _recipe(tiny, False, recipe, **sections), _recipe(tiny, True, recipe, mode, **sections)
    assert fused.fused is not None and loop.fused is None
    assert fused.executor.mode == mode and fused.fused.kind == mode
    _run_both(loop, fused)
    _assert_same_state(loop, fused)
    # BatchNorm running statistics moved (and moved identically)
    assert float(fused.cohort["a"].model.body[0][1].num_batches_tracked) == 5


@pytest.mark.parametrize("model, model_args, sections", [
    ("resnet20", {}, {"optim": {"name": "adam", "lr": 0.003}}),
    ("resnet20", {}, {"mutual": {"teacher": "ensemble", "feature_l2": 0.1}}),
    ("wrn", {"depth": 10, "widen_factor": 1}, {"mutual": {"divergence": "js", "temperature": 2.0}}),
    ("mlp", {"widths": [16, 8]}, {"mutual": {"feature_l2": 0.1}}),
])
def test_packed_residual_and_dense_networks_equal_the_loop(tiny, model, model_args, sections):
    """The cifar ResNets (identity and projection shortcuts), a WRN (pre-activation) and an MLP (packed
    Linear after Flatten) are packed automatically and step like the loop."""
    loop = _recipe(tiny, False, "mutual", model=model, model_args=model_args, **sections)
    fused = _recipe(tiny, True, "mutual", model=model, model_args=model_args, **sections)
    assert fused.executor.mode == "packed"
    _run_both(loop, fused, steps=3 if model == "resnet20" else 5)
    _assert_same_state(loop, fused)


def test_packed_dropout_draws_each_members_mask_as_the_loop_does(tiny):
    """One dropout layer per network, masks drawn member after member: the loop's very masks (same seed)."""
    args = {"width": 4, "dropout": 0.3}
    loop, fused = (_recipe(tiny, f, "mutual", model_args=args) for f in (False, True))
    assert fused.executor.mode == "packed"
    batches = [_double(b) for _, (_, b) in zip(range(4), loop.train_stream.epoch(0))]
    for batch in batches:
        torch.manual_seed(7)
        loop.step(batch)
        torch.manual_seed(7)
        fused.step(batch)
    _assert_same_state(loop, fused)


def test_packed_dropout_masks_differ_between_members():
    from peerlearn.engine.packed import PackedCohort
    from peerlearn.models.mlp import MLP

    torch.manual_seed(0)
    models = [MLP(6, 3, widths=[500], dropout=0.5) for _ in range(3)]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())  # the same weights: only the masks tell them apart
    x = torch.randn(4, 6)
    _, features = PackedCohort(models, list("abc"), with_features=True)(x)
    active = models[0].eval().features(x) != 0  # the units ReLU leaves on (the same in every member)
    dropped = (features == 0) & active
    assert not torch.equal(dropped[0], dropped[1]) and not torch.equal(dropped[1], dropped[2])
    assert 0.4 < dropped.sum().item() / (3 * active.sum().item()) < 0.6  # p = 0.5 of the active units
    torch.testing.assert_close(features[~dropped & active.expand_as(dropped)],
                               2 * models[0].features(x).expand_as(features)[~dropped & active.expand_as(dropped)])


def test_the_choice_is_logged_and_an_unpackable_network_falls_back_to_vmap(tiny, caplog):
    caplog.set_level("INFO", logger="peerlearn")
    built = _recipe(tiny, True)
    assert "packed into one network" in caplog.text and built.executor.mode == "packed"
    caplog.clear()
    members = [{"name": n, "model": "mobilenet", "model_args": {"width_mult": 0.25}} for n in "ab"]
    config = load_config(tiny(members=members, engine={"fused": True}))
    _, _, built = prepare_run(config)
    assert built.executor.mode == "vmap"
    assert "batched with vmap (not packed: the network (MobileNet) does not declare" in caplog.text


def test_packed_network_owns_no_weights_and_member_keys_are_unchanged(tiny):
    built = _recipe(tiny, True)
    keys = [list(m.model.state_dict()) for m in built.cohort]
    packed = built.fused.network
    assert list(packed.parameters()) == [] and list(packed.buffers()) == []
    assert [list(m.model.state_dict()) for m in built.cohort] == keys
    assert keys[0] == list(type(built.cohort["a"].model)(1, 10, width=4).state_dict())


def test_fused_run_ends_like_the_loop_run(tiny, tmp_path):
    """A whole run through the trainer (evaluation, checkpoints), with MLP members: in small CNNs on
    digits, rounding differences (~1e-7) between the batched and the looped convolutions can flip a
    max-pool tie (constant image borders) after a few dozen steps, and the runs then drift apart
    like two runs with different kernels do; the step-level test above checks the CNN."""
    members = [{"name": n, "model": "mlp", "model_args": {"widths": [32]}} for n in "ab"]
    config = tiny(recipe="mutual", members=members, train={"epochs": 3, "progress": "off", "threads": 1})
    loop = peerlearn.train(config, out=tmp_path)
    fused = peerlearn.train({**config, "engine": {"fused": True}}, out=tmp_path)
    assert fused.member_accuracy("test") == pytest.approx(loop.member_accuracy("test"), abs=1e-6)
    assert min(fused.member_accuracy("test").values()) > 0.8  # and it learned
    for a, b in zip(loop.cohort, fused.cohort):
        for x, y in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def _sequential(**bn):
    torch.manual_seed(len(bn))
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1, bias=True), torch.nn.BatchNorm2d(3, **bn),
                               torch.nn.ReLU(), torch.nn.Conv2d(3, 4, 3, stride=2, groups=1),
                               torch.nn.BatchNorm2d(4, **bn), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 5)).double()


@pytest.mark.parametrize("bn", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_packed_sequential_equals_each_member_outputs_gradients_and_batchnorm_buffers(bn):
    """Outputs, input-free gradients and BatchNorm buffers (cumulative average with momentum=None) of a packed
    nn.Sequential against each member run on its own, over two training calls and one in eval mode."""
    from peerlearn.engine.packed import PackedCohort

    members = [_sequential(**bn) for _ in range(3)]
    for k, member in enumerate(members):  # different weights per member
        with torch.no_grad():
            for p in member.parameters():
                p.add_(0.1 * k)
    twins = [copy.deepcopy(m) for m in members]
    packed = PackedCohort(members, list("abc"))
    for call, train in enumerate([True, True, False]):
        x = torch.randn(6, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(call))
        for model in members + twins:
            model.train(train)
        logits, features = packed(x)
        assert features is None and logits.shape == (3, 6, 5)
        expected = torch.stack([twin(x) for twin in twins])
        torch.testing.assert_close(logits, expected)
        if train:
            logits.square().sum().backward()
            expected.square().sum().backward()
    for member, twin in zip(members, twins):
        for (name, a), b in zip(member.state_dict().items(), twin.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
        for a, b in zip(member.parameters(), twin.parameters()):
            torch.testing.assert_close(a.grad, b.grad)


def test_a_first_layer_after_an_in_place_change_of_the_input_reads_the_changed_input():
    """The first convolution reads the shared input once, unless an in-place layer changed it before."""
    from peerlearn.engine.packed import PackedCohort

    def make():
        return torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).double()

    members = [make() for _ in range(2)]
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    logits, _ = PackedCohort(members, ["a", "b"])(x.clone())
    torch.testing.assert_close(logits, torch.stack([m(x.clone()) for m in members]))


def test_the_packer_names_what_it_cannot_pack():
    from peerlearn.engine.packed import NotPackable, PackedCohort

    class Concat(torch.nn.Module):  # concatenates channels: not declared packable
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 2, 1), torch.nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1)

    cases = {
        "the network (Concat) does not declare a channel-wise forward": lambda: Concat(),
        "0 pads with 'reflect'": lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding_mode="reflect")),
        "1 flattens dimensions 2..-1": lambda: torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Flatten(2)),
        "0 (LSTM) is a layer the packer does not know": lambda: torch.nn.Sequential(torch.nn.LSTM(2, 2)),
    }
    for message, make in cases.items():
        with pytest.raises(NotPackable, match=re.escape(message)):
            PackedCohort([make(), make()], ["a", "b"])
    hooked = [torch.nn.Sequential(torch.nn.Linear(2, 2)) for _ in range(2)]
    hooked[1][0].register_forward_hook(lambda *args: None)
    with pytest.raises(NotPackable, match="0 has forward or backward hooks"):
        PackedCohort(hooked, ["a", "b"])
    with pytest.raises(NotPackable, match="differ at 0"):
        PackedCohort([torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.Sequential(torch.nn.Linear(2, 3))],
                     ["a", "b"])
