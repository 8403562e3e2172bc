"""Every option of every after-training command (evaluate, analyze, report, export, probe) refuses bad
values with exit 2, one line naming the option, no traceback, and nothing written in the run directory.

The cases come from the argument parser itself: each option that takes a number gets the values no option
may accept (NaN, ±inf, 1e999, −1, text), each option with choices a value outside them; options that take
text get the cases listed in ``TEXT_CASES``. An option added to a command is fuzzed without editing this
file; one that takes text must be listed there (a test checks that none is forgotten)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

import peerlearn
from conftest import tiny_config
from peerlearn.cli import build_parser, main

COMMANDS = ("evaluate", "analyze", "report", "export", "probe")
REQUIRED = {"export": ["--format", "safetensors"]}
BAD_NUMBERS = ["nan", "inf", "-inf", "1e999", "-1", "abc"]
TEXT_CASES = {  # options that take text: (command, option) -> values it must refuse
    ("evaluate", "--member"): [""],
    ("evaluate", "--data"): ["no-such-folder-or.csv"],
    ("evaluate", "--label"): [""],
    ("analyze", "--member"): [" "],
    ("report", "--tsne-member"): [""],
    ("report", "--title"): ["x" * 5000],
    ("export", "--member"): [""],
    ("export", "--out"): ["<a file>"],
    ("probe", "--member"): [""],
}
NOT_FUZZED = {("report", "--out")}  # any path names a page to write; unwritable ones are tested elsewhere


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _value_options(command: str) -> list[argparse.Action]:
    """The options of ``command`` that take a value (not flags such as --json, not --help)."""
    return [a for a in _subparser(command)._actions
            if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)]


def cases() -> list[tuple[str, str, str]]:
    out = []
    for command in COMMANDS:
        for action in _value_options(command):
            option = action.option_strings[-1]
            if (command, option) in NOT_FUZZED:
                continue
            if action.choices is not None:
                values = ["bogus"]
            elif action.type in (int, float):
                values = BAD_NUMBERS
            else:
                values = TEXT_CASES.get((command, option), [])
            out += [(command, option, value) for value in values]
    return out


def test_every_text_option_has_cases():
    for command in COMMANDS:
        for action in _value_options(command):
            option = action.option_strings[-1]
            if action.choices is None and action.type not in (int, float):
                assert (command, option) in TEXT_CASES or (command, option) in NOT_FUZZED, (command, option)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path_factory.mktemp("runs")).run_dir


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("command, option, value", cases())
def test_a_bad_option_is_exit_2_naming_it_and_writes_nothing(run, tmp_path, capsys, command, option, value):
    if value == "<a file>":
        value = str(tmp_path / "a-file")
        Path(value).write_text("")
    before = _snapshot(run)
    try:
        code = main([command, str(run), *REQUIRED.get(command, []), option, value])
    except SystemExit as stop:  # argparse's own refusals (a type or a choice) exit 2 as well
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, (command, option, value, err)
    assert "Traceback" not in err and option in err, err
    assert _snapshot(run) == before


def test_the_fuzz_covers_every_command_and_numeric_option():
    covered = {(c, o) for c, o, _ in cases()}
    assert {c for c, _ in covered} == set(COMMANDS)
    assert ("analyze", "--perplexity") in covered and ("probe", "--C") in covered
    assert ("report", "--sigmas") in covered and ("export", "--check-items") in covered


@pytest.mark.parametrize("args", [
    ["analyze", "--sigmas"],  # nargs="+" with nothing after it
    ["probe", "--pool", "100000"],  # features of channels × pool² would not fit in memory
])
def test_edge_cases(run, capsys, args):
    try:
        code = main([args[0], str(run), *args[1:]])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and args[1] in err and "Traceback" not in err, err


def test_a_good_option_set_still_runs(run, tmp_path, capsys):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert main(["analyze", str(copy), "--limit", "30", "--draws", "1", "--sigmas", "0", "--tsne-items", "0",
                 "--perplexity", "2.5"]) == 0, capsys.readouterr().err
    assert (copy / "analysis.json").is_file()
