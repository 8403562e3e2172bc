"""One line per epoch that a person can follow, through Python ``logging`` (logger ``peerlearn``).

    train epoch 3/10: loss 0.4127 | val top-1 % a 91.30, b 90.80, ensemble 92.00 | 2.4 s
    final: val top-1 % a 91.30, b 90.80, ensemble 92.00 | test top-1 % a 90.95, b 90.41, ensemble 91.87

The line is logged at INFO after every epoch (its validation part after the epochs that evaluate); the test
split appears in it only with ``train.eval_test`` (choices such as the epoch or a setting are made on
validation), and once at the end, in the ``final`` line of the run's summary scores. On a
terminal it follows the progress bar, which is cleared first; off a terminal (a file, a pipe, CI) it is
the only output of training. Accuracies are percentages here, for reading; ``metrics.jsonl`` and
``summary.json`` keep fractions (0..1).

Route or silence it like any library's log: ``logging.getLogger("peerlearn").setLevel(logging.WARNING)``
hides it; a handler of your own on ``peerlearn`` (or on the root logger) receives it instead of the default
one. The default handler (``%(message)s`` on standard error) is added only when neither ``peerlearn`` nor the
root logger has a handler when training starts.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

LOGGER_NAME = "peerlearn"
logger = logging.getLogger(LOGGER_NAME)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the call (it may be replaced after set-up)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the current stderr is always used
        pass


def ensure_handler() -> None:
    """Give ``peerlearn`` a plain stderr handler at INFO unless the application configured logging."""
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f}"  # the decimals of the CLI's tables


def epoch_line(stage: str, epoch: int, epochs: int, train: dict[str, Any],
               results: Optional[dict[str, dict[str, dict[str, float]]]], seconds: float) -> str:
    """The text of one epoch's line: stage and epoch k/n (as on the progress bar), mean training loss, top-1 (%)
    of every scored member on each evaluated split (``results`` as the trainer's ``evaluate`` returns them),
    seconds."""
    parts = [f"{stage} epoch {epoch}/{epochs}:"]
    if "loss" in train:
        parts.append(f"loss {float(train['loss']):.4f}")
    return f"{' '.join(parts)}{_scores(results)} | {seconds:.1f} s"


def _scores(results: Optional[dict[str, dict[str, dict[str, float]]]]) -> str:
    text = ""
    for split, members in (results or {}).items():
        scores = ", ".join(f"{name} {_percent(score.get('top1'))}" for name, score in members.items())
        text += f" | {split} top-1 % {scores}"
    return text


def final_line(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """The run's final scores (``summary.json``): top-1 (%) of every scored member on validation and test."""
    return f"final:{_scores(results).removeprefix(' |')}"


def log_final(results: dict[str, Any]) -> None:
    """Log ``final_line(results)`` at INFO on the ``peerlearn`` logger."""
    ensure_handler()
    if results and logger.isEnabledFor(logging.INFO):
        logger.info(final_line(results))


def log_epoch(stage: str, epoch: int, epochs: int, train: dict[str, Any],
              results: Optional[dict[str, Any]], seconds: float) -> None:
    """Log ``epoch_line(...)`` at INFO on the ``peerlearn`` logger (see ``ensure_handler``)."""
    ensure_handler()
    if logger.isEnabledFor(logging.INFO):
        logger.info(epoch_line(stage, epoch, epochs, train, results, seconds))
