"""Forward-hook taps (peerlearn.models.taps): values read by module path or stage name during the one forward pass
equal the sub-network run by hand, keep their gradients, and every misuse is a clear error."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from peerlearn.errors import ConfigError
from peerlearn.models import available_models, create_model
from peerlearn.models.taps import LayerTaps, last_stage, layer_table, penultimate, resolve_layer, stage_paths
from peerlearn.models.user import HookedModel

SMALL_ARGS = {"mlp": {"widths": (12, 10)}, "small_cnn": {"width": 4}, "mobilenet": {"width_mult": 0.125},
              "inception_v1": {"width_mult": 0.0625}, "wrn": {"depth": 10, "widen_factor": 1},
              "cifar_resnet": {"depth": 8}, "layerwise_cnn": {"width": 4}}


def zoo(name: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5, in_channels=3, image_size=16, **{**SMALL_ARGS.get(name, {}), **extra}).eval()


class UserNet(nn.Module):
    """A user's network: not a PeerModel, its own names."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.layer2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.layer2(self.act(self.conv(x)))).flatten(1))


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- values equal the sub-network by hand
def test_zoo_stage_equals_the_subnetwork_run_by_hand():
    x = images()
    model = zoo("cifar_resnet", depth=14)  # n = 2 blocks per group: stage2 = blocks.3
    taps = LayerTaps(model, ["stage2", "blocks.1.conv2", "features"])
    with taps.capture() as seen:
        logits = model(x)
    with torch.no_grad():
        stem = model.stem(x)
        by_hand = model.blocks[:4](stem)
        block1 = model.blocks[1]
        inner = block1.conv2(block1.relu(block1.bn1(block1.conv1(model.blocks[0](stem)))))
        assert torch.allclose(seen["stage2"], by_hand)
        assert torch.allclose(seen["blocks.1.conv2"], inner)
        assert torch.allclose(seen["features"], model.features(x))
        assert torch.allclose(logits, model.classifier(seen["features"]))
    assert taps.layers["stage2"].spec == "blocks.3"


def test_user_module_layer_equals_its_subnetwork_and_paths_are_relative_to_it():
    net = UserNet().eval()
    model = HookedModel(net)
    x = images()
    taps = LayerTaps(model, ["layer2.0", "fc:input", "features"])
    with taps.capture() as seen:
        logits = model(x)
    with torch.no_grad():
        assert torch.allclose(seen["layer2.0"], net.layer2[0](net.act(net.conv(x))))
        assert torch.allclose(seen["fc:input"], net.pool(net.layer2(net.act(net.conv(x)))).flatten(1))
        assert torch.allclose(logits, net(x))
    assert taps.layers["features"].spec == "fc:input"  # no features_from: the last Linear's input
    with pytest.raises(ConfigError, match="relative to your network: write 'layer2'"):
        LayerTaps(model, "network.layer2")


@pytest.mark.parametrize("name", sorted(set(available_models()) - {"wrn_28_10", "resnet56", "resnet32"}))
def test_every_zoo_network_names_its_stages(name):
    """features = the classifier's input = model.features(x); classifier = the logits; stages get deeper (the
    spatial size never grows), and each stage's pooled output is the features where the net pools it directly."""
    model = zoo(name)
    aliases = stage_paths(model)
    stages = [alias for alias in aliases if alias.startswith("stage")]
    assert stages == [f"stage{k}" for k in range(1, len(stages) + 1)] and len(stages) >= 2
    assert list(aliases)[-2:] == ["features", "classifier"]
    x = images(2)
    taps = LayerTaps(model, list(aliases))
    with taps.capture() as seen:
        logits = model(x)
    with torch.no_grad():
        assert torch.allclose(seen["features"], model.features(x), atol=1e-6)
        assert torch.equal(seen["classifier"], logits)
    sizes = [seen[s].shape[-1] for s in stages]
    assert sizes == sorted(sizes, reverse=True)
    assert last_stage(model) == taps.layers[stages[-1]].spec
    assert penultimate(model) == taps.layers["features"].spec
    if name in ("small_cnn", "resnet20", "cifar_resnet", "mobilenet", "inception_v1"):
        assert torch.allclose(seen[stages[-1]].mean(dim=(2, 3)), seen["features"], atol=1e-5)
    if name == "mlp":
        assert torch.equal(seen["stage2"], seen["features"])


def test_documented_stage_paths_of_the_papers_networks():
    resnet32 = create_model("resnet32", num_classes=10)
    assert stage_paths(resnet32) == {"stem": "stem", "stage1": "blocks.4", "stage2": "blocks.9", "stage3": "blocks.14",
                                     "features": "classifier:input", "classifier": "classifier"}
    wrn = create_model("wrn", num_classes=10, depth=16, widen_factor=1)
    assert [stage_paths(wrn)[f"stage{k}"] for k in (1, 2, 3)] == ["blocks.1", "blocks.3", "blocks.5"]
    mobilenet = create_model("mobilenet", num_classes=10, width_mult=0.25)
    assert [stage_paths(mobilenet)[f"stage{k}"] for k in range(1, 6)] == [
        "body.3", "body.5", "body.7", "body.13", "body.15"]
    layerwise = create_model("layerwise_cnn", num_classes=10, in_channels=3, image_size=16, blocks=3)
    layerwise.depth = 2
    assert stage_paths(layerwise)["features"] == "heads.1.linear:input"


def test_stage_names_do_not_change_the_state_dict():
    model = zoo("cifar_resnet")
    keys = list(model.state_dict())
    taps = LayerTaps(model, ["stage1", "features"])
    assert list(model.state_dict()) == keys and not any("stage" in key for key in keys)
    taps.remove()


# --------------------------------------------------------------------------- one pass, gradients, input vs output
def test_one_forward_pass_reads_every_layer():
    model = zoo("cifar_resnet")
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append("forward"))
    counted = {"conv": 0}

    def count(module, args, output):
        counted["conv"] += 1

    model.stem[0].register_forward_hook(count)
    taps = LayerTaps(model, ["stem", "stage1", "stage3", "features"])
    with taps.capture() as seen:
        model(images())
    assert calls == ["forward"] and counted["conv"] == 1
    assert seen.calls == {"stem": 1, "stage1": 1, "stage3": 1, "features": 1}


def test_gradients_flow_through_a_captured_layer_into_earlier_layers_only():
    model = zoo("small_cnn").train()
    taps = LayerTaps(model, "stage1")
    with taps.capture() as seen:
        model(images())
    assert seen["stage1"].requires_grad
    seen["stage1"].square().mean().backward()  # a hint loss on stage1 alone
    first_conv = model.body[0][0].weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0
    assert model.body[3][0].weight.grad is None and model.classifier.weight.grad is None  # after stage1


def test_input_and_output_of_one_module():
    net = UserNet().eval()
    model = HookedModel(net)
    taps = LayerTaps(model, ["act:input", "act", "act:output"])
    x = images()
    with taps.capture() as seen:
        model(x)
    with torch.no_grad():
        assert torch.allclose(seen["act:input"], net.conv(x))
        assert torch.allclose(seen["act"], torch.relu(net.conv(x)))
    assert (seen["act:input"] < 0).any() and not (seen["act"] < 0).any()
    assert seen["act:output"] is seen["act"]  # one hook for two spellings of one layer


# --------------------------------------------------------------------------- errors
def test_unknown_layer_lists_close_matches_and_stage_names():
    model = zoo("cifar_resnet", depth=14)
    with pytest.raises(ConfigError) as error:
        LayerTaps(model, "blocks.40")
    message = str(error.value)
    assert "'blocks.40' is not a submodule of the network CifarResNet" in message
    assert "close matches: blocks.4" in message and "stage1 (blocks.1)" in message
    assert "peerlearn layers CONFIG" in message and error.value.exit_code == 2
    with pytest.raises(ConfigError, match="top-level submodules: conv, act, layer2, pool, fc"):
        LayerTaps(UserNet(), "layer3")
    with pytest.raises(ConfigError, match="'module.path:input'"):
        LayerTaps(model, "stage1:grad")
    with pytest.raises(ConfigError, match="already reads an input"):
        LayerTaps(model, "features:input")


def test_a_layer_the_forward_never_reaches_is_an_error_not_none():
    model = zoo("layerwise_cnn")  # forward uses heads[depth - 1] only
    taps = LayerTaps(model, ["stage1", "heads.0.linear"])
    with pytest.raises(ConfigError, match=r"did not reach the layer\(s\) heads.0.linear"):
        with taps.capture():
            model(images())
    with taps.capture(strict=False) as seen:
        model(images())
    assert list(seen) == ["stage1"] and seen.missing() == ["heads.0.linear"] and seen.calls["heads.0.linear"] == 0
    assert "stage1" in seen and "heads.0.linear" not in seen and "other" not in seen
    with pytest.raises(ConfigError, match="was not reached by the forward pass"):
        seen["heads.0.linear"]


def test_a_value_overwritten_in_place_is_refused_and_clone_reads_it():
    model = zoo("small_cnn")
    x = images()
    with pytest.raises(ConfigError, match=r"changed in place .*ReLU\(inplace=True\)"):
        with LayerTaps(model, "body.0.1").capture():  # BN followed by an in-place ReLU
            model(x)
    taps = LayerTaps(model, "body.0.1", clone=True)
    with taps.capture() as seen:
        model(x)
    with torch.no_grad():
        assert torch.allclose(seen["body.0.1"], model.body[0][1](model.body[0][0](x)))
    assert (seen["body.0.1"] < 0).any()


def test_captures_do_not_nest_and_removed_taps_refuse():
    model = zoo("small_cnn")
    taps = LayerTaps(model, "stage1")
    with taps.capture(strict=False):
        with pytest.raises(RuntimeError, match="do not nest"):
            with taps.capture():
                pass
    taps.remove()
    with pytest.raises(RuntimeError, match="removed"):
        with taps.capture():
            pass


# --------------------------------------------------------------------------- nothing held, copies, removal
def test_values_are_recorded_only_while_capturing_and_then_belong_to_the_caller():
    model = zoo("small_cnn")
    taps = LayerTaps(model, "stage2")
    with torch.no_grad():
        model(images())  # an evaluation pass: nothing recorded
    with taps.capture(strict=False) as seen:
        pass
    assert len(seen) == 0
    with taps.capture() as seen:
        model(images())
    alive = weakref.ref(seen["stage2"])
    del seen
    gc.collect()
    assert alive() is None  # neither the taps nor the model kept the tensor


def test_deepcopy_of_the_model_gives_idle_hooks_and_of_the_taps_working_ones():
    model = zoo("small_cnn")
    taps = LayerTaps(model, ["stage1", "features"])
    x = images()
    copied = copy.deepcopy(model)
    with taps.capture(strict=False) as seen:
        out = copied(x)
    assert len(seen) == 0  # the copy never records into the original's capture
    assert torch.allclose(out, model(x))
    model2, taps2 = copy.deepcopy((model, taps))
    assert taps2.model is model2
    with taps2.capture() as seen2, taps.capture() as seen1:
        model2(x)
        model(x)
    assert torch.allclose(seen2["stage1"], seen1["stage1"]) and seen2["stage1"] is not seen1["stage1"]
    taps2.remove()
    with taps.capture():  # removing the copy's hooks left the original's in place
        model(x)


def test_remove_takes_off_only_its_own_hooks():
    model = HookedModel(UserNet(), features_from="layer2")
    taps = LayerTaps(model, ["layer2", "fc:input"])
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with LayerTaps(model, "conv") as other:
        assert other.layers["conv"].spec == "conv"
    taps.remove()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks - 2
    logits, features = model.forward_with_features(images())  # the model's own features hook still works
    assert features.shape == (3, 8)


# --------------------------------------------------------------------------- names, aliases, defaults
def test_a_real_submodule_wins_over_an_alias_of_the_same_name():
    class Vgg(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(4, 5)

        def forward(self, x):
            return self.classifier(self.features(x))

    model = HookedModel(Vgg())
    assert resolve_layer(model, "features").spec == "features"
    assert "features" not in stage_paths(model) and penultimate(model) == "classifier:input"


def test_defaults_for_networks_of_your_own():
    assert last_stage(HookedModel(UserNet())) == "fc:input"  # no stage names: the penultimate features
    assert last_stage(HookedModel(UserNet(), features_from="layer2")) == "layer2"
    with pytest.raises(ConfigError, match="no nn.Linear"):
        penultimate(HookedModel(nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())))


def test_layer_table_lists_every_layer_with_its_shape():
    model = zoo("cifar_resnet")
    rows = {row["path"]: row for row in layer_table(model, images(1))}
    assert rows["blocks.0"] == {"path": "blocks.0", "stage": "stage1", "type": "BasicBlock", "shape": [1, 16, 16, 16],
                                "calls": 1, "in_place": False}
    assert rows["classifier:input"]["stage"] == "features" and rows["classifier:input"]["shape"] == [1, 64]
    assert rows["blocks.0.relu"]["calls"] == 2
    assert rows["stem.1"]["in_place"] and not rows["stem.2"]["in_place"]
    assert model.training is False
    table = {row["path"]: row for row in layer_table(zoo("layerwise_cnn"), images(1))}
    assert table["heads.0"]["shape"] is None and table["heads.0"]["calls"] == 0


# --------------------------------------------------------------------------- compile and autocast
def test_taps_under_torch_compile_eager_backend():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = zoo("small_cnn").train()
    reference = copy.deepcopy(model)
    taps = LayerTaps(model, ["stage1", "features"])
    model.compile(backend="eager")  # what engine.compile does (nn.Module.compile)
    x = images()
    with taps.capture() as seen:
        logits = model(x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward did go through dynamo
    with torch.no_grad():
        assert torch.allclose(seen["stage1"], reference.body[:3](x), atol=1e-6)
        assert torch.allclose(logits, reference(x), atol=1e-6)
    seen["stage1"].square().mean().backward()
    assert model.body[0][0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        model(x)  # outside a capture: the compiled forward records nothing
    with taps.capture() as again:
        model(x)
    assert set(again) == {"stage1", "features"}
    torch._dynamo.reset()


def test_taps_under_autocast_keep_the_autocast_dtype_and_the_graph():
    model = zoo("small_cnn")
    taps = LayerTaps(model, ["stage1", "features"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with taps.capture() as seen:
            model(images())
    assert seen["stage1"].dtype == torch.bfloat16 and seen["features"].requires_grad
    seen["features"].float().square().mean().backward()
    assert model.body[0][0].weight.grad is not None
