"""Damaged run directories and bad options of every after-training command end in a message and exit 2 (or, for
a file the command does not read, success), never a traceback or a silently different result.

Every file of a tiny finished run is truncated, emptied and given wrong types, both as found (its recorded hash
then no longer matches) and after the damage was accepted with ``peerlearn trust`` (the hashes match again, so
the shape checks of ``peerlearn.run_checks`` and the readers must catch it). Every leaf of ``run.json`` and
``summary.json`` is also given a value of the wrong type, one at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

import peerlearn
from conftest import tiny_config
from peerlearn.cli import main
from peerlearn.trust import SIGNATURE_NAME, sign_run

MEMBERS = [{"name": "a", "model": "mlp", "model_args": {"widths": [16]}},
           {"name": "b", "model": "mlp", "model_args": {"widths": [16]}}]
FILES = ("run.json", "config.yaml", "model.safetensors", "checkpoint.safetensors", "summary.json", "metrics.jsonl",
         SIGNATURE_NAME)
READ_BY_EVERY_COMMAND = ("run.json", "config.yaml", "model.safetensors", SIGNATURE_NAME)
COMMANDS = {
    "evaluate": ["evaluate", "{run}"],
    "analyze": ["analyze", "{run}", "--limit", "20", "--tsne-items", "0", "--draws", "1", "--sigmas", "0"],
    "export": ["export", "{run}", "--member", "a", "--format", "safetensors", "--check-items", "2", "--out",
               "{out}", "--progress", "off"],
    "probe": ["probe", "{run}", "--limit", "20"],  # refused (exit 2) on this mutual run, after reading it
    "report": ["report", "{run}", "--limit", "20", "--flatness-items", "20", "--tsne-items", "5", "--draws", "1",
               "--sigmas", "0", "--out", "{out}/report.html", "--progress", "off"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    config = tiny_config(recipe="mutual", members=MEMBERS, train={"epochs": 1},
                         data={"source": "digits", "train_subset": 300, "val_size": 60})
    return peerlearn.train(config, out=tmp_path_factory.mktemp("fuzz")).run_dir


def run_command(name: str, run: Path, out: Path, capsys) -> tuple[int, str]:
    args = [part.format(run=run, out=out) for part in COMMANDS[name]]
    try:
        code = main(args)
    except SystemExit as exit:  # argparse
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def damaged_versions(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "truncated", data[: len(data) // 2]
    yield "emptied", b""
    if name.endswith((".json", ".yaml")):
        for label, text in (("a list", "[]"), ("a string", '"x"'), ("null", "null"), ("an empty mapping", "{}"),
                            ("a number", "7")):
            yield f"holding {label}", text.encode()
    elif name.endswith(".jsonl"):
        yield "holding wrong types", (b'{"kind": "train", "epoch": "x", "loss": [1]}\n[]\n"x"\n'
                                      b'{"kind": "eval", "epoch": 1, "val": 5}\n')
    else:
        yield "holding text", b'{"not": "safetensors"}'


# every file for evaluate; for the other commands the files they read differently (the report reads the summary and
# the log too); accepting a damaged signature.json would rewrite it, so its damage is tried as found only
CASES = [(f, c, accepted) for f in FILES for c in COMMANDS for accepted in (False, True)
         if (c == "evaluate" or f in ("run.json", "summary.json", "metrics.jsonl", SIGNATURE_NAME))
         and not (accepted and f == SIGNATURE_NAME)]


@pytest.mark.parametrize("file, command, accepted", CASES,
                         ids=[f"{f}-{c}-{'accepted' if a else 'as-found'}" for f, c, a in CASES])
def test_each_damaged_file_is_a_message_never_a_traceback(finished, tmp_path, capsys, file, command, accepted):
    original = (finished / file).read_bytes()
    for label, data in damaged_versions(file, original):
        run = Path(shutil.copytree(finished, tmp_path / f"run-{label.replace(' ', '-')}"))
        (run / file).write_bytes(data)
        if accepted:
            sign_run(run)
        code, err = run_command(command, run, tmp_path / f"out-{label.replace(' ', '-')}", capsys)
        where = f"{file} {label}, {'accepted' if accepted else 'as found'}, {command}"
        if file in READ_BY_EVERY_COMMAND or (file == "summary.json" and command == "report"):
            assert code == 2, f"{where}: exit {code}: {err}"
            if not accepted:
                assert file in err, f"{where}: {err}"
        else:
            assert code in (0, 2), f"{where}: exit {code}: {err}"
        shutil.rmtree(run)


def leaves(tree: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, (*path, key))
    elif isinstance(tree, list) and tree:
        for index, value in enumerate(tree):
            yield from leaves(value, (*path, index))
    yield path


def wrong_value(value: Any) -> Any:
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "x"
    if isinstance(value, (int, float)):
        return "x"
    if isinstance(value, str):
        return 5
    if isinstance(value, list):
        return {"x": 1}
    if isinstance(value, dict):
        return [1]
    return [[]]


def replaced(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(tree))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copy


@pytest.mark.parametrize("file, command", [("run.json", "evaluate"), ("summary.json", "report")])
def test_every_leaf_of_a_record_given_a_wrong_type(finished, tmp_path, capsys, file, command):
    """Accepted with `peerlearn trust` (the hashes match): the shape checks must still refuse or cope."""
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    tree = json.loads((finished / file).read_text())
    paths = list(leaves(tree))
    if command == "report":  # the report takes a second or two: one leaf of each kind of place in the summary
        paths = [("members",), ("members", "a"), ("members", "a", "test"), ("members", "a", "test", "top1"),
                 ("ensemble",), ("ensemble", "test", "top1"), ("name",), ("epochs",), ("class_names",), ()]
    failures, refused = [], 0
    for path in paths:
        (run / file).write_text(json.dumps(replaced(tree, path, wrong_value(_get(tree, path)))))
        sign_run(run)
        code, err = run_command(command, run, tmp_path / "out", capsys)
        refused += code == 2
        if code not in (0, 2) or (code == 2 and file not in err and "run" not in err):
            failures.append(f"{'.'.join(map(str, path))}: exit {code}: {err.strip()[:300]}")
    (run / file).write_text(json.dumps(tree))
    assert not failures, "\n".join(failures)
    assert refused > len(paths) // 3  # most damage is refused, not shrugged off


def _get(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(members="x"), "key 'members' has the value 'x'"),
    (lambda r: r["data"]["normalization"].update(mean=[float("nan")]), "data.normalization.mean"),
    (lambda r: r["data"]["normalization"].update(std=[0.0]), "data.normalization.std"),
    (lambda r: r["data"].update(class_names=["only", "two"]), "data.num_classes"),
    (lambda r: r.update(format=2), "has format 2"),
    (lambda r: r["members"][0]["network"].update(model_args={"no_such_option": 1}), "cannot be built"),
    (lambda r: r["members"][0]["network"]["shape_args"].update(num_classes=3), "do not fit its recorded network"),
])
def test_the_issues_damaged_records_are_named(finished, tmp_path, capsys, change, message):
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    record = json.loads((run / "run.json").read_text())
    change(record)
    (run / "run.json").write_text(json.dumps(record))
    code, err = run_command("evaluate", run, tmp_path, capsys)
    assert code == 2 and "run.json" in err and "does not match the SHA-256" in err  # as found: the hash
    sign_run(run)
    code, err = run_command("evaluate", run, tmp_path, capsys)
    assert code == 2 and message in err, err  # accepted: the shape


def test_a_summary_holding_a_list_or_truncated_is_named_by_the_report(finished, tmp_path, capsys):
    for data in (b"[]", (finished / "summary.json").read_bytes()[:40]):
        run = Path(shutil.copytree(finished, tmp_path / "run"))
        (run / "summary.json").write_bytes(data)
        sign_run(run)
        code, err = run_command("report", run, tmp_path, capsys)
        assert code == 2 and "summary.json" in err and "damaged" in err, err
        shutil.rmtree(run)


BAD_OPTIONS = [
    ("analyze", ["--perplexity", "0"], "--perplexity"), ("analyze", ["--perplexity", "-3"], "--perplexity"),
    ("analyze", ["--perplexity", "nan"], "--perplexity"), ("analyze", ["--perplexity", "inf"], "--perplexity"),
    ("analyze", ["--limit", "-5"], "--limit"), ("analyze", ["--limit", "0"], "--limit"),
    ("analyze", ["--draws", "0"], "--draws"), ("analyze", ["--tsne-items", "-1"], "--tsne-items"),
    ("analyze", ["--sigmas", "-1"], "--sigmas"), ("analyze", ["--sigmas", "nan"], "--sigmas"),
    ("analyze", ["--limit", "x"], "--limit"), ("analyze", ["--split", "holdout"], "--split"),
    ("probe", ["--limit", "-5"], "--limit"), ("probe", ["--pool", "0"], "--pool"), ("probe", ["--C", "0"], "--C"),
    ("probe", ["--C", "nan"], "--C"), ("probe", ["--split", "train"], "--split"),
    ("report", ["--limit", "-5"], "limit"), ("report", ["--flatness-items", "0"], "--flatness-items"),
    ("report", ["--draws", "-1"], "draws"), ("report", ["--tsne-items", "0"], "--tsne-items"),
    ("report", ["--sigmas", "nan"], "--sigmas"), ("report", ["--sigmas", "-0.1"], "--sigmas"),
    ("export", ["--format", "onnx", "--check-items", "0"], "--check-items"),
    ("export", ["--format", "onnx", "--check-items", "-2"], "--check-items"),
    ("export", ["--format", "zip"], "--format"),
    ("evaluate", ["--split", "holdout"], "--split"), ("evaluate", ["--member", "nobody"], "nobody"),
]


@pytest.mark.parametrize("command, options, named", BAD_OPTIONS,
                         ids=[f"{c}{' '.join(o)}" for c, o, _ in BAD_OPTIONS])
def test_bad_options_of_after_training_commands_are_exit_2(finished, tmp_path, capsys, command, options, named):
    before = sorted(p.name for p in finished.iterdir())
    try:
        code = main([command, str(finished), *options])
    except SystemExit as exit:  # argparse's own refusal (a choice, a number that is not one)
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err, err
    assert sorted(p.name for p in finished.iterdir()) == before  # refused before anything was written
