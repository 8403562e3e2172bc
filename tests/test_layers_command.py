"""`peerlearn layers CONFIG` and ``peerlearn.layers``: the readable layers of a config's members, with shapes."""

from __future__ import annotations

import json

import torch
from torch import nn

import peerlearn
from peerlearn.cli import main
from conftest import REPO, run_cli, tiny_config


def words(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_layers_of_a_shipped_config_from_the_command_line():
    result = run_cli("layers", str(REPO / "configs" / "digits_scratch.yaml"), "--stages")
    assert result.returncode == 0, result.stderr
    lines = words(result.stdout)
    assert lines[0] == ["member", "a:", "small_cnn,", "input", "[1,", "1,", "28,", "28]"]
    assert ["body.2", "stage1", "MaxPool2d", "[1,", "16,", "14,", "14]"] in lines
    assert ["body.5", "stage2", "MaxPool2d", "[1,", "32,", "7,", "7]"] in lines
    assert ["classifier:input", "features", "Linear", "[1,", "32]"] in lines
    assert ["classifier", "classifier", "Linear", "[1,", "10]"] in lines


def test_a_bad_config_exits_2():
    result = run_cli("layers", str(REPO / "configs" / "digits_scratch.yaml"), "members.0.model=small_cnnn")
    assert result.returncode == 2 and "members.0.model" in result.stderr and "Traceback" not in result.stderr


def test_every_layer_with_notes_and_overrides(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(tiny_config()))
    assert main(["layers", str(config), "members.1.model=layerwise_cnn", "members.1.model_args={width: 4}"]) == 0
    out = capsys.readouterr().out
    lines = words(out)
    assert ["member", "b:", "layerwise_cnn,", "input", "[1,", "1,", "8,", "8]"] in lines
    assert ["body.0.1", "BatchNorm2d", "[1,", "8,", "8,", "8]", "overwritten", "in", "place:", "clone=True"] in lines
    assert ["heads.0", "AuxiliaryHead", "not", "reached"] in lines
    assert main(["layers", str(config), "--member", "a", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["member"] for row in rows} == {"a"}
    assert {"member": "a", "model": "small_cnn", "input": [1, 1, 8, 8], "path": "body.5", "stage": "stage2",
            "type": "MaxPool2d", "shape": [1, 16, 2, 2], "calls": 1, "in_place": False} in rows
    assert main(["layers", str(config), "--member", "c"]) == 2
    assert "no member 'c'; its members: a, b" in capsys.readouterr().err


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.trunk(x).mean(dim=(2, 3)))


def test_layers_from_python_with_a_network_of_your_own():
    torch.manual_seed(0)
    rows = peerlearn.layers(tiny_config(), members={"a": Tiny()}, features_from={"a": "trunk"})
    mine = {row["path"]: row for row in rows if row["member"] == "a"}
    assert mine["trunk"]["stage"] == "features" and mine["trunk"]["shape"] == [1, 4, 8, 8]
    assert mine["head"]["stage"] == "classifier" and mine["head"]["shape"] == [1, 10]
    assert "network" not in mine  # paths are relative to your network
    assert {row["member"] for row in rows} == {"a", "b"}
