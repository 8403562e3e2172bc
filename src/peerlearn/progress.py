"""Progress for work that takes more than a couple of seconds: a bar on a terminal, a line now and then off it.

``mode`` is the ``train.progress`` / ``--progress`` setting:

* ``on``: a tqdm bar on standard error;
* ``off``: nothing;
* ``auto`` (the default): a bar when standard error is a terminal; otherwise (a log file, a pipe, CI, a
  loaded machine's batch job) one plain line every ``LINE_EVERY`` seconds once the work has run for
  ``LINE_AFTER`` seconds, and a closing line, so that quick work prints nothing and slow work is never
  silent::

      features: 40/118 batches (34%), 6 s
      features: done, 118/118 batches in 14 s

The environment variable ``PEERLEARN_PROGRESS_EVERY`` (seconds) sets both intervals (0: a line at every
step), e.g. for a job whose log is read rarely (60). Training has its own per-epoch line
(``peerlearn.engine.epoch_log``). ``progress_bar`` and ``note`` are what every command uses; any module (the
after-training commands, ``peerlearn predict``) wraps its loop in ``progress_bar(...)``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from tqdm.auto import tqdm

Mode = Union[str, bool, None]

LINE_AFTER = 2.0  # seconds of work before the first line (off a terminal)
LINE_EVERY = 5.0  # seconds between lines


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_enabled(mode: Mode = "auto") -> bool:
    """True for ``on``/True, False for ``off``/False, and for ``auto``/None: is stderr a terminal? (Whether a
    *bar* is drawn; ``progress_kind`` also says when lines are printed instead.)"""
    if isinstance(mode, bool):
        return mode
    if mode in ("on", "off"):
        return mode == "on"
    return _stderr_is_terminal()


def progress_kind(mode: Mode = "auto") -> Optional[str]:
    """``"bar"``, ``"lines"`` (auto, off a terminal) or None (off)."""
    if mode is False or mode == "off":
        return None
    return "bar" if progress_enabled(mode) else "lines"


def _intervals() -> tuple[float, float]:
    text = os.environ.get("PEERLEARN_PROGRESS_EVERY")
    if text:
        try:
            seconds = max(0.0, float(text))
            return seconds, seconds
        except ValueError:
            pass
    return LINE_AFTER, LINE_EVERY


class Progress:
    """Counts steps of one piece of work and shows them as ``progress_kind(mode)`` says (see the module).

    Used like a tqdm bar: iterate over it, or call ``update(n)``; ``close()`` (or ``with``) ends it. Off a
    terminal a ``heartbeat`` thread also prints the line when one step takes longer than the interval (a long
    t-SNE, a slow export), so that no slow command is silent for more than a few seconds.
    """

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 mode: Mode = "auto", leave: bool = False, unit: str = "it",
                 clock: Callable[[], float] = time.monotonic, heartbeat: bool = True, **kwargs: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.kind = progress_kind(mode)
        self.clock = clock
        self.started = clock()
        self.after, self.every = _intervals()
        self.last_line: Optional[float] = None
        self.postfix = ""
        self.closed = False
        self.bar = (tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr, unit=unit,
                         **kwargs) if self.kind == "bar" else None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = None
        if self.kind == "lines" and heartbeat:
            self._beat = threading.Thread(target=self._heartbeat, name="peerlearn-progress", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(0.5, self.every) or 0.1):
            self._line_if_due()

    def _line_if_due(self) -> None:
        with self._lock:
            now = self.clock()
            if self.closed or now - self.started < self.after:
                return
            if self.last_line is None or now - self.last_line >= self.every:
                self._line(self._count(), now)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.kind == "lines":
            self._line_if_due()

    def set_postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc)

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.bar is not None:
                self.bar.close()
            elif self.kind == "lines" and self.last_line is not None:  # a closing line for work that printed lines
                done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
                self._line(f"done, {done} {self.unit} in", self.clock(), closing=True)

    def _count(self) -> str:
        if self.total:
            return f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%),"
        return f"{self.n} {self.unit},"

    def _line(self, text: str, now: float, closing: bool = False) -> None:
        self.last_line = now
        extra = f" [{self.postfix}]" if self.postfix and not closing else ""
        _write(f"{self.desc}: {text} {now - self.started:.0f} s{extra}")


def _write(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed stream: progress is never worth an error
        pass


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 mode: Mode = "auto", leave: bool = False, **kwargs) -> Progress:
    """A ``Progress`` over ``iterable`` (or counted with ``update``): a bar on a terminal, lines off it."""
    return Progress(iterable, total=total, desc=desc, mode=mode, leave=leave, **kwargs)


def note(text: str, mode: Mode = "auto") -> None:
    """One status line (``report: run 2/3 …``) on standard error unless ``mode`` is off; on a terminal it is
    written above any bar."""
    kind = progress_kind(mode)
    if kind == "bar":
        tqdm.write(text, file=sys.stderr)
    elif kind == "lines":
        _write(text)
