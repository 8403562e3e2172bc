"""How the after-training commands (evaluate, analyze, probe, report, export) write their files.

A run directory may come from someone else, and links can be planted in it. So every file is written the
same way training writes its own:

* the folder is reached from a root the user named (the run directory, or ``--out``) one component at a
  time, each opened with ``O_NOFOLLOW``: a link on the way (say ``RUN_DIR/export`` pointing elsewhere) is
  refused, so nothing is ever written outside that root; missing folders are created;
* the bytes go to a fresh temporary file in that folder (``O_CREAT | O_EXCL | O_NOFOLLOW``), are flushed
  to disk (``fsync``) and the file is renamed over the final name (``os.replace``, atomic): a link planted
  at the final name is replaced, its target untouched, and a reader sees the old file or the new one;
* any failure removes the temporary file: a full disk (``ENOSPC``, ``EDQUOT``, ``EIO``) is a
  ``ResourceError`` (exit 4) that leaves the previous file as it was, never a 0-byte or half file; a
  read-only or unwritable folder is a ``ResourceError`` that says so.

Writers that only take a path (``torch.onnx.export``, ``torch.jit.save``) write into a private staging
folder made inside the target folder (``StagedFiles``); the finished files are renamed into place together
once they are complete and checked, and the staging folder is removed whatever happens.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from peerlearn.errors import PeerlearnError, ResourceError

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FDS = os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd and _NOFOLLOW != 0


def link_refused(path: Path) -> PeerlearnError:
    return PeerlearnError(f"{str(path)!r} is a symbolic link; peerlearn never writes through a link (it could point "
                          "outside the run directory or the folder you named). Remove the link (and check who "
                          "planted it), then try again.")


def write_failure(error: OSError, path: Path, what: str = "") -> PeerlearnError:
    """The message for a failed write of ``path``: exit 4 for a full disk or an unwritable folder."""
    reason = error.strerror or str(error)
    name = f"{what} {str(path)!r}" if what else repr(str(path))
    if error.errno in DISK_ERRNOS:
        return ResourceError(f"Cannot write {name}: {reason}. Nothing was replaced and no partial file was left; "
                             "free disk space, then run the command again.")
    if error.errno in READ_ONLY_ERRNOS:
        return ResourceError(f"Cannot write {name}: the folder {str(path.parent)!r} is read-only or not writable "
                             f"({reason}). Make it writable, or name another output folder (--out) where the "
                             "command has one.")
    return ResourceError(f"Cannot write {name}: {reason}.")


def disk_error_in(error: BaseException) -> Optional[OSError]:
    """The ``OSError`` of a full disk behind ``error`` (its causes and contexts included), if any: some
    writers wrap it in their own exception type, or only name it in their message (``os error 28``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
            return error
        text = str(error)
        if "No space left on device" in text or "os error 28" in text:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        error = error.__cause__ or error.__context__
    return None


def _relative_parts(folder: Path, root: Path) -> tuple[str, ...]:
    try:
        parts = Path(os.path.normpath(folder)).relative_to(os.path.normpath(root)).parts
    except ValueError:
        raise PeerlearnError(f"{str(folder)!r} is outside {str(root)!r}; peerlearn writes only inside the run "
                             "directory or the folder you named.") from None
    if ".." in parts:
        raise PeerlearnError(f"{str(folder)!r} leaves {str(root)!r} through '..'.")
    return parts


def _open_folder(folder: Path, root: Path) -> int:
    """A descriptor of ``folder``, reached from ``root`` one component at a time without following a link
    (created where missing). ``root`` itself must exist; it is the user's choice and may be a link. Other
    failures stay ``OSError``."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        here = Path(root)
        for part in _relative_parts(folder, root):
            here = here / part
            try:
                child = os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError:
                if os.path.islink(here):
                    raise link_refused(here) from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_folder_by_path(folder: Path, root: Path) -> None:
    """Where descriptors cannot name folders (Windows): the same rule, checked on paths."""
    here = Path(root)
    for part in _relative_parts(folder, root):
        here = here / part
        if os.path.islink(here):
            raise link_refused(here)
        here.mkdir(exist_ok=True)


def ensure_folder(folder: Union[str, Path], root: Union[str, Path, None] = None, create_root: bool = False) -> Path:
    """Make ``folder`` (inside ``root``; itself when None) a real folder: a link on the way is refused.
    ``root`` must exist, or is made (with its parents) when ``create_root``: for a folder the user named."""
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    try:
        if create_root:
            root.mkdir(parents=True, exist_ok=True)
        if _DIR_FDS:
            os.close(_open_folder(folder, root))
        else:
            _check_folder_by_path(folder, root)
    except OSError as error:
        raise write_failure(error, folder, "the folder") from None
    return folder


def check_writable(folder: Union[str, Path], what: str = "run directory") -> None:
    """Fail before the work when ``folder`` cannot take a file: a real write, since permission bits say
    nothing on a read-only mount or for root. A folder that does not exist is left to the reader of the
    run, which names it better."""
    if not Path(folder).is_dir():
        return
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".peerlearn-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ResourceError(f"The {what} {str(folder)!r} is read-only or not writable ({reason}); nothing was "
                            "computed. Make it writable, or copy the run somewhere writable (report and export "
                            "also write elsewhere with --out).") from None


def write_file(path: Union[str, Path], data: Union[bytes, str], root: Union[str, Path, None] = None,
               what: str = "") -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically, never through a link, never outside ``root``
    (default: the file's own folder). Returns ``path``."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    root = Path(root) if root is not None else path.parent
    if not _DIR_FDS:
        return _write_by_path(path, payload, root, what)
    try:
        folder_fd = _open_folder(path.parent, root)
    except OSError as error:
        raise write_failure(error, path, what) from None
    temporary = f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o666, dir_fd=folder_fd)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        _fsync(folder_fd)
    except OSError as error:
        try:
            os.unlink(temporary, dir_fd=folder_fd)
        except OSError:
            pass
        raise write_failure(error, path, what) from None
    finally:
        os.close(folder_fd)
    return path


def _write_by_path(path: Path, payload: bytes, root: Path, what: str) -> Path:
    from peerlearn.engine.checkpoint import atomic_write

    ensure_folder(path.parent, root)
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(payload))
    except OSError as error:
        raise write_failure(error, path, what) from None
    return path


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot flush a folder; the rename is done all the same
        pass


class StagedFiles:
    """A private folder inside ``folder`` for writers that need a path; ``publish`` renames the finished
    files into ``folder`` (each atomically, replacing a planted link), ``discard`` removes everything."""

    def __init__(self, folder: Path, root: Path):
        ensure_folder(folder, root)
        self.folder = Path(folder)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=".staging-", suffix=".tmp", dir=self.folder))
        except OSError as error:
            raise write_failure(error, self.folder / ".staging", "a staging folder in") from None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def publish(self, names: list[str]) -> list[Path]:
        """Rename each of ``names`` (those that exist) from the staging folder into place."""
        done = []
        for name in names:
            source = self.path / name
            if not os.path.lexists(source):
                continue
            with open(source, "rb") as handle:
                os.fsync(handle.fileno())
            try:
                os.replace(source, self.folder / name)
            except OSError as error:
                raise write_failure(error, self.folder / name) from None
            done.append(self.folder / name)
        if _DIR_FDS:
            fd = os.open(self.folder, _DIR_FLAGS)
            _fsync(fd)
            os.close(fd)
        return done

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def staged_files(folder: Union[str, Path], root: Union[str, Path, None] = None) -> Iterator[StagedFiles]:
    """``StagedFiles`` in ``folder`` (inside ``root``), removed on the way out whether or not it published."""
    stage = StagedFiles(Path(folder), Path(root) if root is not None else Path(folder))
    try:
        yield stage
    finally:
        stage.discard()
