"""The audit trail's files: naming, the live file's descriptor, the tail, the lock.

A trail is its live file (`audit.path`) plus the files rotated out of it,
named `<live name>.<seq of their first record, 12 digits>`, so that a plain
sort puts them in order. `lasthop serve --workers N` runs N processes, each
with a trail of its own: worker 0 writes `audit.path`, worker k the sibling
`<stem>.w<k><suffix>` (decisions.jsonl, decisions.w1.jsonl, ...).

Every write goes through one `os.write` loop on an `O_APPEND` descriptor;
`fsync` failures are never retried on the same descriptor (after a failed
fsync the kernel may have dropped the dirty pages and a second fsync would
report success): the caller abandons it.
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


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """The files in `directory` whose whole names match `pattern`, with the number it captures."""
    found: list[tuple[int, Path]] = []
    if directory.is_dir():
        for entry in directory.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
    return found


def rotated_files(live: Path) -> list[Path]:
    """The files rotated out of `live`, oldest first."""
    pattern = re.compile(rf"{re.escape(live.name)}\.(\d{{{SEQ_DIGITS},}})")
    return [path for _, path in sorted(_numbered(live.parent, pattern))]


def worker_trail(live: Path, worker: int) -> Path:
    """The live file of worker `worker`'s trail (worker 0's is `live` itself)."""
    return live if worker == 0 else live.with_name(f"{live.stem}.w{worker}{live.suffix}")


def worker_trails(live: Path) -> list[Path]:
    """`live` and the live files of the other workers' trails beside it, by worker."""
    pattern = re.compile(rf"{re.escape(live.stem)}\.w([1-9]\d*){re.escape(live.suffix)}")
    return [path for _, path in sorted([(0, live), *_numbered(live.parent, pattern)])]


def live_of(path: Path) -> Path:
    """The live file of the trail `path` belongs to (itself, unless it was rotated out)."""
    name, dot, seq = path.name.rpartition(".")
    rotated = dot and len(seq) >= SEQ_DIGITS and seq.isdigit()
    return path.with_name(name) if rotated else path


def by_trail(files: list[Path]) -> list[list[Path]]:
    """`files` grouped into their trails (each in the order given), trails in order of first
    appearance."""
    trails: dict[Path, list[Path]] = {}
    for path in files:
        trail = trails.setdefault(live_of(path), [])
        if path not in trail:
            trail.append(path)
    return list(trails.values())


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
