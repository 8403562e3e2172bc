"""The transfer recipe: backbone sources, feature cache, staged unfreezing, frozen BatchNorm,
per-group learning rates, concatenated backbones, source data, and errors."""

import sys
import types

import pytest
import torch
from torch import nn

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.engine.checkpoint import load_weights
from peerlearn.errors import ConfigError
from peerlearn.transfer.model import TransferModel, batchnorm_layers

from conftest import run_cli, tiny_config

ONE = [{"name": "a", "model": "small_cnn", "model_args": {"width": 8}}]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A small CNN trained briefly on digits: the pretrained backbone of these tests."""
    out = tmp_path_factory.mktemp("source")
    return peerlearn.train(tiny_config(members=ONE, train={"epochs": 2, "progress": "off", "threads": 1}), out=out)


def transfer_config(source, tmp_path, **transfer):
    settings = {"backbones": [{"source": str(source)}], "cache_dir": str(tmp_path / "cache"), **transfer}
    return tiny_config(recipe="transfer", members=ONE, transfer=settings)


def backbone_state(result):
    return {k: v.clone() for k, v in result.cohort["a"].model.backbones[0].state_dict().items()}


def source_state(source_run):
    state = load_weights(source_run.run_dir / "model.safetensors", "a")
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def test_features_mode_caches_and_second_run_hits(source_run, tmp_path):
    config = transfer_config(source_run.run_dir, tmp_path, mode="features")
    first = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 5})
    second = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 5})
    assert first.summary["transfer"]["cache_hit"] is False
    assert second.summary["transfer"]["cache_hit"] is True
    assert first.summary["transfer"]["cache_file"] == second.summary["transfer"]["cache_file"]
    assert second.member_accuracy()["a"] == pytest.approx(first.member_accuracy()["a"])
    assert first.member_accuracy()["a"] > 0.7  # a linear head on the source's features learns digits
    assert first.summary["train_seconds"] < 10
    # the backbone, BatchNorm statistics included, is exactly the source's
    for key, value in source_state(source_run).items():
        torch.testing.assert_close(backbone_state(first)[key], value, msg=key)
    # other preprocessing → another key → a miss
    changed = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 1, "data.normalize": False})
    assert changed.summary["transfer"]["cache_hit"] is False
    assert changed.summary["transfer"]["cache_file"] != first.summary["transfer"]["cache_file"]


def test_staged_unfreezing_trains_deep_group_and_keeps_frozen_group_with_its_batchnorm(source_run, tmp_path):
    config = transfer_config(source_run.run_dir, tmp_path, mode="staged", groups=2, unfreeze_at=[1])
    result = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 2})
    model: TransferModel = result.cohort["a"].model
    original = source_state(source_run)
    after = backbone_state(result)
    deep_modules, shallow_modules = model.group_modules(2)[1], model.group_modules(2)[2]
    names = {id(m): n for n, m in model.backbones[0].named_modules()}
    shallow_keys = [f"{names[id(m)]}.{k}" for m in shallow_modules for k in m.state_dict()]
    deep_keys = [f"{names[id(m)]}.{k}" for m in deep_modules for k in m.state_dict()]
    assert any("running_mean" in k for k in shallow_keys)
    for key in shallow_keys:  # weights and BatchNorm buffers of the frozen group: untouched
        torch.testing.assert_close(after[key], original[key], msg=key)
    changed = [k for k in deep_keys if not torch.equal(after[k], original[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)
    stages = [entry["stage"] for entry in result.recipe.trainer.history]
    assert stages == ["head", "unfreeze1"]


def test_finetune_with_freeze_bn_keeps_every_batchnorm(source_run, tmp_path):
    config = transfer_config(source_run.run_dir, tmp_path, mode="finetune", freeze_bn=True)
    result = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 1})
    model = result.cohort["a"].model
    original, after = source_state(source_run), backbone_state(result)
    bn_names = [n for n, m in model.backbones[0].named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_names
    for name in bn_names:
        for key in ("running_mean", "running_var", "weight", "bias", "num_batches_tracked"):
            torch.testing.assert_close(after[f"{name}.{key}"], original[f"{name}.{key}"])
    model.train()
    assert all(not bn.training for bn in batchnorm_layers(list(model.modules())) if bn in model.frozen_bn)
    convs = [k for k in after if k.endswith("weight") and after[k].dim() == 4]
    assert all(not torch.equal(after[k], original[k]) for k in convs)  # the convolutions did train


def test_group_learning_rates(source_run, tmp_path):
    config = load_config(transfer_config(source_run.run_dir, tmp_path, mode="finetune", groups=2,
                                         lr_multipliers=[1.0, 0.1, 0.01]))
    _, _, recipe = prepare_run(config)
    recipe.configure(2, 1)
    lrs = [g["lr"] for g in recipe.cohort["a"].optimizer.param_groups]
    assert lrs == pytest.approx([0.05, 0.005, 0.0005])
    decay = load_config(config, ["transfer.lr_multipliers=null", "transfer.layer_decay=0.5"])
    _, _, recipe = prepare_run(decay)
    recipe.configure(2, 1)
    assert [g["lr"] for g in recipe.cohort["a"].optimizer.param_groups] == pytest.approx([0.05, 0.025, 0.0125])
    groups = recipe.cohort["a"].model.parameter_groups(2)
    counted = sum(p.numel() for g in groups for p in g)
    assert counted == sum(p.numel() for p in recipe.cohort["a"].model.parameters())


def test_weights_file_sources(source_run, tmp_path):
    state = load_weights(source_run.run_dir / "model.safetensors", "a")
    pt = tmp_path / "backbone.pt"
    torch.save({"state_dict": state}, pt)
    from_pt = peerlearn.train(transfer_config(pt, tmp_path), out=tmp_path / "runs", **{"train.epochs": 1})
    from_st = peerlearn.train(transfer_config(source_run.run_dir / "model.safetensors", tmp_path),
                              out=tmp_path / "runs", **{"train.epochs": 1})
    from_dir = peerlearn.train(transfer_config(source_run.run_dir, tmp_path), out=tmp_path / "runs",
                               **{"train.epochs": 1})
    assert from_pt.summary["transfer"]["cache_file"] == from_st.summary["transfer"]["cache_file"] \
        == from_dir.summary["transfer"]["cache_file"]  # same weights, same features
    # a pickle that would build an arbitrary object is refused by weights-only loading
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": types.SimpleNamespace(a=1)}, evil)
    with pytest.raises(ConfigError, match="weights-only"):
        prepare_run(load_config(transfer_config(evil, tmp_path)))


def test_timm_source_with_a_stand_in_module(monkeypatch, tmp_path):
    """The timm wrapper (num_classes=0 → pooled features) through a stand-in module with timm's API."""

    class Net(nn.Module):
        num_features = 6

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    calls = []
    fake = types.SimpleNamespace(create_model=lambda name, pretrained, num_classes, in_chans: calls.append(
        (name, pretrained, num_classes, in_chans)) or Net())
    monkeypatch.setitem(sys.modules, "timm", fake)
    config = tiny_config(recipe="transfer", members=ONE, transfer={
        "backbones": [{"source": "timm:tiny_net", "pretrained": False}], "cache_dir": str(tmp_path)})
    result = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 1})
    assert calls == [("tiny_net", False, 0, 1)]
    assert result.summary["transfer"]["feature_dim"] == 6


def test_timm_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm → ImportError
    config = load_config(tiny_config(recipe="transfer", members=ONE,
                                     transfer={"backbones": [{"source": "timm:resnet18"}]}))
    with pytest.raises(ConfigError, match=r"peerlearn\[timm\]"):
        prepare_run(config)


def test_two_backbones_at_two_resolutions_are_concatenated(tmp_path):
    small = peerlearn.train(tiny_config(members=ONE), out=tmp_path / "src")  # native 8 px
    large = peerlearn.train(tiny_config(members=[{"name": "a", "model": "mlp", "model_args": {"widths": [32]}}],
                                        data={"source": "digits", "image_size": 16, "val_fraction": 0.2}),
                            out=tmp_path / "src")
    config = tiny_config(recipe="transfer", members=ONE, data={"source": "digits", "image_size": 16,
                                                               "val_fraction": 0.2},
                         transfer={"backbones": [{"source": str(small.run_dir), "input_size": 8},
                                                 {"source": str(large.run_dir)}],
                                   "mode": "features", "cache_dir": str(tmp_path / "cache")})
    result = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 10})
    model: TransferModel = result.cohort["a"].model
    assert model.feature_dim == 16 + 32
    x = torch.randn(4, 1, 16, 16)
    model.eval()
    expected = torch.cat([model.backbones[0].features(nn.functional.interpolate(x, size=(8, 8), mode="bilinear",
                                                                                align_corners=False)),
                          model.backbones[1].features(x)], dim=1)
    torch.testing.assert_close(model.backbone_features(x), expected)
    assert result.member_accuracy()["a"] > 0.8


def test_source_data_with_importance_weights_and_coral(source_run, tmp_path):
    config = transfer_config(source_run.run_dir, tmp_path, mode="finetune", importance="inputs", align="coral",
                             align_weight=0.5, source_data={"source": "digits", "train_subset": 300})
    config["data"]["labelled"] = 3
    result = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 1})
    info = result.summary["transfer"]
    assert info["source_items"] == 300 and 0 < info["importance_ess"] <= 300
    train_logs = [entry["train"] for entry in result.recipe.trainer.history]
    member = result.recipe.cohort.trainable[0].name  # every recipe logs a member's loss parts as member/part
    assert f"{member}/align" in train_logs[0] and train_logs[0][f"{member}/align"] > 0
    stream = result.recipe.train_stream
    assert type(stream).__name__ == "WeightedBatchStream" and len(stream.weights) == len(stream.split)


def test_bad_transfer_configs_are_clear_errors(source_run, tmp_path):
    with pytest.raises(ConfigError, match="transfer.backbones"):
        prepare_run(load_config(tiny_config(recipe="transfer", members=ONE)))
    with pytest.raises(ConfigError, match="unfreeze_at"):
        load_config(transfer_config(source_run.run_dir, tmp_path, mode="staged"))
    with pytest.raises(ConfigError, match="neither|not a run directory"):
        prepare_run(load_config(transfer_config(tmp_path / "nope", tmp_path)))
    mlp = peerlearn.train(tiny_config(members=[{"name": "a", "model": "mlp", "model_args": {"widths": [16]}}]),
                          out=tmp_path / "src")
    with pytest.raises(ConfigError, match="image_size"):  # an 8x8 MLP cannot read 12x12 digits
        prepare_run(load_config(transfer_config(mlp.run_dir, tmp_path), ["data.image_size=12"]))
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(transfer_config(tmp_path / "missing", tmp_path)))
    completed = run_cli("train", str(path), "--out", str(tmp_path / "runs"))
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "transfer.backbones.0.source" in completed.stderr


def test_shared_regularisers_reach_the_transfer_recipe(source_run, tmp_path):
    """Label smoothing, centre loss and early stopping come through Recipe.supervised_loss / callbacks."""
    config = transfer_config(source_run.run_dir, tmp_path, mode="features")
    config["regularize"] = {"center_loss": 0.1, "label_smoothing": 0.1,
                            "early_stopping": {"enabled": True, "patience": 1}}
    result = peerlearn.train(config, out=tmp_path / "runs", **{"train.epochs": 3})
    logged = result.recipe.trainer.history[0]["train"]
    member = result.recipe.cohort.trainable[0].name
    assert logged[f"{member}/center"] > 0 and logged[f"{member}/ce"] > 0
    assert "early_stopping" in result.summary and "transfer" in result.summary
