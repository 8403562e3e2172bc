"""Resume refuses what it cannot do exactly: an edited config.yaml (exit 2, changed keys listed), changes
outside the allowed set (exit 2); `--change` continues with new settings and records them; a checkpoint
with flipped bits, an unknown format version, wrong shapes or broken metadata is refused (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import peerlearn
from conftest import tiny_config
from peerlearn.cli import main
from peerlearn.engine.checkpoint import DIGEST_KEY, FORMAT_KEY, load_state, save_state, tensors_digest


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch DML run (its checkpoint is at the end of epoch 1)."""
    return peerlearn.train(tiny_config(recipe="mutual", train={"epochs": 1}),
                           out=tmp_path_factory.mktemp("runs")).run_dir


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run, free to tamper with."""
    copy = tmp_path / finished.name
    copy.mkdir()
    for name in ("config.yaml", "checkpoint.safetensors", "metrics.jsonl"):
        (copy / name).write_bytes((finished / name).read_bytes())
    return copy


def _resume(run: Path, *extra: str, capsys) -> tuple[int, str]:
    code = main(["train", "--resume", str(run), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_an_edited_config_is_refused_with_the_changed_keys(run, capsys):
    before = (run / "checkpoint.safetensors").read_bytes()
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["lr"] = 0.01
    config["mutual"]["weight"] = 3.0
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, err = _resume(run, capsys=capsys)
    assert code == 2 and "optim.lr (0.05 -> 0.01)" in err and "mutual.weight (1.0 -> 3.0)" in err, err
    assert f"--resume {run} --change" in err
    assert (run / "checkpoint.safetensors").read_bytes() == before  # nothing trained, nothing rewritten


def test_change_continues_with_new_settings_and_records_them(run, capsys):
    code, err = _resume(run, "--change", "optim.lr=0.01", "--change", "train.epochs=2", capsys=capsys)
    assert code == 0, err
    state = load_state(run / "checkpoint.safetensors")
    assert state["position"]["global_epoch"] == 2  # one more epoch, as changed
    for member in ("a", "b"):  # the optimizer's lr is the new one, its momentum buffers kept going
        assert state["members"][member]["optimizer"]["param_groups"][0]["lr"] == 0.01
    records = [(c["key"], c["from"], c["to"], c["epoch"]) for c in state["changes"]]
    assert records == [("optim.lr", 0.05, 0.01, 1), ("train.epochs", 1, 2, 1)]
    summary = json.loads((run / "summary.json").read_text())
    assert [(c["key"], c["to"]) for c in summary["changes"]] == [("optim.lr", 0.01), ("train.epochs", 2)]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optim"]["lr"] == 0.01 and config["train"]["epochs"] == 2
    assert _resume(run, capsys=capsys)[0] == 0  # config.yaml and checkpoint agree again


def test_changes_that_the_checkpoint_cannot_follow_are_refused(run, capsys):
    code, err = _resume(run, "--change", "members.0.model=mlp", capsys=capsys)
    assert code == 2 and "Cannot change members.0.model" in err, err
    code, err = _resume(run, "--change", "optim.lr=true", capsys=capsys)
    assert code == 2 and "optim.lr" in err, err
    code, err = _resume(run, "--change", "mutual.update=sequential", capsys=capsys)  # the recipe's own section
    assert code == 2 and "Cannot change mutual.update" in err and "mutual.weight" in err, err
    code, err = _resume(run, "--change", "schedule.name=cosine", capsys=capsys)  # schedule.* but its name
    assert code == 2 and "Cannot change schedule.name" in err and "schedule.gamma" in err, err
    code, err = main(["train", "--change", "optim.lr=0.1"]), capsys.readouterr().err
    assert code == 2 and "--resume" in err


def test_a_change_refused_after_the_checks_writes_nothing(run, capsys):
    """train.device is a key that may change, but a device this machine lacks is only found when the run is
    set up: nothing may have been recorded by then, and a plain resume still works."""
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "checkpoint.safetensors")}
    code, err = _resume(run, "--change", "train.device=cuda:99", capsys=capsys)
    assert code == 2 and "train.device" in err, err
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not list(run.glob(".*.tmp"))
    code, err = _resume(run, capsys=capsys)
    assert code == 0, err


def _rewrite(path: Path, tensors=None, metadata=None) -> None:
    with safe_open(str(path), framework="pt") as handle:
        old_metadata = handle.metadata()
    save_file(tensors if tensors is not None else load_file(str(path)), str(path),
              metadata={**old_metadata, **(metadata or {})})


def test_flipped_bits_in_the_weights_are_refused(run, capsys):
    path = run / "checkpoint.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("0") and tensors[k].numel() >= 100 and tensors[k].is_floating_point())
    flipped = tensors[key].clone().view(torch.int32)
    flipped.view(-1)[:100] ^= 1 << 30  # an exponent bit of 100 weights
    tensors[key] = flipped.view(torch.float32)
    _rewrite(path, tensors)
    code, err = _resume(run, capsys=capsys)
    assert code == 1 and "content check" in err and str(path) in err, err


def test_an_unknown_format_version_is_refused(run, capsys):
    _rewrite(run / "checkpoint.safetensors", metadata={FORMAT_KEY: "99"})
    code, err = _resume(run, capsys=capsys)
    assert code == 1 and "format version 99" in err, err


def test_wrong_shapes_and_broken_metadata_are_clear_errors(run, capsys):
    path = run / "checkpoint.safetensors"
    state = load_state(path)
    weights = state["members"]["a"]["model"]
    name = next(iter(weights))
    weights[name] = torch.zeros(3, 3)
    save_state(path, state)
    code, err = _resume(run, capsys=capsys)
    assert code == 1 and "do not fit" in err and "'a'" in err, err

    del state["position"]
    save_state(path, state)
    code, err = _resume(run, capsys=capsys)
    assert code == 1 and "broken metadata" in err, err

    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"peerlearn": "{not json", FORMAT_KEY: "2",
                                            DIGEST_KEY: tensors_digest(tensors)})
    code, err = _resume(run, capsys=capsys)
    assert code == 1 and "broken metadata" in err, err
