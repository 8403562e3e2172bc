"""The after-training commands (evaluate, analyze, report, export, probe) write like training does: a link
planted in a run directory is never written through, and nothing lands outside the run or the --out the
user named; a full disk is exit 4 with no partial or 0-byte file (the previous file kept); a read-only run
directory is a one-line message (exit 4) before any work; the shared writer (``peerlearn.safe_write``) is
tested on its own too."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import peerlearn
import peerlearn.safe_write as safe_write
from conftest import tiny_config
from peerlearn.cli import main
from peerlearn.errors import PeerlearnError, ResourceError
from peerlearn.export import formats

ANALYZE = ["--limit", "40", "--draws", "1", "--sigmas", "0", "0.01", "--tsne-items", "20", "--perplexity", "5"]
REPORT = ["--limit", "40", "--flatness-items", "40", "--draws", "1", "--sigmas", "0", "--tsne-items", "20",
          "--progress", "off"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return peerlearn.train(tiny_config(train={"epochs": 1}), out=tmp_path_factory.mktemp("runs")).run_dir


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _plant_file_link(run: Path, name: str, outside: Path) -> Path:
    victim = outside / f"victim-{name}"
    victim.write_text("precious\n")
    (run / name).symlink_to(victim)
    return victim


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_size for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- planted links
def test_links_planted_at_the_result_files_are_replaced_never_written_through(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {name: _plant_file_link(run, name, outside)
               for name in ("evaluation_test.json", "analysis.json", "tsne.json", "report.html")}
    assert _cli(capsys, "evaluate", str(run))[0] == 0
    assert _cli(capsys, "analyze", str(run), *ANALYZE)[0] == 0
    assert _cli(capsys, "report", str(run), *REPORT)[0] == 0
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n", f"{name} was written through a link"
        assert (run / name).is_file() and not (run / name).is_symlink() and (run / name).stat().st_size > 0
    assert not list(run.glob(".*.tmp"))


def test_a_planted_folder_link_is_refused_so_nothing_lands_outside_the_run(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "export").symlink_to(outside, target_is_directory=True)
    code, err = _cli(capsys, "export", str(run), "--member", "a", "--format", "safetensors", "--check-items", "4")
    assert code == 1 and "symbolic link" in err and "export" in err, err
    (run / "report_figures").symlink_to(outside, target_is_directory=True)
    code, err = _cli(capsys, "report", str(run), "--figures", "svg", *REPORT)
    assert code == 1 and "symbolic link" in err and "report_figures" in err, err
    assert list(outside.iterdir()) == []
    assert not (run / "report.html").exists()  # refused before the work, not after


def test_export_writes_only_into_the_folder_named_and_replaces_planted_links(run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    victim = tmp_path / "victim.pt"
    victim.write_text("precious\n")
    (out / "a.pt").symlink_to(victim)
    code, err = _cli(capsys, "export", str(run), "--member", "a", "--format", "torchscript", "--out", str(out),
                     "--check-items", "4")
    assert code == 0, err
    assert victim.read_text() == "precious\n" and not (out / "a.pt").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["a.pt", "a.pt.json"]  # no staging folder left


def test_the_writer_refuses_a_path_outside_its_root_and_links_on_the_way(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with pytest.raises(PeerlearnError, match="outside"):
        safe_write.write_file(outside / "x.json", "{}", root=root)
    with pytest.raises(PeerlearnError, match=r"'\.\.'|outside"):
        safe_write.write_file(root / ".." / "outside" / "x.json", "{}", root=root)
    (root / "deep").mkdir()
    (root / "deep" / "hop").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PeerlearnError, match="symbolic link"):
        safe_write.write_file(root / "deep" / "hop" / "new" / "x.json", "{}", root=root)
    assert list(outside.iterdir()) == []
    path = safe_write.write_file(root / "a" / "b" / "x.json", "{}", root=root)  # folders made as needed
    assert path.read_text() == "{}" and not list(path.parent.glob(".*.tmp"))


# --------------------------------------------------------------------------- full disk
def _disk_full_on_write(monkeypatch, after_bytes: int = 10) -> None:
    """Every write through the shared writer gets ``after_bytes`` bytes out, then ENOSPC."""
    original = os.write

    def write(fd, data):
        if len(data) > after_bytes:
            original(fd, bytes(data[:after_bytes]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_write.os, "write", write)


@pytest.mark.parametrize("command, name, extra", [
    ("evaluate", "evaluation_test.json", []),
    ("analyze", "tsne.json", ANALYZE),  # the first of its two files
    ("report", "report.html", REPORT),
])
def test_a_full_disk_is_exit_4_and_keeps_the_previous_file_whole(run, monkeypatch, capsys, command, name, extra):
    (run / name).write_text("previous result\n")
    _disk_full_on_write(monkeypatch)
    code, err = _cli(capsys, command, str(run), *extra)
    assert code == 4 and "No space left on device" in err and name in err, err
    assert (run / name).read_text() == "previous result\n"
    assert not list(run.glob(".*.tmp")) and not [p for p in run.iterdir() if p.stat().st_size == 0 and p.name != ".lock"]


def test_a_full_disk_during_an_export_leaves_no_file(run, monkeypatch, capsys):
    original = formats.save_safetensors

    def half_then_full(model, path, metadata):  # the writer gets half a file out, then the disk is full
        original(model, path, metadata)
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                           "\"No space left on device\" })")

    monkeypatch.setattr(formats, "save_safetensors", half_then_full)
    code, err = _cli(capsys, "export", str(run), "--member", "a", "--format", "safetensors", "--check-items", "4")
    assert code == 4 and "No space left on device" in err, err
    assert list((run / "export").iterdir()) == []  # neither the half file nor the staging folder


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (needs root, as in the project's CI container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC


def test_a_really_full_disk(finished, tmpfs, monkeypatch, capsys):
    """The same on a real full file system: torch.jit.save, the JSON writer and the staging folder meet
    ENOSPC themselves."""
    run = Path(shutil.copytree(finished, tmpfs / "run"))
    (run / "evaluation_test.json").write_text("previous result\n")
    original_load = peerlearn.api.load_run

    def load_then_fill(*args, **kwargs):  # the disk fills while the run is read (after the up-front check)
        loaded = original_load(*args, **kwargs)
        _fill(tmpfs)
        return loaded

    monkeypatch.setattr(peerlearn.api, "load_run", load_then_fill)
    code, err = _cli(capsys, "evaluate", str(run))
    assert code == 4 and "No space left on device" in err, err
    assert (run / "evaluation_test.json").read_text() == "previous result\n"
    (tmpfs / "filler").unlink()
    code, err = _cli(capsys, "export", str(run), "--member", "a", "--format", "torchscript", "--check-items", "4")
    assert code == 4 and "No space left on device" in err, err
    assert list((run / "export").iterdir()) == []
    assert not list(run.glob(".*.tmp"))


# --------------------------------------------------------------------------- read-only run directory
@pytest.fixture
def read_only_run(finished, tmp_path):
    """A copy of the run in a read-only place: a read-only tmpfs as root (root ignores permission bits),
    a folder without write permission otherwise."""
    if os.geteuid() == 0:
        mount = tmp_path / "ro"
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        run = Path(shutil.copytree(finished, mount / "run"))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield run
        subprocess.run(["umount", "-l", str(mount)], check=False)
    else:
        run = Path(shutil.copytree(finished, tmp_path / "run"))
        run.chmod(0o555)
        yield run
        run.chmod(0o755)


@pytest.mark.parametrize("args", [
    ["evaluate"], ["analyze", *ANALYZE], ["report", *REPORT], ["probe"],
    ["export", "--member", "a", "--format", "safetensors"],
])
def test_a_read_only_run_directory_is_a_clear_message_before_any_work(read_only_run, capsys, args):
    before = _files(read_only_run)
    code, err = _cli(capsys, args[0], str(read_only_run), *args[1:])
    assert code == 4 and "read-only or not writable" in err and err.count("\n") == 1, err
    assert _files(read_only_run) == before


def test_a_read_only_run_can_still_be_exported_elsewhere(read_only_run, tmp_path, capsys):
    code, err = _cli(capsys, "export", str(read_only_run), "--member", "a", "--format", "safetensors",
                     "--out", str(tmp_path / "out"), "--check-items", "4")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.safetensors", "a.safetensors.json"]


def test_the_writer_names_a_read_only_folder(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(safe_write.os, "write", refuse)
    with pytest.raises(ResourceError, match="read-only or not writable"):
        safe_write.write_file(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []
