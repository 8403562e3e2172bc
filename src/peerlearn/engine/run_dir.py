"""Run directories: created fresh for every run, never overwritten, written by one process at a time.

A run directory is not a way in: nothing peerlearn writes there follows a symbolic link. Whole files
(config.yaml, summary.json, checkpoints, weights) are written to a fresh temporary name and renamed
over the old one (a planted link is replaced, its target untouched); files that are opened in place
(``.lock``, ``metrics.jsonl``) are opened with ``O_NOFOLLOW``, and a link there is refused.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from peerlearn.errors import PeerlearnError, ResourceError
from peerlearn.run_files import LOCK_NAME

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# Descriptors of the run locks this process holds. A forked child (a DataLoader worker) closes its copies at
# once: a flock belongs to the open file, which a fork shares, so a worker that outlived a killed parent
# would otherwise keep the run locked. O_CLOEXEC already keeps them from programs started with exec.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)  # the child's copy only: the parent keeps its lock
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``PeerlearnError``, exit 1) instead of
    writing through it; other failures stay ``OSError``."""
    try:
        return os.open(path, flags | NOFOLLOW, mode)
    except OSError as error:
        if os.path.islink(path):
            raise PeerlearnError(f"{str(path)!r} is a symbolic link; peerlearn never writes through a link in a run "
                                 "directory. Remove the link (and check who planted it), then try again.") from None
        raise


def open_append(path: Path):
    """A line-buffered text handle appending to ``path`` (created if missing), never through a link."""
    return os.fdopen(open_nofollow(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", buffering=1,
                     encoding="utf-8")


def write_text_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temporary file, fsync, rename): a link at ``path`` is
    replaced, never followed."""
    from peerlearn.engine.checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_config(config, path: Path) -> None:
    """Write the resolved config (``config.config_yaml``) atomically, never through a symbolic link."""
    from peerlearn.config import config_yaml

    write_text_file(Path(path), config_yaml(config))


def ensure_writable(folder: Path, what: str = "output directory", hint: str = "Choose another with --out.",
                    create: bool = False) -> Path:
    """Prove that files can be made in ``folder`` (a real write, not only permission bits, which say
    nothing on read-only mounts or for root). A folder that does not exist yet is checked through its
    nearest existing parent, and made only when ``create`` is true. Raises ``ResourceError`` otherwise."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, f"{str(probe)!r} is a file, not a folder")
        with tempfile.TemporaryFile(dir=probe, prefix=".peerlearn-probe-"):
            pass
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ResourceError(f"The {what} {str(folder)!r} is not writable ({reason}); nothing was trained. {hint}") from None
    return folder


def create_run_dir(out: Path, name: str) -> Path:
    """Make ``out/<name>-<YYYYmmdd-HHMMSS>`` (with -2, -3, ... if taken); fail early if unwritable."""
    out = ensure_writable(Path(out), create=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"{name}-{stamp}"
    candidate, suffix = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = Path(f"{base}-{suffix}")
        except OSError as error:
            raise ResourceError(f"Cannot create the run directory {str(candidate)!r}: {error.strerror or error}. "
                                "Choose another parent with --out.") from None


class RunLock:
    """An exclusive lock on a run directory, held while a process trains into it.

    Uses ``flock`` on ``RUN_DIR/.lock``: the operating system drops it when the process ends, even
    on SIGKILL, so a killed run never leaves a stale lock behind. Forked children (DataLoader workers) do
    not keep it: their copy of the descriptor is closed right after the fork (``_close_inherited_locks``). A second process (say, a second
    ``--resume`` of the same run) fails at once with ``ResourceError`` naming the holder's pid.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.handle: Optional[int] = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run unlocked
            return self
        try:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            raise ResourceError(f"Cannot create the lock file {str(self.path)!r}: {error.strerror or error}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ResourceError(
                f"The run directory {str(self.path.parent)!r} is in use by another peerlearn process (pid {holder}). "
                "Wait for it to finish or stop it; two processes must not write the same run."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.handle = fd
        _HELD_LOCKS.add(fd)
        return self

    def release(self) -> None:
        if self.handle is not None:
            _HELD_LOCKS.discard(self.handle)
            os.close(self.handle)  # closing drops the flock
            self.handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
