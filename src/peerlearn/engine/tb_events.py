"""Reading and truncating TensorBoard event files without TensorBoard itself.

An event file is a sequence of TFRecords: ``len`` (uint64, little endian), ``masked_crc32c(len)`` (uint32),
``data`` (``len`` bytes: a serialised ``Event`` protobuf), ``masked_crc32c(data)`` (uint32), where
masked_crc(x) = ((crc32c(x) >> 15) | (crc32c(x) << 17)) + 0xa282ead8 (mod 2^32). A process killed while
writing leaves a torn last record; reading stops there.

On ``--resume`` from a checkpoint at global step S, ``truncate_events`` rewrites every event file of the run
with only its records of step <= S (and drops torn records), so that the resumed run's new events file
continues the curves with no duplicate step and no hole, whatever reader is used.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Iterator

from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from peerlearn.engine.run_dir import open_nofollow

_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def event_files(log_dir: Path) -> list[Path]:
    """The event files of one TensorBoard log folder, oldest first (their names start with a timestamp)."""
    return sorted(p for p in Path(log_dir).glob("events.out.tfevents.*") if p.is_file())


def read_records(path: Path) -> Iterator[bytes]:
    """The intact records of one event file; stops at the first torn or corrupt one."""
    data = Path(path).read_bytes()
    offset = 0
    while offset + _HEADER.size + _CRC.size <= len(data):
        header = data[offset:offset + _HEADER.size]
        (length,) = _HEADER.unpack(header)
        (header_crc,) = _CRC.unpack_from(data, offset + _HEADER.size)
        start = offset + _HEADER.size + _CRC.size
        end = start + length
        if header_crc != masked_crc32c(header) or end + _CRC.size > len(data):
            return
        body = data[start:end]
        (body_crc,) = _CRC.unpack_from(data, end)
        if body_crc != masked_crc32c(body):
            return
        yield body
        offset = end + _CRC.size


def _frame(body: bytes) -> bytes:
    header = _HEADER.pack(len(body))
    return header + _CRC.pack(masked_crc32c(header)) + body + _CRC.pack(masked_crc32c(body))


def read_events(log_dir: Path) -> list[Event]:
    """Every intact event of every file in ``log_dir``, in file order."""
    events = []
    for path in event_files(log_dir):
        for body in read_records(path):
            event = Event()
            event.ParseFromString(body)
            events.append(event)
    return events


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the scalar summaries in ``log_dir``, in the order written."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(log_dir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def truncate_events(log_dir: Path, last_step: int) -> None:
    """Keep only the records of step <= ``last_step`` in every event file of ``log_dir`` (each file replaced
    atomically; running it again after a kill is harmless)."""
    for path in event_files(log_dir):
        bodies = list(read_records(path))
        kept = []
        for body in bodies:
            event = Event()
            event.ParseFromString(body)
            if event.step <= last_step:
                kept.append(body)
        if len(kept) == len(bodies) and path.stat().st_size == sum(len(_frame(b)) for b in bodies):
            continue  # nothing after the checkpoint, nothing torn
        tmp = path.with_name(".truncating.tmp")  # not named *tfevents*: no reader loads it
        with open(tmp, "wb") as handle:
            handle.write(b"".join(_frame(body) for body in kept))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


class EventWriter:
    """A synchronous TensorBoard event file writer: ``flush`` returns once every event added so far is on disk
    (tensorboardX's ``SummaryWriter`` queues events to a thread, so its ``flush`` does not promise that)."""

    def __init__(self, log_dir: Path):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.time()
        self.path = log_dir / f"events.out.tfevents.{stamp:.6f}.{socket.gethostname()}.{os.getpid()}"
        # never through a planted link (engine.run_dir.open_nofollow)
        self.handle = os.fdopen(open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
        self._write(Event(wall_time=stamp, step=0, file_version="brain.Event:2"))

    def _write(self, event: Event) -> None:
        self.handle.write(_frame(event.SerializeToString()))

    def add_summary(self, summary, step: int) -> None:
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.summary import scalar

        self.add_summary(scalar(tag, float(value)), step)

    def flush(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if not self.handle.closed:
            self.flush()
            self.handle.close()
