"""Exports that deploy without guessing: raw uint8 images in (the training resize and normalisation inside the
graph), logits out; ONNX weights inside the one .onnx file; the JSON lists every file written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import peerlearn
from conftest import tiny_config
from peerlearn.api import load_run
from peerlearn.data.prepare import load_raw
from peerlearn.export import export_member


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """digits (8 x 8 sources) trained at image_size 16: the training pipeline resizes every image."""
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(data={"image_size": 16}, train={"epochs": 1, "progress": "off", "threads": 1})
    run_dir = peerlearn.train(config, out=out).run_dir
    config, data, recipe = load_run(run_dir)
    raw = load_raw(config.data).test_x[-37:]  # source images the export's own check did not use
    stored = data.test.x[-37:]                # the same images as the run stored them (resized to 16 x 16)
    assert raw.shape[-1] == 8 and stored.shape[-1] == 16
    with torch.no_grad():
        reference = recipe.cohort["a"].model.eval()(recipe.normalizer(stored).float()).numpy()
    return run_dir, raw, reference


def test_onnx_on_raw_uint8_equals_the_runs_logits(run, tmp_path):
    import onnxruntime as ort

    run_dir, raw, reference = run
    result = export_member(run_dir, "a", "onnx", out=tmp_path, raw_input="nchw", progress="off")
    info = json.loads(result.info_path.read_text())
    assert info["input"]["dtype"] == "uint8" and info["input"]["shape"] == [None, 1, 8, 8]
    assert info["preprocessing"]["in_graph"] and info["preprocessing"]["resize"] == [16, 16]
    assert result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    logits = session.run(None, {"input": raw.numpy()})[0]
    assert np.abs(logits - reference).max() < 1e-4
    # one self-contained file: the weights are inside the .onnx, and the JSON lists every file written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(info["files"]) == ["a.onnx", "a.onnx.json"]


def test_torchscript_on_raw_nhwc_equals_the_runs_logits(run, tmp_path):
    run_dir, raw, reference = run
    result = export_member(run_dir, "a", "torchscript", out=tmp_path, raw_input="nhwc", progress="off")
    assert json.loads(result.info_path.read_text())["input"]["shape"] == [None, 8, 8, 1]
    module = torch.jit.load(str(result.model_path))
    with torch.no_grad():
        logits = module(raw.permute(0, 2, 3, 1).contiguous()).numpy()
    assert np.abs(logits - reference).max() < 1e-4


def test_raw_input_with_safetensors_is_a_usage_error(run, tmp_path):
    from peerlearn.cli import main

    assert main(["export", str(run[0]), "--member", "a", "--format", "safetensors", "--raw-input", "nchw",
                 "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("size_in, size_out", [(28, 14), (8, 16), (32, 16), (8, 8)])
def test_bilinear_resize_equals_the_training_resize_at_power_of_two_scales(size_in, size_out):
    import torch.nn.functional as F

    from peerlearn.export.raw_input import bilinear_resize

    x = torch.randint(0, 256, (16, 3, size_in, size_in), generator=torch.Generator().manual_seed(0)).float()
    expected = F.interpolate(x, size=(size_out, size_out), mode="bilinear", align_corners=False)
    assert torch.equal(bilinear_resize(x, size_out, size_out), expected)
