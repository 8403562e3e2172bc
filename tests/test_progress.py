"""Progress bars: shown on a terminal or when asked for, silent when output goes to a file or pipe."""

from __future__ import annotations

import io
import sys

import pytest
import yaml

from conftest import run_cli, tiny_config
from peerlearn.progress import progress_enabled


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
        else:
            assert output == "", (label, output)


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
