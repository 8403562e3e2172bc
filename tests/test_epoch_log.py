"""The per-epoch log line: through Python logging (logger "peerlearn"), percentages of the fractions
that the files keep, one line per epoch whether or not the epoch evaluates."""

import json
import logging
import re

import pytest

import peerlearn
from peerlearn.engine import epoch_log
from peerlearn.engine.epoch_log import epoch_line, final_line, log_epoch


def test_epoch_line_shows_loss_and_top1_in_percent():
    results = {"val": {"a": {"top1": 0.9134, "nll": 0.3}, "ensemble": {"top1": 0.92}},
               "test": {"a": {"top1": 0.5}}}
    assert (epoch_line("train", 3, 10, {"loss": 0.41273, "a/ce": 0.2}, results, 2.44)
            == "train epoch 3/10: loss 0.4127 | val top-1 % a 91.34, ensemble 92.00 | test top-1 % a 50.00 | 2.4 s")
    assert epoch_line("teacher", 1, 2, {"loss": 1.0}, None, 0.05) == "teacher epoch 1/2: loss 1.0000 | 0.1 s"
    assert final_line(results) == "final: val top-1 % a 91.34, ensemble 92.00 | test top-1 % a 50.00"


def test_training_logs_one_line_per_epoch_with_the_files_numbers_in_percent(tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="peerlearn")
    config = tiny(train={"epochs": 3, "eval_every": 2, "progress": "off", "threads": 1})
    result = peerlearn.train(config, out=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "peerlearn" and " epoch " in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["train epoch 1/3", "train epoch 2/3", "train epoch 3/3"]
    assert "val top-1" not in lines[0]  # epoch 1 does not evaluate (eval_every 2)
    assert not any("test" in line for line in lines)  # by default the epochs show validation only...
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final:")]
    assert len(final) == 1  # ...and the test split once, at the end: the summary's numbers, with the CLI's decimals
    for name in ("a", "b", "ensemble"):
        entry = result.summary["ensemble"] if name == "ensemble" else result.summary["members"][name]
        assert f"{name} {100 * entry['test']['top1']:.2f}" in final[0].split("test top-1 %")[1]
        assert f"{name} {100 * entry['val']['top1']:.2f}" in final[0].split("test top-1 %")[0]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    for line, record in zip(lines, train):
        assert f"loss {record['loss']:.4f}" in line
    for line, record in zip(lines[1:], evals):  # epochs 2 and 3 evaluate
        fraction = record["val"]["a"]["top1"]
        assert 0 <= fraction <= 1  # the file keeps a fraction...
        shown = re.search(r"val top-1 % a ([\d.]+)", line).group(1)
        assert float(shown) == pytest.approx(100 * fraction, abs=0.005)  # ...the log a percentage


def test_with_eval_test_every_evaluation_shows_the_test_split(tiny, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="peerlearn")
    peerlearn.train(tiny(train={"epochs": 1, "progress": "off", "threads": 1, "eval_test": True}), out=tmp_path)
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == 1 and "| val top-1 % a" in lines[0] and "| test top-1 % a" in lines[0]


def test_a_default_stderr_handler_only_when_nothing_is_configured(monkeypatch, capsys):
    logger = logging.getLogger("peerlearn")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    log_epoch("train", 1, 1, {"loss": 0.5}, None, 1.0)
    assert capsys.readouterr().err == "train epoch 1/1: loss 0.5000 | 1.0 s\n"
    assert len(logger.handlers) == 1
    logger.setLevel(logging.WARNING)  # the user silences it
    log_epoch("train", 1, 1, {"loss": 0.5}, None, 1.0)
    assert capsys.readouterr().err == ""
    # an application's own handler: no default handler is added
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    epoch_log.ensure_handler()
    assert logger.handlers == []
