"""Members of your own: nn.Module instances and factories from Python, `package.module:factory` and `timm:`
names in a config, features read by forward hooks, and runs that record how to rebuild them."""

import sys
import textwrap
from functools import partial

import pytest
import torch
from torch import nn

import peerlearn
from conftest import tiny_config, train_interrupted_at_evaluation
from peerlearn.cli import main
from peerlearn.config import load_config
from peerlearn.data import load_raw
from peerlearn.engine.checkpoint import load_weights
from peerlearn.errors import ConfigError, DataError
from peerlearn.models import create_model
from peerlearn.models.user import HookedModel

NETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """8x8 digits -> logits; its own names (body, head), no peerlearn base class."""

    def __init__(self, num_classes=10, in_channels=1, hidden=24):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class NeedsArgs(TinyNet):
    def __init__(self, depth, num_classes=10):
        super().__init__(num_classes=num_classes, hidden=8 * depth)


def make_net(num_classes, hidden=16):
    return TinyNet(num_classes=num_classes, hidden=hidden)


def make_conv(num_classes):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def not_a_module(num_classes):
    return "a string"
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """An importable module `user_nets` of the user's networks (also importable by CLI subprocesses)."""
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "user_nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    sys.modules.pop("user_nets", None)
    import user_nets

    return user_nets


def digits_data():
    raw = load_raw(load_config(tiny_config()).data)
    return peerlearn.UserData(train=(raw.train_x, raw.train_y), test=(raw.test_x, raw.test_y),
                              class_names=raw.class_names)


def config_without_members(**sections):
    config = tiny_config(**sections)
    config.pop("members")
    return config


# --------------------------------------------------------------------------- features by hook
def test_hooked_features_are_the_named_submodule_output(nets):
    net = nets.TinyNet()
    x = torch.randn(5, 1, 8, 8)
    default = HookedModel(net)  # the input of the last Linear: body's output
    named = HookedModel(nets.TinyNet(), features_from="body")
    named.network.load_state_dict(net.state_dict())
    as_input = HookedModel(nets.TinyNet(), features_from="head:input")
    as_input.network.load_state_dict(net.state_dict())
    for model in (default, named, as_input):
        logits, features = model.forward_with_features(x)
        assert torch.equal(logits, net(x)) and torch.equal(features, net.body(x))
    assert default.feature_dim == 24
    assert set(net.state_dict()) == {k[len("network."):] for k in default.state_dict()}  # nothing added


def test_feature_maps_are_averaged_over_space(nets):
    model = HookedModel(nets.make_conv(3), features_from="1")  # the ReLU after the convolution: [N, 4, 8, 8]
    x = torch.randn(2, 1, 8, 8)
    _, features = model.forward_with_features(x)
    maps = model.network[1](model.network[0](x))
    assert torch.allclose(features, maps.mean(dim=(2, 3)))


def test_unknown_feature_submodule_lists_the_real_ones(nets):
    with pytest.raises(ConfigError, match=r"'layer4'.*body.*head"):
        HookedModel(nets.TinyNet(), features_from="layer4")


def test_a_network_without_linear_layer_needs_features_from():
    model = HookedModel(nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten()))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # logits need no hook
    with pytest.raises(ConfigError, match="features_from"):
        model.forward_with_features(torch.randn(2, 1, 8, 8))


# --------------------------------------------------------------------------- Python objects in train
def test_modules_and_factories_train_with_feature_mimicry_and_record_how_to_rebuild(nets, tmp_path):
    instance = nets.TinyNet()
    config = config_without_members(recipe="mutual", mutual={"feature_l2": 0.01})
    with pytest.raises(ConfigError, match="a: 24, b: 16"):  # the pulled features must have one size
        peerlearn.train(config, out=tmp_path / "bad", members={"a": instance, "b": nets.make_net},
                        data=digits_data())
    config["members"] = [{"name": "b", "optim": {"lr": 0.04}}]  # options of a member given from Python
    result = peerlearn.train(config, out=tmp_path, members={"a": instance, "b": (nets.make_net, {"hidden": 24})},
                             data=digits_data(), features_from={"a": "body"})
    assert [m.name for m in result.config.members] == ["b", "a"]
    assert result.cohort["a"].model.network is instance  # trained in place, as the user's own object
    assert result.cohort["b"].optimizer.param_groups[0]["lr"] == 0.04
    assert result.summary["dataset"] == "python" and result.summary["members"]["a"]["test"]["top1"] > 0.5
    saved = load_config(result.run_dir / "config.yaml")
    b, a = saved.members
    assert (a.model, a.model_args, a.features_from) == ("user_nets:TinyNet", {}, "body")
    assert (b.model, b.model_args) == ("user_nets:make_net", {"hidden": 24})
    # what the run recorded rebuilds the same networks (the run-artifact reader goes through create_model)
    weights = result.run_dir / "model.safetensors"
    for member in saved.members:
        model = create_model(member.model, num_classes=10, in_channels=1, image_size=8, **member.model_args)
        model.load_state_dict(load_weights(weights, member.name))  # strict: same structure
        x = torch.randn(3, 1, 8, 8)
        expected = result.cohort[member.name].model.eval()(x)
        assert torch.allclose(model.eval()(x), expected)


def test_config_names_a_factory_with_model_args(nets, tmp_path):
    config = tiny_config(members=[{"name": "a", "model": "user_nets:make_net", "model_args": {"hidden": 12}},
                                  {"name": "b", "model": "small_cnn", "model_args": {"width": 8}}])
    result = peerlearn.train(config, out=tmp_path)
    head = result.cohort["a"].model.network.head
    assert isinstance(result.cohort["a"].model, HookedModel) and head.in_features == 12 and head.out_features == 10


@pytest.mark.parametrize("model, message", [
    ("no_such_pkg.nets:make", "cannot be imported"),
    ("user_nets:missing", "has no attribute 'missing'"),
    ("user_nets:not_a_module", "returned a str, not a torch.nn.Module"),
])
def test_bad_factories_are_config_errors(nets, tmp_path, model, message):
    config = tiny_config(members=[{"name": "a", "model": model}])
    with pytest.raises(ConfigError, match=message):
        peerlearn.train(config, out=tmp_path)


def test_cli_exits_2_for_a_missing_factory_module(nets, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("members:\n  - {name: a, model: 'no_such_pkg.nets:make'}\n"
                                     "train: {epochs: 1, progress: 'off'}\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "runs")]) == 2
    assert "'no_such_pkg.nets', which cannot be imported" in capsys.readouterr().err


def test_timm_names_say_how_to_install_timm(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, as where it cannot import
    config = tiny_config(members=[{"name": "a", "model": "timm:resnet18"}])
    with pytest.raises(ConfigError, match=r"pip install 'peerlearn\[timm\]'"):
        peerlearn.train(config, out=tmp_path)


def test_timm_member_through_a_stand_in_module(monkeypatch, tmp_path, nets):
    """`timm:<name>` calls timm.create_model(name, num_classes=, in_chans=, pretrained=False)."""
    calls = []

    def create(name, num_classes, in_chans, pretrained, **kwargs):
        calls.append((name, num_classes, in_chans, pretrained, kwargs))
        return nets.TinyNet(num_classes=num_classes, in_channels=in_chans, **kwargs)

    monkeypatch.setitem(sys.modules, "timm", type(sys)("timm"))
    sys.modules["timm"].create_model = create
    config = tiny_config(members=[{"name": "a", "model": "timm:tiny", "model_args": {"hidden": 8}}],
                         train={"epochs": 1})
    peerlearn.train(config, out=tmp_path)
    assert calls[0] == ("tiny", 10, 1, False, {"hidden": 8})


def test_module_that_cannot_be_rebuilt_is_recorded_so_and_the_cli_says_so(nets, tmp_path, capsys):
    class LocalNet(nets.TinyNet):  # defined in a function: not importable
        pass

    result = peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path,
                             members={"a": LocalNet(), "b": nets.NeedsArgs(depth=2)})
    saved = load_config(result.run_dir / "config.yaml")
    assert saved.members[0].model.startswith("python-object:") and "LocalNet" in saved.members[0].model
    assert saved.members[1].model == "python-object:user_nets:NeedsArgs"  # NeedsArgs() needs depth
    assert main(["evaluate", str(result.run_dir)]) == 2
    assert "given to peerlearn.train as a Python object" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume
def test_interrupted_run_of_python_members_resumes_to_the_same_weights(nets, tmp_path, monkeypatch):
    config = config_without_members(recipe="mutual", train={"epochs": 3, "checkpoint_every_steps": 7})
    data = digits_data()

    def fresh_members():
        torch.manual_seed(5)
        return {"a": nets.TinyNet(), "b": nets.make_net}

    whole = peerlearn.train(config, out=tmp_path / "whole", members=fresh_members(), data=data)
    train = peerlearn.train
    monkeypatch.setattr(peerlearn, "train", partial(train, members=fresh_members(), data=data))
    broken = train_interrupted_at_evaluation(config, tmp_path / "broken", evaluation=2, monkeypatch=monkeypatch)
    monkeypatch.setattr(peerlearn, "train", train)
    resumed = peerlearn.train(resume=broken, members=fresh_members(), data=data)
    for name in ("a", "b"):
        ours, theirs = resumed.cohort[name].model.state_dict(), whole.cohort[name].model.state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert resumed.summary["members"] == whole.summary["members"]


def test_resuming_python_data_without_it_says_what_to_pass(nets, tmp_path, monkeypatch):
    config = config_without_members(train={"epochs": 2})
    train = peerlearn.train
    monkeypatch.setattr(peerlearn, "train", partial(train, members={"a": nets.make_net}, data=digits_data()))
    broken = train_interrupted_at_evaluation(config, tmp_path / "runs", evaluation=2, monkeypatch=monkeypatch)
    monkeypatch.setattr(peerlearn, "train", train)
    with pytest.raises(DataError, match="UserData"):
        peerlearn.train(resume=broken, members={"a": nets.make_net})


@pytest.mark.parametrize("recipe", ["mutual", "distill"])
def test_batch_transform_sees_every_training_batch_only(tmp_path, recipe, nets):
    seen = []

    def erase_corner(x):  # a per-batch augmentation: uint8 images before normalisation
        seen.append((tuple(x.shape), x.dtype))
        x = x.clone()
        x[:, :, :2, :2] = 0
        return x

    data = digits_data()
    data.transform = erase_corner
    config = tiny_config(recipe=recipe, train={"epochs": 1})
    members = None
    if recipe == "distill":  # a teacher given as a (trained) module needs no weights file
        config["members"] = [{"name": "t", "trainable": False}, {"name": "s"}]
        members = {"t": nets.TinyNet(), "s": nets.make_net}
    result = peerlearn.train(config, out=tmp_path, data=data, members=members)
    assert len(seen) == result.summary["steps"] and all(s == ((64, 1, 8, 8), torch.uint8) for s in seen)


def test_cli_evaluates_a_run_of_python_members_from_what_it_recorded(nets, tmp_path, capsys):
    import json

    result = peerlearn.train(tiny_config(recipe="mutual", train={"epochs": 1}), out=tmp_path,
                             members={"a": nets.TinyNet(hidden=24), "b": nets.make_net})
    assert main(["evaluate", str(result.run_dir), "--json"]) == 0
    section = json.loads(capsys.readouterr().out)["classification"]
    for name in ("a", "b"):
        assert section[name]["top1"] == pytest.approx(result.summary["members"][name]["test"]["top1"], abs=1e-6)
