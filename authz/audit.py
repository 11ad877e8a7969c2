"""The decision audit trail: one JSON line per decision, written off the request path.

The check path calls `AuditLog.emit`, which only enqueues; a writer task
batches records to disk in a worker thread. A full queue or a failed write
makes `emit` refuse, and the pipeline then denies with `audit_unavailable`:
Lasthop never allows without a record. Records never hold a token, only
its SHA-256; `json.dumps` escapes every control character, so each record
stays one line whatever the claims contain.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_BATCH = 512


@dataclass(frozen=True, slots=True)
class AuditRecord:
    decision_id: str
    time: str  # RFC 3339, UTC
    decision: str  # allow | deny
    status: int
    reason: str
    user: str
    chain: list[str]
    agent: str
    client_id: str
    peer: str
    action: str
    resource: str
    method: str
    host: str
    path: str  # without the query string
    purpose: str
    txn: str
    grant_id: str
    policies: list[str]
    policy_version: str
    token_sha256: str
    latency_ms: float
    shadow: list[dict[str, str]] = field(default_factory=list)  # [{policy, effect}]
    shadow_disagrees: bool = False  # enforcing the shadow policies would flip the decision
    dry_run: str = ""  # dry-run mode: the reason this allow would have been a deny

    def to_line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=True) + "\n"


class AuditSink(Protocol):
    def emit(self, record: AuditRecord) -> bool:
        """Enqueue without blocking; False when the record cannot be taken."""
        ...


class MemoryAudit:
    """Keeps records in a list; for tests and offline `lasthop check`."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def emit(self, record: AuditRecord) -> bool:
        self.records.append(record)
        return True


class AuditLog:
    def __init__(self, path: Path, queue_size: int) -> None:
        self.path = path
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=queue_size)
        self._failed: str = ""
        self._task: asyncio.Task[None] | None = None
        self._file: Any = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="ascii")
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def emit(self, record: AuditRecord) -> bool:
        if self._failed:
            return False
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            return False
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[AuditRecord]) -> None:
        lines = "".join(r.to_line() for r in batch)
        try:
            await asyncio.to_thread(self._write_sync, lines)
        except Exception as err:  # noqa: BLE001 - any failure: stop allowing, never skip
            self._failed = f"audit write failed: {err!r}"
            log.error("%s; denying every check until restart", self._failed)
        finally:
            for _ in batch:
                self._queue.task_done()

    def _write_sync(self, lines: str) -> None:
        self._file.write(lines)
        self._file.flush()

    async def close(self) -> None:
        """Write everything queued, then close the file."""
        if self._task is not None:
            if not self._failed and not self._task.done():
                await self._queue.join()
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._file is not None:
            self._file.close()
