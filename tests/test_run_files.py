"""The run directory has one owner: its file names are spelled in ``peerlearn.run_files`` only, and the readers
of other runs at training time (teacher weights, transfer backbones, the SQL model store) go through the run's
recorded hashes like the run reader."""
from __future__ import annotations

import ast
from pathlib import Path

from peerlearn import run_files

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peerlearn"
NAMES = {value for key, value in vars(run_files).items() if key.isupper() and isinstance(value, str)}


def string_constants(path: Path):
    """Every string literal of a module (docstrings and f-string parts included), with its line."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_run_file_names_are_spelled_in_one_module():
    assert {"config.yaml", "run.json", "model.safetensors", "checkpoint.safetensors", "summary.json"} <= NAMES
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_files.py":
            continue
        for line, text in string_constants(path):
            if text in NAMES - {"export", "tensorboard"}:  # words that are also command and extra names
                found.append(f"{path.relative_to(PACKAGE)}:{line} {text!r}")
    assert not found, "run file names spelled outside peerlearn/run_files.py:\n" + "\n".join(found)


def test_the_scan_finds_a_spelled_name(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('PATH = "run.json"\n')
    assert [text for _, text in string_constants(module)] == ["run.json"]
