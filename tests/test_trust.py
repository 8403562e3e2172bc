"""Trust (peerlearn.trust, docs/reliability.md): what a run directory, a SQL statement or the model store names
as code is imported only when the user trusts it, and an edited or damaged run is exit 2 naming the file.

Runs of "someone else" are made by signing a run with another key (another user's peerlearn); the references
tried are the issue's: ``os:system``, ``subprocess:Popen``, ``shutil:rmtree`` and a module placed in the run
directory that creates a marker file when it is imported. Each must be refused before anything runs."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path

import pytest
import torch

import peerlearn
from conftest import run_cli, tiny_config
from peerlearn.cli import main
from peerlearn.errors import ConfigError
from peerlearn.trust import KEY_ENV, SIGNATURE_NAME, key_file, read_records, sign_run

ONE_MLP = [{"name": "a", "model": "mlp", "model_args": {"widths": [16]}}]
FAST_DATA = {"source": "digits", "train_subset": 300, "val_size": 60}

FACTORY_SOURCE = '''
from torch import nn


def small_net(num_classes, in_features):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, num_classes))
'''


def fast_config(**sections):
    return tiny_config(members=ONE_MLP, data=FAST_DATA, train={"epochs": 1}, **sections)


@pytest.fixture(scope="module")
def factory_module(tmp_path_factory):
    """A user's model factory in an importable module of a unique name: ``<module>:small_net``."""
    folder = tmp_path_factory.mktemp("factories")
    name = f"user_nets_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(folder))
    yield name, folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    return peerlearn.train(fast_config(), out=tmp_path_factory.mktemp("zoo")).run_dir


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory, factory_module):
    members = [{"name": "a", "model": f"{factory_module[0]}:small_net"}]
    return peerlearn.train(tiny_config(members=members, data=FAST_DATA, train={"epochs": 1}),
                           out=tmp_path_factory.mktemp("own")).run_dir


def copy_run(run_dir: Path, target: Path) -> Path:
    return Path(shutil.copytree(run_dir, target))


def sign_as_someone_else(run_dir: Path, tmp_path: Path) -> None:
    """Record the run's files with another user's key: its hashes are right, its signature is not ours."""
    previous = os.environ[KEY_ENV]
    os.environ[KEY_ENV] = str(tmp_path / f"other-{uuid.uuid4().hex[:6]}.key")
    try:
        sign_run(run_dir)
    finally:
        os.environ[KEY_ENV] = previous


def edit_record(run_dir: Path, change) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    change(record)
    (run_dir / "run.json").write_text(json.dumps(record))


def cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# --------------------------------------------------------------------------- own runs, the key
def test_own_runs_are_signed_and_read_without_flags(factory_run, capsys):
    records = read_records(factory_run)
    assert records.signed and set(records.hashes) == {"config.yaml", "run.json", "checkpoint.safetensors",
                                                      "model.safetensors", "summary.json"}
    code, err = cli(["evaluate", factory_run], capsys)  # it names the user's factory: trusted, no flag
    assert code == 0, err
    assert stat.S_IMODE(key_file().stat().st_mode) == 0o600


def test_the_key_is_made_private_and_a_shared_or_damaged_key_is_refused(zoo_run, tmp_path, monkeypatch, capsys):
    key = tmp_path / "keys" / "trust.key"
    monkeypatch.setenv(KEY_ENV, str(key))
    copy = copy_run(zoo_run, tmp_path / "run")
    sign_run(copy)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 64
    assert read_records(copy).signed
    key.chmod(0o644)
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and "readable or writable by other users" in err and "chmod 600" in err
    key.chmod(0o600)
    key.write_text("not a key\n")
    key.chmod(0o600)
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and "damaged" in err and str(key) in err


def test_a_run_signed_by_someone_else_is_read_when_it_names_no_code(zoo_run, tmp_path, capsys):
    copy = copy_run(zoo_run, tmp_path / "foreign")
    sign_as_someone_else(copy, tmp_path)
    assert not read_records(copy).signed
    code, err = cli(["evaluate", copy], capsys)
    assert code == 0, err


# --------------------------------------------------------------------------- code named by a run
DANGEROUS = {
    "os:system": lambda marker, victim: {"command": f"touch {marker}"},
    "subprocess:Popen": lambda marker, victim: {"args": ["touch", str(marker)]},
    "shutil:rmtree": lambda marker, victim: {"path": str(victim)},
}


@pytest.mark.parametrize("reference", sorted(DANGEROUS))
@pytest.mark.parametrize("field", ["model", "factory"])
def test_a_run_naming_a_dangerous_callable_runs_nothing(zoo_run, tmp_path, capsys, reference, field):
    marker, victim = tmp_path / "marker", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    copy = copy_run(zoo_run, tmp_path / "sent")

    def change(record):
        network = record["members"][0]["network"]
        if field == "model":
            network["model"], network["model_args"] = reference, DANGEROUS[reference](marker, victim)
        else:  # a model name not registered here, "found again" through the recorded factory
            network["model"], network["factory"] = "sent_net", reference

    edit_record(copy, change)
    sign_as_someone_else(copy, tmp_path)  # a consistent run from elsewhere: only the signature is not ours
    for command in (["evaluate"], ["analyze", "--limit", "10", "--tsne-items", "0"], ["export", "--format",
                                                                                       "safetensors"]):
        code, err = cli([command[0], copy, *command[1:]], capsys)
        assert code == 2, err
        assert reference in err and f"peerlearn trust {copy}" in err and "--trust-code" in err
        assert "Nothing was imported" in err
    with pytest.raises(ConfigError, match="Refusing to import"):
        peerlearn.load_run(copy)
    assert not marker.exists() and (victim / "keep.txt").read_text() == "precious"


def test_a_module_placed_in_the_run_directory_is_never_imported(zoo_run, tmp_path):
    """`peerlearn evaluate .` from inside a run whose run.json names a recipe class and a factory in a module
    that sits in the run directory (the working directory is on sys.path under `python -m`)."""
    marker = tmp_path / "imported"
    copy = copy_run(zoo_run, tmp_path / "sent")
    module = f"planted_{uuid.uuid4().hex[:6]}"
    (copy / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil: pass\n"
                                       "def net(**kwargs): pass\n")

    def recipe_class(record):
        record["recipe"], record["recipe_class"] = "planted", f"{module}:Evil"

    def factory(record):
        record["members"][0]["network"].update(model="planted_net", factory=f"{module}:net")

    for change in (recipe_class, factory):
        edit_record(copy, change)
        sign_as_someone_else(copy, tmp_path)
        done = run_cli("evaluate", ".", cwd=copy)
        assert done.returncode == 2, done.stderr
        assert f"{module}:" in done.stderr and "peerlearn trust" in done.stderr and "Traceback" not in done.stderr
        assert not marker.exists()
        shutil.copy(zoo_run / "run.json", copy / "run.json")


def test_a_legitimate_factory_of_someone_elses_run_needs_trust(factory_run, tmp_path, capsys):
    copy = copy_run(factory_run, tmp_path / "colleague")
    sign_as_someone_else(copy, tmp_path)
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and ":small_net" in err and "run.json members.0.network.model" in err
    expected = json.loads((factory_run / "summary.json").read_text())["members"]["a"]["test"]["top1"]
    assert peerlearn.evaluate_run(copy, save=False, trust_code=True)["classification"]["a"]["top1"] == \
        pytest.approx(expected, abs=1e-6)
    code, err = cli(["evaluate", "--trust-code", copy], capsys)
    assert code == 0, err
    assert cli(["trust", copy], capsys)[0] == 0
    assert read_records(copy).signed
    code, err = cli(["evaluate", copy], capsys)
    assert code == 0, err


def test_trust_lists_the_code_it_accepts(factory_run, tmp_path, capsys):
    copy = copy_run(factory_run, tmp_path / "colleague")
    sign_as_someone_else(copy, tmp_path)
    assert main(["trust", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"trusted {copy}" in out and ":small_net (run.json members.0.network.model)" in out


def test_exported_description_naming_code_needs_trust(factory_run, tmp_path):
    from peerlearn.export.run import export_member, load_exported_safetensors

    result = export_member(factory_run, fmt="safetensors", out=tmp_path / "export", progress="off")
    with pytest.raises(ConfigError, match=r"exported model description.*:small_net"):
        load_exported_safetensors(result.info_path)
    model = load_exported_safetensors(result.info_path, trust_code=True)
    assert isinstance(model, torch.nn.Module)


def test_resuming_someone_elses_run_that_names_code_needs_trust(factory_run, tmp_path, capsys):
    copy = copy_run(factory_run, tmp_path / "colleague")
    sign_as_someone_else(copy, tmp_path)
    code, err = cli(["train", "--resume", copy], capsys)
    assert code == 2 and ":small_net" in err and "--trust-code" in err
    code, err = cli(["train", "--resume", copy, "--trust-code"], capsys)
    assert code == 0, err
    assert read_records(copy).signed  # trained on by this user: its records are now signed by this user


# --------------------------------------------------------------------------- training-time readers
def test_a_transfer_source_naming_code_needs_trust(factory_run, factory_module, tmp_path):
    from peerlearn.config import MemberConfig
    from peerlearn.engine.checkpoint import load_weights
    from peerlearn.transfer.backbone import BackboneConfig, load_backbone
    from peerlearn.trust import trusting_code

    copy = copy_run(factory_run, tmp_path / "source")
    sign_as_someone_else(copy, tmp_path)
    transfer = {"backbones": [{"source": str(copy)}], "cache_dir": str(tmp_path / "cache")}
    members = [{"name": "t", "model": f"{factory_module[0]}:small_net"}]  # the config's own: trusted
    config = tiny_config(recipe="transfer", members=members, data=FAST_DATA, train={"epochs": 1}, transfer=transfer)
    with pytest.raises(ConfigError, match=r"config\.yaml members\.0\.model, used by transfer\.backbones\.0\.source"
                                          r".*peerlearn trust"):
        peerlearn.train(config, out=tmp_path / "runs")
    shape = {"num_classes": 10, "in_channels": 1, "image_size": 8, "in_features": 64}
    with pytest.raises(ConfigError, match="Refusing to import"):
        load_backbone(BackboneConfig(source=str(copy)), 0, MemberConfig(model="mlp"), shape)
    with trusting_code(True):  # what train(..., trust_code=True) and --trust-code do
        backbone = load_backbone(BackboneConfig(source=str(copy)), 0, MemberConfig(model="mlp"), shape)
    saved = load_weights(copy / "model.safetensors", "a")
    assert torch.equal(backbone.state_dict()["network.1.weight"], saved["network.1.weight"])


def test_edited_teacher_weights_and_transfer_sources_are_refused(zoo_run, tmp_path):
    copy = copy_run(zoo_run, tmp_path / "teacher")
    raw = bytearray((copy / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(raw))
    teacher = {**ONE_MLP[0], "trainable": False, "weights": str(copy)}
    distill = tiny_config(recipe="distill", members=[teacher, {"name": "s", "model": "mlp"}], data=FAST_DATA,
                          train={"epochs": 1}, distill={"teacher_epochs": 0})
    with pytest.raises(ConfigError, match=r"members\.0\.weights.*model\.safetensors.*does not match the SHA-256"):
        peerlearn.train(distill, out=tmp_path / "runs")
    transfer = tiny_config(recipe="transfer", members=[{"name": "t", "model": "mlp"}], data=FAST_DATA,
                           transfer={"backbones": [{"source": str(copy)}], "cache_dir": str(tmp_path / "c")})
    with pytest.raises(ConfigError, match=r"backbones\.0\.source.*does not match the SHA-256"):
        peerlearn.train(transfer, out=tmp_path / "runs")


# --------------------------------------------------------------------------- edits and damage
@pytest.mark.parametrize("file", ["run.json", "config.yaml", "model.safetensors", "summary.json"])
def test_an_edited_record_is_exit_2_naming_the_file_until_it_is_accepted(zoo_run, tmp_path, capsys, file):
    copy = copy_run(zoo_run, tmp_path / "edited")
    if file == "run.json":  # the silent change: another normalisation std
        edit_record(copy, lambda r: r["data"]["normalization"].update(std=[0.5]))
    elif file == "config.yaml":
        text = (copy / file).read_text()
        (copy / file).write_text(text.replace("seed: 0", "seed: 1"))
    elif file == "summary.json":
        summary = json.loads((copy / file).read_text())
        summary["members"]["a"]["test"]["top1"] = 1.0
        (copy / file).write_text(json.dumps(summary))
    else:
        raw = bytearray((copy / file).read_bytes())
        raw[-1] ^= 0x01
        (copy / file).write_bytes(bytes(raw))
    command = ["report", copy, "--out", tmp_path / "r.html"] if file == "summary.json" else ["evaluate", copy]
    code, err = cli(command, capsys)
    assert code == 2 and str(copy / file) in err and "does not match the SHA-256" in err
    assert f"peerlearn trust {copy}" in err
    if file == "run.json":
        assert cli(["trust", copy], capsys)[0] == 0
        result = peerlearn.evaluate_run(copy, save=False)  # accepted: the edit is what the user asked for
        assert result["classification"]["a"]["top1"] != pytest.approx(
            json.loads((copy / "summary.json").read_text())["members"]["a"]["test"]["top1"], abs=1e-9)


def test_unknown_format_missing_or_damaged_records_are_exit_2(zoo_run, tmp_path, capsys):
    copy = copy_run(zoo_run, tmp_path / "format")
    edit_record(copy, lambda r: r.update(format=7))
    sign_run(copy)  # even when accepted: an unknown format is never read as if it were known
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and "has format 7" in err and "run.json" in err
    signature = json.loads((copy / SIGNATURE_NAME).read_text())
    signature["format"] = 9
    (copy / SIGNATURE_NAME).write_text(json.dumps(signature))
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and "has format 9" in err and SIGNATURE_NAME in err
    (copy / SIGNATURE_NAME).unlink()
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and f"has no {SIGNATURE_NAME}" in err and f"peerlearn trust {copy}" in err


def test_a_file_added_after_the_records_is_named(zoo_run, tmp_path, capsys):
    copy = copy_run(zoo_run, tmp_path / "added")
    signature = json.loads((copy / SIGNATURE_NAME).read_text())
    del signature["hashes"]["model.safetensors"]
    (copy / SIGNATURE_NAME).write_text(json.dumps(signature))
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and "model.safetensors' has no recorded hash" in err


def test_final_weights_that_were_recorded_are_not_replaced_by_the_checkpoint(zoo_run, tmp_path, capsys):
    copy = copy_run(zoo_run, tmp_path / "gone")
    (copy / "model.safetensors").unlink()
    code, err = cli(["evaluate", copy], capsys)
    assert code == 2 and "which are gone" in err


# --------------------------------------------------------------------------- SQL
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("sqlglot")
    import peerlearn.sql

    folder = tmp_path_factory.mktemp("sql")
    return peerlearn.sql.create_demo_db(folder / "demo.db"), folder / "models"


def test_sql_with_members_naming_code_needs_trust_code(demo, factory_module, tmp_path, capsys):
    import peerlearn.sql

    url, models = demo
    marker_module = f"sql_planted_{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "imported"
    (factory_module[1] / f"{marker_module}.py").write_text(f"open({str(marker)!r}, 'w')\ndef net(**k): pass\n")
    fast = "train.epochs = 2, data.batch_size = 16, tracking.tensorboard = false, train.threads = 1"
    for reference in ("os:system", "shutil:rmtree", f"{marker_module}:net"):
        statement = (f"SELECT * FROM wine TO TRAIN independent WITH members = ['{reference}'], {fast} LABEL cultivar "
                     "INTO x")
        code, err = cli(["sql", statement, "--db", url, "--models", models], capsys)
        assert code == 2 and reference in err and "WITH members.0.model" in err and "--trust-code" in err, err
    assert not marker.exists() and not (models / "x").exists()
    good = f"{factory_module[0]}:small_net"
    statement = (f"SELECT * FROM wine TO TRAIN independent WITH members = ['{good}'], {fast} LABEL cultivar "
                 "INTO wine_own")
    with pytest.raises(ConfigError, match="WITH clause"):
        peerlearn.sql.run(statement, db=url, models=models)
    assert peerlearn.sql.run(statement, db=url, models=models, trust_code=True).kind == "train"
    # the model in the store is this user's own run now: predicting with it needs no flag
    predict = "SELECT * FROM wine TO PREDICT own_pred.cultivar USING wine_own"
    assert peerlearn.sql.run(predict, db=url, models=models).kind == "predict"


def test_sql_store_model_of_someone_else_naming_code_needs_trust(demo, factory_module, tmp_path, capsys):
    import peerlearn.sql

    url, models = demo
    fast = "train.epochs = 2, data.batch_size = 16, tracking.tensorboard = false, train.threads = 1"
    good = f"{factory_module[0]}:small_net"
    peerlearn.sql.run(f"SELECT * FROM wine TO TRAIN independent WITH members = ['{good}'], {fast} LABEL cultivar "
                      "INTO wine_sent", db=url, models=models, trust_code=True)
    sign_as_someone_else(models / "wine_sent", tmp_path)
    predict = "SELECT * FROM wine TO PREDICT sent_pred.cultivar USING wine_sent"
    code, err = cli(["sql", predict, "--db", url, "--models", models], capsys)
    assert code == 2 and ":small_net" in err and f"peerlearn trust {models / 'wine_sent'}" in err
    code, err = cli(["sql", predict, "--db", url, "--models", models, "--trust-code"], capsys)
    assert code == 0, err
    evaluate = "SELECT * FROM wine TO EVALUATE wine_sent LABEL cultivar"
    with pytest.raises(ConfigError, match="Refusing to import"):
        peerlearn.sql.run(evaluate, db=url, models=models)
    text = (models / "wine_sent" / "config.yaml").read_text()
    (models / "wine_sent" / "config.yaml").write_text(text + "\n# edited\n")
    code, err = cli(["sql", "SHOW TRAIN wine_sent", "--models", models], capsys)
    assert code == 2 and "config.yaml" in err and "does not match" in err
