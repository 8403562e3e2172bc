"""Clean failures: bad data named by file, non-finite inputs/losses named by member, step and checkpoint,
weights that cannot run code, unwritable folders and locked run directories (exit codes 2, 3, 4)."""

from __future__ import annotations

import dataclasses
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import peerlearn
from conftest import REPO, tiny_config
from peerlearn import api
from peerlearn.cli import main
from peerlearn.data import files as data_files
from peerlearn.engine.checkpoint import load_state, load_weights, save_weights
from peerlearn.engine.run_dir import RunLock
from peerlearn.errors import PeerlearnError, ResourceError
from peerlearn.recipes.mutual import MutualRecipe
from test_data_sources import write_idx_dataset, write_image_folder


def _cli_train(tmp_path: Path, config: dict, *extra: str, capsys) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["train", str(path), *extra, "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# --------------------------------------------------------------------------- bad data
def test_corrupted_idx_file_is_reported_by_checksum_with_its_name(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    write_idx_dataset(root / "mnist", n_train=60, n_test=20)
    # make the generated files the "official" ones, so the default MD5 check is what guards them
    entries = tuple(dataclasses.replace(e, md5=data_files.md5_of(root / e.relative_path))
                    for e in data_files.OFFICIAL_FILES["mnist"])
    monkeypatch.setitem(data_files.OFFICIAL_FILES, "mnist", entries)
    config = tiny_config(data={"source": "mnist", "root": str(root), "download": False, "batch_size": 16},
                         train={"epochs": 1})
    assert _cli_train(tmp_path, config, capsys=capsys)[0] == 0  # the good copy trains

    target = root / "mnist" / "train-images-idx3-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same length
    target.write_bytes(bytes(data))
    code, err = _cli_train(tmp_path, config, capsys=capsys)
    assert code == 2 and str(target) in err and "MD5" in err and "corrupted" in err

    target.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    code, err = _cli_train(tmp_path, config, capsys=capsys)
    assert code == 2 and str(target) in err and "truncated" in err


def test_unreadable_image_in_an_image_folder_is_named(tmp_path, capsys):
    folder = tmp_path / "images"
    write_image_folder(folder, {"cat": 6, "dog": 6}, size=8)
    broken = folder / "dog" / "3.png"
    broken.write_bytes(broken.read_bytes()[:30])  # cut short
    config = tiny_config(data={"source": "image_folder", "path": str(folder), "image_size": 8}, train={"epochs": 1})
    code, err = _cli_train(tmp_path, config, capsys=capsys)
    assert code == 2 and str(broken) in err and "Cannot read the image" in err


def test_nan_inputs_stop_the_run_naming_step_items_and_checkpoint(tmp_path, monkeypatch, capsys):
    from peerlearn.data.batches import BatchStream

    original = BatchStream.epoch

    def poisoned(self, epoch, start_step=0):
        for step, batch in original(self, epoch, start_step):
            if self.shuffle and epoch == 0 and step == 6:
                batch.x[3, 0, 2, 2] = float("nan")
            yield step, batch

    monkeypatch.setattr(BatchStream, "epoch", poisoned)
    code, err = _cli_train(tmp_path, tiny_config(train={"epochs": 2, "checkpoint_every_steps": 4}), capsys=capsys)
    assert code == 3
    assert "NaN or inf" in err and "global step 7 " in err and "global step 4;" in err
    assert "checkpoint.safetensors" in err and "--resume" in err
    run_dir = next((tmp_path / "runs").iterdir())
    assert load_state(run_dir / "checkpoint.safetensors")["position"]["global_step"] == 4


def test_non_finite_loss_names_member_step_and_last_checkpoint(tmp_path, monkeypatch, capsys):
    original = MutualRecipe.forward

    def blows_up(self, member, x, with_features=False):
        logits, features = original(self, member, x, with_features)
        if member.name == "b" and self.trainer.position.global_step == 9:
            logits = logits * float("inf")
        return logits, features

    monkeypatch.setattr(MutualRecipe, "forward", blows_up)
    code, err = _cli_train(tmp_path, tiny_config(recipe="independent", train={"epochs": 2, "checkpoint_every_steps": 3}),
                           capsys=capsys)
    assert code == 3
    assert "member 'b'" in err and "not finite" in err and "global step 10 " in err
    assert "checkpoint.safetensors" in err and "(global step 9;" in err


# --------------------------------------------------------------------------- safe loading
class _Malicious:
    """Unpickling this object opens (creates) the marker file: code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _malicious_file(path: Path, marker: Path) -> Path:
    torch.save({"weight": _Malicious(marker)}, str(path))
    return path


def test_the_malicious_pickle_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "pwned-control"
    torch.load(str(_malicious_file(tmp_path / "evil.pt", marker)), weights_only=False)
    assert marker.exists()  # so the refusals below are refusals of a real attack


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "model.safetensors"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _malicious_file(tmp_path / name, marker)
    with pytest.raises(PeerlearnError, match="Refusing|cannot|Cannot"):
        load_weights(path)
    assert not marker.exists()


def test_member_weights_from_a_malicious_file_exit_2(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _malicious_file(tmp_path / "teacher.pt", marker)
    config = tiny_config(members=[{"name": "a", "model": "small_cnn", "model_args": {"width": 8},
                                   "weights": str(path)}], train={"epochs": 1})
    code, err = _cli_train(tmp_path, config, capsys=capsys)
    assert code == 2 and "members.0.weights" in err and "Refusing" in err
    assert not marker.exists()


def test_resume_from_a_pickle_posing_as_checkpoint_is_refused(tmp_path, capsys):
    run = peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path / "runs").run_dir
    marker = tmp_path / "pwned"
    _malicious_file(run / "checkpoint.safetensors", marker)
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "checkpoint.safetensors" in err and "cannot be read" in err and not marker.exists()


def test_plain_pt_state_dicts_still_load(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), str(tmp_path / "w.pt"))
    loaded = load_weights(tmp_path / "w.pt")
    assert torch.equal(loaded["weight"], model.weight.detach())


# --------------------------------------------------------------------------- resources
def test_unwritable_output_directory_fails_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "prepare_run", lambda config: pytest.fail("data was loaded for an unusable --out"))
    (tmp_path / "a-file").write_text("not a folder")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    assert main(["train", str(config), "--out", str(tmp_path / "a-file" / "runs")]) == 4
    err = capsys.readouterr().err
    assert "a-file" in err and "not writable" in err and "nothing was trained" in err and "Traceback" not in err


def test_read_only_output_directory_is_detected_by_a_real_write(tmp_path, monkeypatch, capsys):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, os.strerror(30))  # EROFS: a read-only mount, where permission bits look fine

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    assert main(["train", str(config), "--out", str(tmp_path / "ro")]) == 4
    assert "Read-only file system" in capsys.readouterr().err


def test_a_run_directory_is_locked_while_a_process_trains_into_it(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(tiny_config(train={"epochs": 200, "checkpoint_every_steps": 1})))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "peerlearn", "train", str(config), "--out", str(tmp_path / "runs")],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "runs").glob("*/checkpoint.safetensors")):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.05)
        run_dir = next((tmp_path / "runs").iterdir())
        with pytest.raises(ResourceError, match=rf"in use by another peerlearn process \(pid {process.pid}\)"):
            peerlearn.train(resume=run_dir)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with RunLock(run_dir):  # a killed holder leaves no stale lock
        pass


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(ResourceError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()
