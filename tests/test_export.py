"""`peerlearn export`: every format reproduces the trained member, with its preprocessing beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import peerlearn
from conftest import run_cli, tiny_config
from peerlearn.api import load_run
from peerlearn.export import ExportError, export_member, load_safetensors_model
from peerlearn.export.check import check_outputs, max_abs_diff


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_dir = peerlearn.train(tiny_config(train={"epochs": 1, "progress": "off", "threads": 1}), out=out).run_dir
    config, data, recipe = load_run(run_dir)
    # fresh items, not the export's own check batch: the last 37 test items, preprocessed as in training
    inputs = recipe.normalizer(data.test.x[-37:]).float()
    with torch.no_grad():
        reference = {m.name: m.model.eval()(inputs).numpy() for m in recipe.cohort}
    return run_dir, data, recipe, inputs, reference


def test_max_abs_diff_and_tolerance_by_hand():
    assert max_abs_diff([[1.0, 2.0]], [[1.0, 2.5]]) == 0.5
    assert check_outputs(np.zeros(3), np.full(3, 5e-5)) == pytest.approx(5e-5)
    with pytest.raises(ExportError, match="max \\|Δ logits\\| = 0.0002"):
        check_outputs(np.zeros(3), np.array([0.0, 2e-4, 0.0]))
    with pytest.raises(ExportError, match="shape"):
        max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_onnx_matches_pytorch_in_onnxruntime(run, tmp_path, exporter):
    import onnxruntime as ort

    run_dir, data, recipe, inputs, reference = run
    result = export_member(run_dir, "b", "onnx", out=tmp_path, exporter=exporter, progress="off")
    assert result.model_path == tmp_path / "b.onnx" and result.max_abs_diff < 1e-4
    info = json.loads(result.info_path.read_text())
    assert info["onnx"]["exporter"] == exporter
    assert info["check"]["max_abs_diff"] == result.max_abs_diff and info["check"]["items"] == 64
    assert info["class_names"] == data.class_names
    assert info["preprocessing"]["mean"] == data.mean and info["preprocessing"]["std"] == data.std
    assert info["input"]["shape"] == [None, 1, 8, 8] and info["input"]["channels"] == 1
    # the batch axis is dynamic: 37 other items give PyTorch's logits too
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": inputs.numpy()})[0]
    assert logits.shape == (37, 10) and np.abs(logits - reference["b"]).max() < 1e-4


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_torchscript_reload_equals_pytorch(run, tmp_path):
    run_dir, data, recipe, inputs, reference = run
    result = export_member(run_dir, "a", "torchscript", out=tmp_path, progress="off")
    module = torch.jit.load(str(result.model_path))
    with torch.no_grad():
        np.testing.assert_allclose(module(inputs).numpy(), reference["a"], rtol=0, atol=1e-6)
    assert json.loads(result.info_path.read_text())["model_file"] == "a.pt"


def test_safetensors_reload_equals_pytorch(run, tmp_path):
    run_dir, data, recipe, inputs, reference = run
    result = export_member(run_dir, "a", "safetensors", out=tmp_path, progress="off")
    model = load_safetensors_model(result.info_path)
    for key, value in recipe.cohort["a"].model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        assert np.array_equal(model(inputs).numpy(), reference["a"])
    assert result.max_abs_diff == 0.0


def test_a_failed_check_leaves_no_files(run, tmp_path):
    run_dir = run[0]
    with pytest.raises(ExportError, match="does not reproduce PyTorch"):
        export_member(run_dir, "a", "onnx", out=tmp_path, exporter="legacy", tolerance=1e-12, progress="off")
    assert list(tmp_path.iterdir()) == []


def test_export_cli(run, tmp_path):
    run_dir = run[0]
    done = run_cli("export", str(run_dir), "--member", "a", "--format", "onnx", "--exporter", "legacy")
    assert done.returncode == 0, done.stderr
    assert "max |Δ logits| =" in done.stdout and (run_dir / "export" / "a.onnx.json").is_file()
    from peerlearn.cli import main

    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path)]) == 2  # two members
    assert main(["export", str(run_dir), "--member", "zz", "--format", "onnx", "--out", str(tmp_path)]) == 2
