"""Bad data is exit 2 with the file named; a bad machine setting is exit 2 before anything is written;
divergence hidden in the weights (a BatchNorm running variance gone inf) is exit 3."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from peerlearn.cli import main
from peerlearn.data.idx import read_idx
from peerlearn.errors import DataError
from test_data_sources import write_idx_dataset, write_image_folder


def _train(tmp_path: Path, config: dict, *extra: str, capsys) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "runs"
    code = main(["train", str(path), *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    if code == 2:
        assert not (out.is_dir() and any(out.iterdir())), "a run directory was made for bad input"
    return code, err


def _folder_config(path: Path) -> dict:
    return tiny_config(data={"source": "image_folder", "path": str(path), "batch_size": 4, "val_fraction": 0.25,
                             "options": {"size": 8}}, train={"epochs": 1})


# --------------------------------------------------------------------------- bad data
def test_an_empty_class_folder_is_named(tmp_path, capsys):
    write_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    (tmp_path / "images" / "emu").mkdir()
    code, err = _train(tmp_path, _folder_config(tmp_path / "images"), capsys=capsys)
    assert code == 2 and str(tmp_path / "images" / "emu") in err and "no images" in err, err


def test_a_dataset_with_a_single_class_is_refused(tmp_path, capsys):
    write_image_folder(tmp_path / "images", {"cat": 10})
    code, err = _train(tmp_path, _folder_config(tmp_path / "images"), capsys=capsys)
    assert code == 2 and "image_folder" in err and str(tmp_path / "images") in err and "two" in err, err


def test_a_transfer_set_with_a_single_class_is_refused(tmp_path, capsys):
    write_image_folder(tmp_path / "images", {"cat": 10})
    config = tiny_config(recipe="distill", distill={"transfer": "data", "teacher_epochs": 1, "alpha": 0.0, "transfer_data": {
        "source": "image_folder", "path": str(tmp_path / "images"), "options": {"mode": "L", "size": 8}}},
        members=[{"name": "t", "model": "small_cnn", "model_args": {"width": 8}, "trainable": False},
                 {"name": "s", "model": "small_cnn", "model_args": {"width": 8}}], train={"epochs": 1})
    code, err = _train(tmp_path, config, capsys=capsys)
    assert code == 2 and str(tmp_path / "images") in err and "two" in err, err


def _csv_config(path: Path) -> dict:
    return tiny_config(data={"source": "tabular", "path": str(path), "options": {"label": "y"}},
                       members=[{"name": "a", "model": "mlp", "model_args": {"widths": [8]}}], train={"epochs": 1})


def test_a_csv_file_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "table.csv"
    path.write_bytes("x,y\n1,caf\u00e9\n2,b\n".encode("latin-1"))
    code, err = _train(tmp_path, _csv_config(path), capsys=capsys)
    assert code == 2 and str(path) in err and "UTF-8" in err, err


def test_an_oversized_csv_field_is_named(tmp_path, capsys):
    path = tmp_path / "table.csv"
    path.write_text("x,y\n1,a\n" + '2,"' + "z" * 200_000 + '"\n')
    code, err = _train(tmp_path, _csv_config(path), capsys=capsys)
    assert code == 2 and str(path) in err and "field larger than field limit" in err, err


def test_an_idx_header_claiming_more_than_the_file_holds(tmp_path, capsys):
    root = tmp_path / "data"
    write_idx_dataset(root / "mnist", n_train=60, n_test=20)
    target = root / "mnist" / "train-images-idx3-ubyte.gz"
    # 4 billion images of 28x28 claimed (about 3 TB), 16 real bytes: refused without allocating the claim
    target.write_bytes(gzip.compress(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**32 - 1, 28, 28)
                                     + bytes(16)))
    with pytest.raises(DataError, match="truncated"):
        read_idx(target)
    config = tiny_config(data={"source": "mnist", "root": str(root), "download": False, "batch_size": 16,
                               "options": {"verify": False}}, train={"epochs": 1})
    code, err = _train(tmp_path, config, capsys=capsys)
    assert code == 2 and str(target) in err and "truncated" in err, err


# --------------------------------------------------------------------------- machine settings
def test_an_image_size_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, capsys):
    code, err = _train(tmp_path, tiny_config(data={"image_size": 100000}), capsys=capsys)
    assert code == 2 and "data.image_size" in err and "GiB" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_config_error(tmp_path, capsys):
    code, err = _train(tmp_path, tiny_config(train={"device": "cuda"}), capsys=capsys)
    assert code == 2 and "train.device" in err, err


def test_nproc_zero_is_a_config_error(tmp_path, capsys):
    code, err = _train(tmp_path, tiny_config(), "--launcher", "local", "--nproc", "0", capsys=capsys)
    assert code == 2 and "--nproc" in err, err


# --------------------------------------------------------------------------- divergence in the weights
def test_divergence_in_batchnorm_statistics_stops_with_exit_3(tmp_path, capsys):
    config = tiny_config(members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8}}],
                         optim={"lr": 1e6}, train={"epochs": 2})
    code, err = _train(tmp_path, config, capsys=capsys)
    assert code == 3 and "member 'a' diverged" in err and "running_var" in err, err
    run_dir = next((tmp_path / "runs").iterdir())
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "checkpoint.safetensors").exists()
