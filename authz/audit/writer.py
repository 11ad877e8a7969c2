"""The audit writer: the request path hands records over; a writer thread writes them.

    check path --put_nowait--> queue --writer thread: sign receipts, seal, write, fsync, answer

- `emit` never blocks and never touches the disk: one `put_nowait` on a C
  queue. `commit` is what the pipeline awaits (`commit_blocking` what a
  handler thread of the threaded front calls). With `audit.fsync = "always"` it
  returns once the record's batch is fsynced; with an interval it returns at
  once, the record queued and its receipt, if any, signed on the spot.
- Group commit (`always`): the writer thread takes everything queued (up to
  `MAX_BATCH`) as one batch and, for the batch, signs one Merkle root over its
  receipts (`receipts.py`), seals the records into the chain, writes them with
  one `write(2)` loop and fsyncs, then answers every waiting check. A batch
  gathers as `GroupCommit` says: at low load a check waits for its own fsync and
  nothing else; under load the writer commits about once per `GROUP_WINDOW`
  (1 ms), not once per record.
- With an interval nobody waits, and a batch gathers for `linger` =
  min(interval / 5, 10 ms) after its first record: waking a thread per record
  costs more than writing it.
- No loss, fail closed: a full queue, or any failure to sign, write, fsync or
  rotate, makes `commit` refuse, and the pipeline denies with
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
from typing import Any, NamedTuple, Protocol

from authz.audit.receipts import Unsigned
from authz.audit.records import Committed, EventRecord, Record
from authz.audit.trail import Trail, TrailOptions
from authz.codec import rfc3339

log = logging.getLogger(__name__)

MAX_BATCH = 512
MAX_LINGER = 0.010  # interval mode, nobody waiting: a record waits at most this long
GROUP_WINDOW = 0.001  # checks waiting for an fsync: under load, commit about once per window
EWMA_WEIGHT = 0.125  # of the newest sample in the arrival-gap and fsync-time averages
SERVER_ACTOR = "lasthop"

COMMITTED = Committed(True)
REFUSED = Committed(False)


class GroupCommit:
    """How long a batch that checks wait on may gather: the writer thread's own state.

    While records come slower than one per `window` (the mean gap between them),
    not at all: each waits for its own commit and nothing else. When they come
    faster, until the batch is `window` old less the time a commit (seal, write,
    fsync) takes, so the writer commits about once a window, not once a record.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self.gap = window * 10  # mean seconds between records, starting idle
        self.commit = 0.0  # mean seconds a commit takes
        self._last = 0.0

    def arrived(self, offered: float) -> None:
        gap = min(max(0.0, offered - self._last), 1.0)
        self._last = max(self._last, offered)
        self.gap += EWMA_WEIGHT * (gap - self.gap)

    def committed(self, seconds: float) -> None:
        self.commit += EWMA_WEIGHT * (seconds - self.commit)

    def linger(self) -> float:
        if self.gap >= self.window:
            return 0.0
        return max(0.0, self.window - self.commit)


class WriterObserver(Protocol):
    """What the writer reports per batch (metrics); called from the writer thread."""

    def audit_batch(self, records: int, commit_seconds: float) -> None: ...


class Waiter:
    """A thread waiting for its record's batch (`commit_blocking`)."""

    __slots__ = ("_lock", "result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.result = REFUSED

    def settle(self, result: Committed) -> None:
        self.result = result
        self._lock.release()

    def wait(self) -> Committed:
        self._lock.acquire()
        return self.result


class _Item(NamedTuple):
    record: Record
    receipt: Unsigned | None
    done: asyncio.Future[Committed] | Waiter | None  # None: nobody waits (emit, an interval)
    offered: float  # time.monotonic() when it was queued


class AuditLog:
    def __init__(
        self,
        path: Path,
        queue_size: int,
        options: TrailOptions | None = None,
        clock: Callable[[], float] = time.time,
        observer: WriterObserver | None = None,
    ) -> None:
        self.path = path
        self.options = options or TrailOptions()
        self.observer = observer
        self._trail = Trail(path, self.options, clock)
        self._clock = clock
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()  # C, cheap
        self._queue_size = queue_size
        self._failed = ""  # set by the writer thread; a str swap is atomic
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        # With an interval and nobody waiting, let a batch gather for a few ms: waking
        # the writer thread per record costs more CPU than writing it.
        interval = self.options.fsync_interval
        self.linger = min(interval / 5, MAX_LINGER) if interval else 0.0
        self._group = GroupCommit(GROUP_WINDOW)

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
        return self._offer(record, None, None)

    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        """Hand `record` over, as safe as `audit.fsync` promises, with `receipt` signed."""
        if not self.durable_before_answer:
            return self._queue_only(record, receipt)
        done: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        if not self._offer(record, receipt, done):
            return REFUSED
        return await done

    def commit_blocking(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        """`commit` for a thread that is not the event loop's: it blocks until answered."""
        if not self.durable_before_answer:
            return self._queue_only(record, receipt)
        waiter = Waiter()
        if not self._offer(record, receipt, waiter):
            return REFUSED
        return waiter.wait()

    def _queue_only(self, record: Record, receipt: Unsigned | None) -> Committed:
        """An interval: the record is queued and not waited for, so a receipt is signed here,
        alone (waiting for the writer to sign a batch costs more than the signature)."""
        try:
            signed = receipt.signer.sign([receipt])[0] if receipt is not None else ""
        except Exception:
            log.exception(
                "cannot sign a receipt; the check is refused",
                extra={"event": "audit.receipt_failed"},
            )
            return REFUSED
        return Committed(True, signed) if self._offer(record, None, None) else REFUSED

    def _offer(
        self,
        record: Record,
        receipt: Unsigned | None,
        done: asyncio.Future[Committed] | Waiter | None,
    ) -> bool:
        if self._failed or self._closing or self._thread is None:
            return False
        if self._queue.qsize() >= self._queue_size:  # with several producing threads, about
            return False
        self._queue.put_nowait(_Item(record, receipt, done, time.monotonic()))
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
            batch, stopping = self._gather(item)
            if batch:
                self._write(batch)
        if self._failed:
            self._trail.close()  # releases the lock; the descriptors are already closed
        else:
            self._guard(self._trail.close)

    def _gather(self, item: _Item | None) -> tuple[list[_Item], bool]:
        """The batch that starts with `item`, and whether shutdown was asked for."""
        batch: list[_Item] = []
        deadline, waiting = 0.0, False
        while item is not None:
            self._group.arrived(item.offered)
            batch.append(item)
            if len(batch) == 1 or (item.done is not None and not waiting):
                waiting = item.done is not None
                deadline = batch[0].offered + (self._group.linger() if waiting else self.linger)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return batch, False
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    return batch, False
        return batch, True

    def _write(self, batch: list[_Item]) -> None:
        receipts = self._sign([i.receipt for i in batch if i.receipt is not None])
        started = time.monotonic()
        ok = (
            receipts is not None
            and not self._failed
            and self._guard(self._trail.write, [i.record for i in batch])
        )
        elapsed = time.monotonic() - started
        self._group.committed(elapsed)
        if ok and self.observer is not None:
            self.observer.audit_batch(len(batch), elapsed)
        self._answer(batch, receipts if ok else None)

    def _sign(self, unsigned: list[Unsigned]) -> list[str] | None:
        """The batch's receipts under one signature; None (and refuse from now on) on failure."""
        if not unsigned or self._failed:
            return []
        try:
            return unsigned[0].signer.sign(unsigned)
        except Exception as err:  # noqa: BLE001 - a receipt that cannot be signed is a refusal
            self._fail(err)
            return None

    def _answer(self, batch: list[_Item], receipts: list[str] | None) -> None:
        """Settle every waiting check of the batch with one wake-up of its event loop."""
        signed = iter(receipts or ())
        answers: list[tuple[asyncio.Future[Committed], Committed]] = []
        for item in batch:
            if receipts is None:
                result = REFUSED
            elif item.receipt is not None:
                result = Committed(True, next(signed))
            else:
                result = COMMITTED
            if isinstance(item.done, Waiter):
                item.done.settle(result)
            elif item.done is not None:
                answers.append((item.done, result))
        if answers:
            # RuntimeError: the loop is gone, so nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                answers[0][0].get_loop().call_soon_threadsafe(_settle, answers)

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


def _settle(answers: list[tuple[asyncio.Future[Committed], Committed]]) -> None:
    for done, result in answers:
        if not done.done():
            done.set_result(result)
