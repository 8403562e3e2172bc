"""The command line, end to end in a subprocess, and --help on every subcommand."""

import json

import pytest
import yaml

from conftest import run_cli, tiny_config
from peerlearn.cli import COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    from peerlearn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: peerlearn " + command in capsys.readouterr().out


def test_train_from_yaml_with_overrides_end_to_end(tmp_path):
    config = tmp_path / "cohort.yaml"
    config.write_text(yaml.safe_dump(tiny_config(recipe="mutual")))
    done = run_cli("train", str(config), "train.epochs=1", "members.1.model=mlp", "members.1.model_args={widths: [32]}",
                   "--out", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert "ensemble" in done.stdout and "test top-1 %" in done.stdout
    run_dir = next((tmp_path / "runs").iterdir())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["members"][1]["model"] == "mlp" and saved["train"]["epochs"] == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["recipe"] == "mutual" and set(summary["members"]) == {"a", "b"}
    # `evaluate` prints the test accuracies that `train` printed, with the same decimals
    evaluated = run_cli("evaluate", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr
    for name in ("a", "b", "ensemble"):
        trained_row = next(line.split() for line in done.stdout.splitlines() if line.startswith(name + " "))
        evaluated_row = next(line.split() for line in evaluated.stdout.splitlines() if line.startswith(name + " "))
        assert trained_row[2] == evaluated_row[1]  # test top-1 %, e.g. 91.34 in both
        assert trained_row[3] == evaluated_row[2]  # test top-5 %


def test_config_error_exits_2_without_traceback(tmp_path):
    done = run_cli("train", "--out", str(tmp_path), "optim.lr=-3")
    assert done.returncode == 2
    assert "optim.lr" in done.stderr and "Traceback" not in done.stderr


def test_demo_runs_and_prints_both_cohorts(tmp_path):
    done = run_cli("demo", "--epochs", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "independent: ensemble" in done.stdout and "mutual: ensemble" in done.stdout


def test_datasets_lists_sources_and_verify_finds_real_files(data_root):
    listing = run_cli("datasets")
    assert listing.returncode == 0 and "fashion_mnist" in listing.stdout and "digits" in listing.stdout
    verify = run_cli("datasets", "verify", "mnist", "fashion_mnist", "--root", str(data_root))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count(" ok") >= 8
