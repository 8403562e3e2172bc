"""Write failures of TensorBoard's background thread, reported in the training thread.

tensorboardX writes and flushes event files from a worker thread. A full disk there would kill the
thread with a printed traceback, and the training thread would later block forever on the thread's
full queue. ``TensorBoardWriteGuard`` wraps the event file's write, flush and close: the first
``OSError`` is kept (later writes are dropped) and ``raise_pending`` raises it in the training thread,
where the trainer reports it as exit code 4 with the last good checkpoint.
"""

from __future__ import annotations

from typing import Callable, Optional


class TensorBoardWriteGuard:
    def __init__(self, summary_writer):
        self.error: Optional[OSError] = None
        try:
            events = summary_writer._get_file_writer().event_writer._ev_writer
        except AttributeError:  # another tensorboardX layout: leave it unguarded
            return
        for name in ("write_event", "flush", "close"):
            setattr(events, name, self._guarded(getattr(events, name)))

    def _guarded(self, method: Callable) -> Callable:
        def call(*args, **kwargs):
            if self.error is not None:
                return None
            try:
                return method(*args, **kwargs)
            except OSError as error:
                self.error = error
                return None

        return call

    def raise_pending(self) -> None:
        """Raise the first write error of the event file, if any (call from the training thread)."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error
