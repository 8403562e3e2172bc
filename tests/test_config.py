"""Config validation: wrong keys, types and values end with exit code 2 and a message naming them."""

import pytest
import yaml

from peerlearn.cli import main
from peerlearn.config import load_config, parse_override
from peerlearn.errors import ConfigError


@pytest.mark.parametrize("override, key, hint", [
    ("optim.lr=-1", "optim.lr", "greater than 0"),
    ("optimm.lr=1", "optimm", "allowed here"),
    ("data.augment.flipp=true", "data.augment.flipp", "crop_padding"),
    ("members.0.model=resnet99", "members.0.model", "resnet32"),
    ("members=[]", "members", "empty"),
    ("optim.name=adamx", "optim.name", "'sgd'"),
    ("train.epochs=abc", "train.epochs", "integer"),
    ("recipe=magic", "recipe", "mutual"),
    ("data.source=imagenet21k", "data.source", "fashion_mnist"),
    ("recipe=mutual | mutual.divergence=l2", "mutual.divergence", "'kl'"),
    ("mutual.weight=5", "mutual", "this run's recipe is 'independent', which has no section"),
    ("recipe=distill | mutual.weight=5", "mutual", "whose section is 'distill'"),
    ("recipe=pkg_never_there.mod:Recipe", "recipe", "cannot be imported"),
    ("members.0.optim={lr: 0}", "members.0.optim.lr", "greater than 0"),
    ("members.1.schedule={gamma: 2}", "members.1.schedule.gamma", "less than or equal"),
    ("members=[{name: a}, {name: a}]", "members", "unique"),
    ("data.val_fraction=1.5", "data.val_fraction", "less than 1"),
    ("optim.nesterov=true | optim.momentum=0", "optim", "momentum"),
])
def test_bad_values_name_the_key(override, key, hint, capsys):
    code = main(["train", "--out", "/nonexistent-never-created", *override.split(" | ")])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err and hint in err
    assert "Traceback" not in err


@pytest.mark.parametrize("text, message", [
    ("lr", "no '='"),
    ("optim..lr=1", "empty key"),
    ("members.9.model=mlp", "not an index below"),
    ("optim.lr.x=1", "no sub-keys"),
    ("optim.lr=[1", "not valid YAML"),
])
def test_bad_override_syntax(text, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config({"optim": {"lr": 0.1}}, [text])


def test_missing_or_broken_config_files(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    assert main(["train", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert main(["train", str(listy)]) == 2


def test_overrides_reach_the_right_keys_and_yaml_types():
    config = load_config({"recipe": "mutual", "members": [{"name": "x"}, {"name": "y"}]},
                         ["optim.lr=0.05", "members.1.model=mlp", "members.1.model_args={widths: [16]}",
                          "data.augment.flip=true", "mutual.update=sequential"])
    assert config.optim.lr == 0.05
    assert config.members[1].model == "mlp" and config.members[1].model_args == {"widths": [16]}
    assert config.data.augment.flip is True and config.mutual.update == "sequential"
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a.b=-2E+2") == (["a", "b"], -200.0)
    assert parse_override("a.b=abc") == (["a", "b"], "abc")


def test_on_off_yes_no_stay_words_only_true_false_are_booleans():
    """YAML 1.2 booleans: `train.progress=off` must reach the Literal field as the word 'off'."""
    assert load_config({}, ["train.progress=off"]).train.progress == "off"
    assert load_config({}, ["train.progress=on"]).train.progress == "on"
    assert parse_override("a=yes") == (["a"], "yes")
    assert parse_override("a=False") == (["a"], False)
    assert parse_override("a=true") == (["a"], True)


def test_member_optim_and_schedule_fall_back_to_top_level():
    config = load_config({"optim": {"name": "sgd", "lr": 0.1, "nesterov": True},
                          "members": [{"name": "a"}, {"name": "b", "optim": {"name": "adam", "lr": 0.001}}]})
    assert config.member_optim(config.members[0]).nesterov is True
    b = config.member_optim(config.members[1])
    assert (b.name, b.lr) == ("adam", 0.001)


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ is empty"
    for path in configs:
        tree = yaml.safe_load(path.read_text())
        load_config(tree)  # raises ConfigError naming the key if a shipped config is stale
