"""Progress bars: shown on a terminal or when asked for, silent when output goes to a file or pipe."""

from __future__ import annotations

import io
import sys

import pytest
import yaml

from conftest import run_cli, tiny_config
from peerlearn.progress import Progress, note, progress_bar, progress_enabled, progress_kind


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_modes(monkeypatch):
    assert progress_enabled("on") and progress_enabled(True)
    assert not progress_enabled("off") and not progress_enabled(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_enabled("auto")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled("auto") and progress_enabled(None)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_slow_work_prints_a_line_every_few_seconds_and_quick_work_nothing(monkeypatch):
    monkeypatch.delenv("PEERLEARN_PROGRESS_EVERY", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_kind("auto") == "lines" and progress_kind("off") is None and progress_kind("on") == "bar"
    clock = _Clock()
    with Progress(total=10, desc="features", unit="batches", clock=clock, heartbeat=False) as work:
        for _ in range(10):
            clock.now += 1.5  # 1.5 s per step: lines after 2 s, then every 5 s
            work.update(1)
    lines = sys.stderr.getvalue().splitlines()
    assert lines == ["features: 2/10 batches (20%), 3 s", "features: 6/10 batches (60%), 9 s",
                     "features: 10/10 batches (100%), 15 s", "features: done, 10/10 batches in 15 s"]
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    quick = _Clock()
    for _ in Progress(range(50), desc="quick", clock=quick, heartbeat=False):
        quick.now += 0.01  # half a second in all: silent
    assert sys.stderr.getvalue() == ""
    for _ in progress_bar(range(3), desc="off", mode="off"):
        pass
    note("report: run 1/2", mode="off")
    assert sys.stderr.getvalue() == ""
    note("report: run 1/2")
    assert sys.stderr.getvalue() == "report: run 1/2\n"


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PEERLEARN_PROGRESS_EVERY", "0")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    for _ in Progress(range(2), desc="every step", clock=_Clock(), heartbeat=False):
        pass
    assert sys.stderr.getvalue().splitlines() == ["every step: 1/2 it (50%), 0 s", "every step: 2/2 it (100%), 0 s",
                                                  "every step: done, 2/2 it in 0 s"]


def test_a_long_single_step_is_not_silent(monkeypatch):
    """The heartbeat prints while one step runs (a t-SNE, an export), with the real clock."""
    import time

    monkeypatch.setenv("PEERLEARN_PROGRESS_EVERY", "0.2")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with Progress(total=1, desc="t-SNE", unit="maps") as work:
        time.sleep(1.0)  # one step of a second: lines every 0.2 s while it runs
        work.update(1)
    lines = sys.stderr.getvalue().splitlines()
    assert sum(line.startswith("t-SNE: 0/1 maps (0%)") for line in lines) >= 2, lines
    assert lines[-1].startswith("t-SNE: done, 1/1 maps in 1 s"), lines


@pytest.fixture(scope="module")
def loaded_run(tmp_path_factory):
    import peerlearn
    from peerlearn.api import load_run
    from peerlearn.analysis_runner import analysis_stream

    run_dir = peerlearn.train(tiny_config(train={"epochs": 1, "progress": "off", "threads": 1}),
                              out=tmp_path_factory.mktemp("runs")).run_dir
    config, data, recipe = load_run(run_dir)
    return recipe, analysis_stream(recipe, "test", 200), run_dir


def _bars(work, mode, monkeypatch) -> str:
    stream = _Terminal() if mode == "terminal" else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    work("auto")
    return stream.getvalue()


@pytest.mark.parametrize("where", ["terminal", "file"])
def test_evaluation_flatness_features_and_export_show_bars_only_on_a_terminal(loaded_run, monkeypatch, where,
                                                                              tmp_path):
    from peerlearn.engine.evaluation import evaluate_cohort
    from peerlearn.evaluate.analyses import cohort_flatness
    from peerlearn.export import export_member
    from peerlearn.evaluate.features import predict_with_features

    recipe, stream, run_dir = loaded_run
    cohort = recipe.cohort
    works = {
        "predict": lambda mode: evaluate_cohort(cohort, stream, cohort.names, progress=mode),
        "flatness a": lambda mode: cohort_flatness(cohort, stream, (0.0, 0.01), draws=1, progress=mode),
        "features": lambda mode: predict_with_features(cohort, stream, ["a"], progress=mode),
        "export a (torchscript)": lambda mode: export_member(run_dir, "a", "torchscript", out=tmp_path / mode,
                                                             progress=mode),
    }
    for label, work in works.items():
        output = _bars(work, where, monkeypatch)
        if where == "terminal":
            assert f"\r{label}:" in output, (label, output)
        else:  # no bar off a terminal (at most a plain line now and then, when the work is slow)
            assert "\r" not in output and "it/s" not in output, (label, output)


def test_training_through_a_pipe_prints_no_bar_but_one_line_per_epoch(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(train={"epochs": 2, "progress": "auto", "threads": 1})))
    done = run_cli("train", str(config), "--out", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert "it/s" not in done.stderr and "%|" not in done.stderr and "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("train epoch ")]
    assert [line.split(":")[0] for line in lines] == ["train epoch 1/2", "train epoch 2/2"], done.stderr
    assert all("val top-1 % a " in line and ", ensemble " in line for line in lines), lines


def test_with_a_bar_the_same_line_follows_each_epoch(tmp_path, monkeypatch, capsys):
    import logging

    import peerlearn

    # as in a plain program: nothing configured logging, so peerlearn's own stderr handler prints the line
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger("peerlearn"), "handlers", [])
    monkeypatch.setattr(logging.getLogger("peerlearn"), "level", logging.NOTSET)
    peerlearn.train(tiny_config(train={"epochs": 2, "progress": "on", "threads": 1}), out=tmp_path)
    err = capsys.readouterr().err
    first_bar, second_bar = err.index("train epoch 1/2"), err.index("train epoch 2/2")
    first_line, second_line = err.index("train epoch 1/2: loss"), err.index("train epoch 2/2: loss")
    assert first_bar < first_line < second_bar < second_line, err
    assert "it/s" in err[:first_line]  # the bar was drawn before the line
