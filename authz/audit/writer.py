"""The audit writer: the request path hands records over; a writer thread writes them.

    check path --put_nowait--> bounded queue --writer thread: seal, write, fsync, checkpoint

- `emit` never blocks and never touches the disk or the event loop's
  scheduler: one `put_nowait` on a C queue. `commit` is what the pipeline awaits: with
  `audit.fsync = "always"` it returns once the record's batch is fsynced (group
  commit: one fsync covers every record that queued meanwhile); with an
  interval it returns at once.
- The writer thread takes everything queued (up to `MAX_BATCH`) as one batch,
  seals it into the chain, writes it with one `write(2)` loop, and fsyncs as the
  policy says; between batches it fsyncs or checkpoints when one is due. With an
  interval it lets a batch gather for `linger` = min(interval / 5, 10 ms) after
  the first record arrives (waking a thread per record costs more CPU than
  writing it); with `always` it writes at once.
- No loss, fail closed: a full queue, or any failure to write, fsync or
  rotate, makes `commit` return False, and the pipeline denies with
  `audit_unavailable`. After a failure the descriptor is abandoned, never
  fsynced again as though the data had reached the disk, and every later
  record is refused until Lasthop restarts (the restart repairs the tail);
  `wait_failed` returns then, so the server can report itself not serving.
- `close` (SIGTERM) writes everything queued, a final signed checkpoint,
  fsyncs and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz.audit.records import EventRecord, Record
from authz.audit.trail import Trail, TrailOptions
from authz.codec import rfc3339

log = logging.getLogger(__name__)

MAX_BATCH = 512
MAX_LINGER = 0.010  # interval mode: a record waits at most this long before write(2)
SERVER_ACTOR = "lasthop"

_Item = tuple[Record, "asyncio.Future[bool] | None"]


class AuditLog:
    def __init__(
        self,
        path: Path,
        queue_size: int,
        options: TrailOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.options = options or TrailOptions()
        self._trail = Trail(path, self.options, clock)
        self._clock = clock
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()  # C, cheap
        self._queue_size = queue_size
        self._failed = ""  # set by the writer thread; a str swap is atomic
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        # With an interval, let a batch gather for a few ms: waking the writer thread per
        # record costs more CPU than writing it. With `always`, a Check waits: no linger.
        interval = self.options.fsync_interval
        self.linger = min(interval / 5, MAX_LINGER) if interval else 0.0

    @property
    def durable_before_answer(self) -> bool:
        return self.options.fsync_interval == 0

    @property
    def failure(self) -> str:
        """Why the trail refuses records; empty while it works."""
        return self._failed

    async def wait_failed(self) -> str:
        """Return once the trail has failed for good (it refuses every record until restart);
        why it failed."""
        failed = asyncio.Event()
        self._watchers.append((asyncio.get_running_loop(), failed))
        if not self._failed:
            await failed.wait()
        return self._failed

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def open(self) -> None:
        """At start-up: open the trail, record `trail_opened`, start the writer thread.

        Raises ConfigError (naming `audit.path`) when the trail cannot be opened.
        """
        detail = self._trail.open()
        self._trail.write(
            [
                EventRecord(
                    event="trail_opened",
                    actor=SERVER_ACTOR,
                    target=str(self.path),
                    time=rfc3339(self._clock()),
                    detail=detail,
                )
            ]
        )
        self._trail.fsync()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

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
        if self._failed or self._closing or self._thread is None:
            return False
        if self._queue.qsize() >= self._queue_size:  # one producer: the event loop
            return False
        self._queue.put_nowait((record, done))
        return True

    async def close(self) -> None:
        """Write everything queued, then a final checkpoint; fsync; close."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._queue.put(None)
        await asyncio.to_thread(thread.join)
        self._thread = None

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=None if self._failed else self._trail.due())
            except queue.Empty:
                self._guard(self._trail.housekeep)
                continue
            if self.linger and item is not None:
                time.sleep(self.linger)
            batch: list[_Item] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stopping = item is None
            if batch:
                self._write(batch)
        if self._failed:
            self._trail.close()  # releases the lock; the descriptors are already closed
        else:
            self._guard(self._trail.close)

    def _write(self, batch: list[_Item]) -> None:
        ok = not self._failed and self._guard(self._trail.write, [r for r, _ in batch])
        waiting = [done for _, done in batch if done is not None]
        if waiting:
            # RuntimeError: the loop is gone, so nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                waiting[0].get_loop().call_soon_threadsafe(_settle, waiting, ok)

    def _guard(self, work: Callable[..., Any], *args: Any) -> bool:
        """Run `work`; on any failure, refuse from now on."""
        try:
            work(*args)
        except Exception as err:  # noqa: BLE001 - any failure to write is a refusal, never a pass
            self._fail(err)
            return False
        return True

    def _fail(self, err: Exception) -> None:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        self._failed = f"audit trail `{self.path}` failed: {type(err).__name__}: {detail}"
        log.error(
            "%s; denying every check with audit_unavailable until restart",
            self._failed,
            extra={"event": "audit.failed"},
        )
        self._trail.abandon()
        for loop, failed in self._watchers:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(failed.set)


def _settle(waiting: list[asyncio.Future[bool]], ok: bool) -> None:
    for done in waiting:
        if not done.done():
            done.set_result(ok)
