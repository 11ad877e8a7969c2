"""The audit trail's files: naming, the live file's descriptor, the tail, the lock.

A trail is its live file (`audit.path`) plus the files rotated out of it,
named `<live name>.<seq of their first record, 12 digits>`, so that a plain
sort puts them in order. Every write goes through one `os.write` loop on an
`O_APPEND` descriptor; `fsync` failures are never retried on the same
descriptor (after a failed fsync the kernel may have dropped the dirty pages
and a second fsync would report success): the caller abandons it.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

TAIL_CHUNK = 64 * 1024
SEQ_DIGITS = 12


def rotated_name(live: Path, first_seq: int) -> Path:
    return live.with_name(f"{live.name}.{first_seq:0{SEQ_DIGITS}d}")


def rotated_files(live: Path) -> list[Path]:
    """The files rotated out of `live`, oldest first."""
    pattern = re.compile(rf"{re.escape(live.name)}\.(\d{{{SEQ_DIGITS},}})")
    found: list[tuple[int, Path]] = []
    if live.parent.is_dir():
        for entry in live.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def trail_files(live: Path) -> list[Path]:
    """Every file of the trail whose live file is `live`, oldest first."""
    files = rotated_files(live)
    if live.is_file():
        files.append(live)
    return files


def read_tail(path: Path) -> tuple[bytes, int]:
    """(the last complete line with its newline, or b"", number of bytes after it).

    Bytes after the last newline are a record cut short by a crash mid-write.
    """
    with path.open("rb") as file:
        pos = file.seek(0, os.SEEK_END)
        buf = b""
        while pos > 0:
            step = min(TAIL_CHUNK, pos)
            pos -= step
            file.seek(pos)
            buf = file.read(step) + buf
            last = buf.rfind(b"\n")
            if last == -1:
                continue
            before = buf.rfind(b"\n", 0, last)
            if before != -1 or pos == 0:
                return buf[before + 1 : last + 1], len(buf) - last - 1
        return b"", len(buf)


def read_head_line(path: Path) -> bytes:
    """The first line of `path`, or b"" when it is empty."""
    with path.open("rb") as file:
        return file.readline()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendFile:
    """An `O_APPEND` descriptor: write everything or raise; fsync or raise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self.fd: int | None = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        self.size = os.fstat(self.fd).st_size
        if created:
            fsync_dir(path.parent)

    def write(self, data: bytes) -> None:
        fd = self._fd()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            self.size += written

    def fsync(self) -> None:
        os.fsync(self._fd())

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def _fd(self) -> int:
        if self.fd is None:
            raise OSError(f"`{self.path}` was abandoned after an earlier failure")
        return self.fd


class TrailLock:
    """An exclusive `flock` on `<live>.lock`: two processes never write one trail."""

    def __init__(self, live: Path) -> None:
        self.path = live.with_name(f"{live.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the lock
