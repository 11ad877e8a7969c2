"""How long an fsync takes on the disk under the audit trail, measured in the same run.

The default configuration answers a check only once its record is fsynced, so
its latency target is the floor's plus this disk's fsync: `probe` appends a
record-sized line and fsyncs it, `count` times, in the directory given.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RECORD_BYTES = 700  # about one decision record


def probe(directory: Path, count: int = 200) -> list[float]:
    """Seconds each of `count` append-and-fsync took, in order."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = b"x" * (RECORD_BYTES - 1) + b"\n"
    took = []
    try:
        for _ in range(count):
            os.write(fd, line)
            started = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return took
