"""The trail on disk: seal records into the chain, write, fsync, checkpoint, rotate.

Synchronous, and used by one thread at a time (the audit writer's worker
thread; `open` at start-up). Policy:

- fsync: `always` after every batch; else within `fsync_interval` seconds of
  the first write not yet synced.
- checkpoint (needs a signing key): after `checkpoint_records` records, or
  `checkpoint_seconds` after the last one when records came since, before
  a rotation, and at shutdown. Each checkpoint is also appended to the
  anchors file (`audit.checkpoints_path`) and fsynced at once.
- rotation: once the live file reaches `rotate_bytes`, it ends with a
  checkpoint, is fsynced and renamed to `<name>.<first seq>`; a new live file
  continues the chain.

Opening continues the chain from the last record on disk. A record cut short
by a crash (bytes after the last newline of the live file) is cut off and
reported in the `trail_opened` event; a last record that does not verify
stops start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.audit.chain import Head, canonical, line, record_hash
from authz.audit.files import (
    AppendFile,
    TrailLock,
    fsync_dir,
    read_head_line,
    read_tail,
    rotated_files,
    rotated_name,
)
from authz.audit.records import CHECKPOINT, Record, Repeat
from authz.audit.signing import SigningKey
from authz.audit.templates import Templates
from authz.codec import rfc3339
from authz.errors import ConfigError


@dataclass(frozen=True)
class TrailOptions:
    fsync_interval: float = 0.0  # seconds; 0: fsync after every batch
    rotate_bytes: int = 0  # 0: never rotate
    checkpoint_records: int = 1000
    checkpoint_seconds: float = 60.0
    key: SigningKey | None = None  # None: no checkpoints (tests only; `serve` requires a key)
    anchors: Path | None = None  # where checkpoints are copied


class Trail:
    def __init__(
        self, path: Path, options: TrailOptions, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.options = options
        self._clock = clock
        self._lock = TrailLock(path)
        self._head = Head()
        self._file: AppendFile | None = None
        self._anchors: AppendFile | None = None
        self._first_seq = 1  # of the live file, for its rotated name
        self._dirty_since: float | None = None
        self._since_checkpoint = 0
        self._last_checkpoint = 0.0
        self._templates = Templates()

    @property
    def head(self) -> Head:
        return self._head

    # --- opening -------------------------------------------------------------------------------

    def open(self) -> dict[str, Any]:
        """Lock, repair and open the trail; returns what the `trail_opened` event reports."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._lock.acquire():
                raise ConfigError(
                    "audit.path",
                    f"`{self.path}` is in use by another Lasthop "
                    f"process (it holds `{self._lock.path}`)",
                )
            detail = self._repair_live()
            head, previous = self._find_head()
            self._head = head
            self._first_seq = self._live_first_seq()
            self._file = AppendFile(self.path)
            if self.options.anchors is not None:
                self._anchors = AppendFile(self.options.anchors)
        except OSError as err:
            self._lock.release()
            raise ConfigError(
                "audit.path", f"cannot open the audit trail `{self.path}`: {err.strerror or err}"
            ) from err
        except ConfigError:
            self._lock.release()
            raise
        self._last_checkpoint = self._clock()
        return {**detail, "previous_end": previous, "seq": head.seq}

    def _repair_live(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        _, torn = read_tail(self.path)
        if not torn:
            return {}
        size = self.path.stat().st_size
        with self.path.open("rb") as file:
            file.seek(size - torn)
            dropped = file.read()
        os.truncate(self.path, size - torn)
        return {"dropped_bytes": torn, "dropped_sha256": hashlib.sha256(dropped).hexdigest()}

    def _find_head(self) -> tuple[Head, str]:
        files = rotated_files(self.path) + ([self.path] if self.path.is_file() else [])
        for source in reversed(files):
            last, torn = read_tail(source)
            if torn:
                raise ConfigError(
                    "audit.path",
                    f"`{source}` ends in a record cut short; run "
                    f"`lasthop audit verify {self.path}`",
                )
            if last:
                record = _verified(last, source)
                end = str(record.get("type", ""))
                if end == CHECKPOINT:
                    end += f":{record.get('trigger', '')}"
                return Head(seq=record["seq"], hash=record["hash"]), end
        return Head(), "none"

    def _live_first_seq(self) -> int:
        if self.path.is_file():
            first = read_head_line(self.path)
            if first:
                return int(_verified(first, self.path)["seq"])
        return self._head.seq + 1

    # --- writing -------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        now = self._clock()
        data = b"".join(self._seal(r) for r in records)
        self._append(data, now)
        self._since_checkpoint += len(records)
        if self._checkpoint_due(now, by_count=True):
            self._checkpoint(now, "records")
        if self.options.rotate_bytes and self._live().size >= self.options.rotate_bytes:
            self._rotate(now)
        if self._fsync_due(now):
            self.fsync()

    def due(self) -> float | None:
        """Seconds until an fsync or a timed checkpoint is due; None when none is pending."""
        now = self._clock()
        deadlines = []
        if self._dirty_since is not None:
            deadlines.append(self._dirty_since + self.options.fsync_interval)
        if self.options.key is not None and self._since_checkpoint:
            deadlines.append(self._last_checkpoint + self.options.checkpoint_seconds)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def housekeep(self) -> None:
        now = self._clock()
        if self._checkpoint_due(now, by_count=False):
            self._checkpoint(now, "interval")
        if self._fsync_due(now):
            self.fsync()

    def fsync(self) -> None:
        self._live().fsync()
        self._dirty_since = None

    def close(self) -> None:
        """Shutdown: a last checkpoint, fsync, close, unlock."""
        try:
            if self._file is not None and self._file.fd is not None:
                if self.options.key is not None:
                    self._checkpoint(self._clock(), "shutdown")
                self.fsync()
        finally:
            self.abandon()
            self._lock.release()

    def abandon(self) -> None:
        """After a failure: close the descriptors without another fsync."""
        for file in (self._file, self._anchors):
            if file is not None:
                file.close()

    # --- internals -----------------------------------------------------------------------------

    def _seal(self, record: Record) -> bytes:
        if isinstance(record, Repeat):
            return self._templates.seal(self._head, record)
        return self._head.seal_line(record.to_dict())

    def _live(self) -> AppendFile:
        if self._file is None:
            raise OSError(f"the audit trail `{self.path}` is not open")
        return self._file

    def _append(self, data: bytes, now: float) -> None:
        self._live().write(data)
        if self._dirty_since is None:
            self._dirty_since = now

    def _fsync_due(self, now: float) -> bool:
        if self._dirty_since is None:
            return False
        return now - self._dirty_since >= self.options.fsync_interval

    def _checkpoint_due(self, now: float, by_count: bool) -> bool:
        if self.options.key is None or not self._since_checkpoint:
            return False
        if self._since_checkpoint >= self.options.checkpoint_records:
            return True
        return not by_count and now - self._last_checkpoint >= self.options.checkpoint_seconds

    def _checkpoint(self, now: float, trigger: str) -> None:
        assert self.options.key is not None
        record = self._head.checkpoint(self.options.key, rfc3339(now), trigger)
        data = line(record)
        self._append(data, now)
        if self._anchors is not None:
            self._anchors.write(data)
            self._anchors.fsync()
        self._since_checkpoint = 0
        self._last_checkpoint = now

    def _rotate(self, now: float) -> None:
        if self.options.key is not None:
            self._checkpoint(now, "rotation")
        live = self._live()
        live.fsync()
        live.close()
        target = rotated_name(self.path, self._first_seq)
        if target.exists():
            raise FileExistsError(f"cannot rotate the audit trail: `{target}` exists")
        os.rename(self.path, target)
        fsync_dir(self.path.parent)
        self._file = AppendFile(self.path)
        self._first_seq = self._head.seq + 1
        self._dirty_since = None


def _verified(raw: bytes, source: Path) -> dict[str, Any]:
    """A record read back at start-up; ConfigError when it is not a sealed, intact record."""
    problem = ""
    try:
        record = json.loads(raw)
    except ValueError:
        record, problem = None, "not JSON"
    if not problem and not isinstance(record, dict):
        problem = "not a JSON object"
    elif not problem and canonical(record) + b"\n" != raw:
        problem = "not in canonical form"
    elif not problem and not (
        isinstance(record.get("seq"), int) and record.get("hash") == record_hash(record)
    ):
        problem = "its hash does not match its content"
    if problem or not isinstance(record, dict):
        raise ConfigError(
            "audit.path",
            f"`{source}` holds a record that does not verify "
            f"({problem}); run `lasthop audit verify {source}`, and move the "
            "damaged trail (with its .checkpoints file) aside to start a new one",
        )
    return record
