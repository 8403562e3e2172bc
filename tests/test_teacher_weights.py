"""Teachers from your own weights: plain state dicts of your own module (.pt weights-only, .safetensors),
RUN_DIR:member, a run's only member; a teacher near chance before distillation is a warning naming the cause."""

import sys
import textwrap
import warnings

import pytest
import torch

import peerlearn
from conftest import tiny_config
from peerlearn.errors import ConfigError

NETS = '''
from torch import nn


class OwnNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))
'''


@pytest.fixture
def own(tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "teacher_nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("teacher_nets", None)
    import teacher_nets

    return teacher_nets


def distill_config(teacher: dict, epochs: int = 1) -> dict:
    return tiny_config(recipe="distill", train={"epochs": epochs},
                       members=[{"name": "t", "trainable": False, **teacher},
                                {"name": "s", "model": "mlp", "model_args": {"widths": [16]}}],
                       distill={"teacher_epochs": 0})


def trained_own_net(own, tmp_path):
    """An OwnNet trained by peerlearn; returns the plain module (its state dict has no prefix)."""
    config = tiny_config(train={"epochs": 3})
    config["members"] = [{"name": "x"}]
    net = own.OwnNet()
    peerlearn.train(config, out=tmp_path / "own", members={"x": net})
    return net


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_plain_state_dict_of_your_own_module_is_a_teacher(own, tmp_path, suffix):
    net = trained_own_net(own, tmp_path)
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": net.state_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    result = peerlearn.train(distill_config({"model": "teacher_nets:OwnNet", "weights": str(path)}),
                             out=tmp_path / "kd")
    teacher = result.cohort["t"].model
    assert all(torch.equal(teacher.network.state_dict()[k], v) for k, v in net.state_dict().items())
    check = result.summary["distill"]["teacher_check"]
    assert check["teachers"]["t"] > 0.8 and not check["warnings"]


def test_run_dir_colon_member_picks_a_member_of_another_run(tmp_path):
    pair = peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path / "pair")  # members a and b
    with pytest.raises(ConfigError, match=r"members a, b, none named 't'; pick one with RUN_DIR:member"):
        peerlearn.train(distill_config({"model": "small_cnn", "model_args": {"width": 8},
                                        "weights": str(pair.run_dir)}), out=tmp_path / "kd")
    result = peerlearn.train(distill_config({"model": "small_cnn", "model_args": {"width": 8},
                                             "weights": f"{pair.run_dir}:b"}), out=tmp_path / "kd")
    ours, theirs = result.cohort["t"].model.state_dict(), pair.cohort["b"].model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    with pytest.raises(ConfigError, match="holds no member 'z'; it has: a, b"):
        peerlearn.train(distill_config({"model": "small_cnn", "model_args": {"width": 8},
                                        "weights": f"{pair.run_dir}:z"}), out=tmp_path / "kd")


def test_the_only_member_of_a_run_is_taken_whatever_its_name(tmp_path):
    config = tiny_config(train={"epochs": 1})
    config["members"] = config["members"][:1]  # member a
    single = peerlearn.train(config, out=tmp_path / "single")
    result = peerlearn.train(distill_config({"model": "small_cnn", "model_args": {"width": 8},
                                             "weights": str(single.run_dir)}), out=tmp_path / "kd")
    ours, theirs = result.cohort["t"].model.state_dict(), single.cohort["a"].model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_teacher_trained_on_other_normalisation_is_a_warning_naming_it(tmp_path):
    config = tiny_config(train={"epochs": 3}, data={"normalize": False})  # inputs in 0..1, not standardised
    config["members"] = config["members"][:1]
    raw = peerlearn.train(config, out=tmp_path / "raw")
    assert raw.summary["members"]["a"]["val"]["top1"] > 0.8
    with pytest.warns(UserWarning) as caught:
        result = peerlearn.train(distill_config({"model": "small_cnn", "model_args": {"width": 8},
                                                 "weights": str(raw.run_dir)}), out=tmp_path / "kd")
    check = result.summary["distill"]["teacher_check"]
    messages = [str(w.message) for w in caught if "Teacher 't'" in str(w.message)]
    assert messages and messages == check["warnings"]
    assert "its run normalised inputs with mean [0]" in messages[0] and "data.normalize" in messages[0]
    chance = check["chance"]
    assert check["teachers"]["t"] < min(2 * chance, chance + 0.2) or check["teachers"]["t"] <= max(
        check["students_at_start"].values())


def test_a_good_teacher_gives_no_warning(tmp_path):
    config = tiny_config(train={"epochs": 3})
    config["members"] = config["members"][:1]
    good = peerlearn.train(config, out=tmp_path / "good")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = peerlearn.train(distill_config({"model": "small_cnn", "model_args": {"width": 8},
                                                 "weights": f"{good.run_dir}:a"}), out=tmp_path / "kd")
    check = result.summary["distill"]["teacher_check"]
    assert check["teachers"]["t"] == pytest.approx(good.summary["members"]["a"]["val"]["top1"])
    assert check["warnings"] == []


def test_a_transfer_backbone_is_picked_as_run_dir_colon_member(tmp_path):
    pair = peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path / "pair")  # members a and b
    config = tiny_config(recipe="transfer", train={"epochs": 1}, members=[{"name": "x", "model": "small_cnn",
                                                                           "model_args": {"width": 8}}],
                         transfer={"mode": "features", "groups": 1, "cache_dir": str(tmp_path / "cache"),
                                   "backbones": [{"source": f"{pair.run_dir}:b"}]})
    result = peerlearn.train(config, out=tmp_path / "transfer")
    ours = result.cohort["x"].model.backbones[0].state_dict()
    theirs = {k: v for k, v in pair.cohort["b"].model.state_dict().items() if not k.startswith("classifier.")}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
