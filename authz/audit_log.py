"""The audit writer: the request path hands records over; a writer task writes them.

    check path --put_nowait--> queue --writer task--> worker thread: seal, write, fsync

- `emit` never blocks and never touches the disk. `commit` is what the
  pipeline awaits: with `audit.fsync = "always"` it returns once the record's
  batch is fsynced (group commit: one fsync covers every record that queued
  meanwhile); with an interval it returns at once.
- The writer takes everything queued (up to `MAX_BATCH`) as one batch and
  hands it to a worker thread, so the event loop never waits on the disk.
- No loss, fail closed: a full queue, or any failure to write, fsync or
  rotate, makes `commit` return False, and the pipeline denies with
  `audit_unavailable`. After a failure the descriptor is abandoned, never
  fsynced again as though the data had reached the disk, and every later
  record is refused until Lasthop restarts (the restart repairs the tail).
- `close` (SIGTERM) writes everything queued, a final signed checkpoint,
  fsyncs and closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.audit import EventRecord, Record, rfc3339
from authz.audit_trail import Trail, TrailOptions

log = logging.getLogger(__name__)

MAX_BATCH = 512
SERVER_ACTOR = "lasthop"

_Item = tuple[Record, "asyncio.Future[bool] | None"]


class AuditLog:
    def __init__(self, path: Path, queue_size: int, options: TrailOptions | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.options = options or TrailOptions()
        self._trail = Trail(path, self.options, clock)
        self._clock = clock
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self._failed = ""
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def durable_before_answer(self) -> bool:
        return self.options.fsync_interval == 0

    @property
    def failure(self) -> str:
        """Why the trail refuses records; empty while it works."""
        return self._failed

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def open(self) -> None:
        """At start-up, in the event loop: open the trail, record `trail_opened`, start writing.

        Raises ConfigError (naming `audit.path`) when the trail cannot be opened.
        """
        detail = self._trail.open()
        self._trail.write([EventRecord(event="trail_opened", actor=SERVER_ACTOR,
                                       target=str(self.path), time=rfc3339(self._clock()),
                                       detail=detail)])
        self._trail.fsync()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def emit(self, record: Record) -> bool:
        """Queue without waiting; False when the trail cannot take it."""
        return self._offer(record, None)

    async def commit(self, record: Record) -> bool:
        if not self.durable_before_answer:
            return self._offer(record, None)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self._offer(record, done):
            return False
        return await done

    def _offer(self, record: Record, done: asyncio.Future[bool] | None) -> bool:
        if self._failed or self._closing or self._task is None:
            return False
        try:
            self._queue.put_nowait((record, done))
        except asyncio.QueueFull:
            return False
        return True

    async def close(self) -> None:
        """Write everything queued, then a final checkpoint; fsync; close."""
        if self._task is None:
            return
        self._closing = True
        await self._queue.put(None)
        await self._task
        self._task = None

    # --- the writer task -----------------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = await self._next(self._trail.due() if not self._failed else None)
            except TimeoutError:
                await self._guard(self._trail.housekeep)
                continue
            batch: list[_Item] = []
            item = first
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            stopping = item is None
            if batch:
                await self._write(batch)
        if self._failed:
            self._trail.close()  # releases the lock; the descriptors are already closed
        else:
            await self._guard(self._trail.close)

    async def _next(self, timeout: float | None) -> _Item | None:
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _write(self, batch: list[_Item]) -> None:
        ok = not self._failed and await self._guard(self._trail.write, [r for r, _ in batch])
        for _, done in batch:
            if done is not None and not done.done():
                done.set_result(ok)

    async def _guard(self, work: Callable[..., Any], *args: Any) -> bool:
        """Run `work` in the worker thread; on any failure, refuse from now on."""
        try:
            await asyncio.to_thread(work, *args)
        except Exception as err:  # noqa: BLE001 - any failure to write is a refusal, never a pass
            self._fail(err)
            return False
        return True

    def _fail(self, err: Exception) -> None:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        self._failed = f"audit trail `{self.path}` failed: {type(err).__name__}: {detail}"
        log.error("%s; denying every check with audit_unavailable until restart", self._failed)
        self._trail.abandon()
