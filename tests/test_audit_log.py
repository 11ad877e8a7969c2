"""authz.audit.writer and trail: writing, reopening, repair, locking, rotation, fsync policy."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz.audit import files as audit_file
from authz.audit.chain import record_hash
from authz.audit.records import MemoryAudit, Record
from authz.audit.signing import SigningKey
from authz.audit.trail import Trail, TrailOptions
from authz.audit.verify import verify
from authz.audit.writer import MAX_BATCH, AuditLog
from authz.dev.tokens import DemoIssuer
from authz.errors import ConfigError
from authz.stores.embedded import EmbeddedGrantStore
from tests.audit_helpers import FakeClock, decision, event, read_lines, records, write_trail
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def keys_of(key: SigningKey) -> dict[str, Ed25519PublicKey]:
    return {key.kid: key.private.public_key()}


def test_records_are_chained_one_line_each(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "audit" / "decisions.jsonl"  # the directory is created
    anchors = tmp_path / "audit" / "decisions.jsonl.checkpoints"
    write_trail(path, key, 5, anchors=anchors)
    written = records(path)
    assert [r["type"] for r in written] == ["event"] + ["decision"] * 5 + ["checkpoint"]
    assert written[0]["event"] == "trail_opened"
    assert [r["seq"] for r in written] == list(range(1, 8))
    assert all(r["prev"] == p["hash"] for p, r in zip(written, written[1:], strict=False))
    assert all(record_hash(r) == r["hash"] for r in written)
    assert written[-1]["trigger"] == "shutdown"
    assert [r["decision_id"] for r in written[1:6]] == [f"d-{n}" for n in range(5)]
    assert records(anchors) == [written[-1]]
    assert verify([path], keys_of(key), [anchors]).ok


@pytest.mark.parametrize(
    "value",
    [
        "dr-alice\nforged: record",
        "a\r\nb",
        "line\u2028separator",
        'quote " and \\',
        "nul\x00",
        "caf\u00e9 \U0001f600",
        '{"seq":1}',
    ],
)
def test_claim_values_stay_on_one_ascii_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, queue_size=10)
        log.open()
        assert await log.commit(decision(user=value, chain=[value], purpose=value))
        await log.close()

    asyncio.run(main())
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2 and all(b < 0x80 for b in raw)
    assert records(path)[1]["user"] == value and records(path)[1]["chain"] == [value]
    assert verify([path], None).ok


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, queue_size=5000, options=TrailOptions(fsync_interval=0.05))
        log.open()
        for n in range(3 * MAX_BATCH):  # more than one batch
            assert log.emit(decision(n))
        await log.close()

    asyncio.run(main())
    ids = [r["decision_id"] for r in records(path) if r["type"] == "decision"]
    assert ids == [f"d-{n}" for n in range(3 * MAX_BATCH)]


def test_reopening_continues_the_chain(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, key, 2)
    first_run = records(path)
    write_trail(path, key, 2)
    both = records(path)
    opened = both[len(first_run)]
    assert opened["event"] == "trail_opened"
    assert opened["prev"] == first_run[-1]["hash"] and opened["seq"] == first_run[-1]["seq"] + 1
    assert opened["detail"] == {"previous_end": "checkpoint:shutdown", "seq": first_run[-1]["seq"]}
    assert verify([path], keys_of(key)).ok


def test_a_record_cut_short_by_a_crash_is_dropped_and_reported(
    tmp_path: Path, key: SigningKey
) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, key, 2)
    intact = path.read_bytes()
    with path.open("ab") as file:
        file.write(b'{"decision":"allow","decision_id":"d-cut')  # no newline: a torn write
    report = verify([path], keys_of(key))
    assert report.ok and "cut short" in report.notes[0]
    write_trail(path, key, 1)
    assert path.read_bytes().startswith(intact)
    opened = records(path)[len(read_lines_of(intact))]
    assert opened["detail"]["dropped_bytes"] == len(b'{"decision":"allow","decision_id":"d-cut')
    assert verify([path], keys_of(key)).ok


def read_lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_a_damaged_last_record_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, None, 2)
    path.write_bytes(path.read_bytes().replace(b'"decision":"allow"', b'"decision":"deny!"'))
    with pytest.raises(ConfigError, match=r"`audit.path`.*does not verify"):
        AuditLog(path, 10).open()
    # the lock was released: a fixed trail opens
    path.write_bytes(path.read_bytes().replace(b'"decision":"deny!"', b'"decision":"allow"'))

    async def reopen() -> None:
        log = AuditLog(path, 10)
        log.open()
        await log.close()

    asyncio.run(reopen())


def test_two_writers_never_share_a_trail(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        first = AuditLog(path, 10)
        first.open()
        with pytest.raises(ConfigError, match="in use by another Lasthop process"):
            AuditLog(path, 10).open()
        await first.close()

    asyncio.run(main())


def test_an_unusable_directory_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file, not a directory")
    with pytest.raises(ConfigError, match=r"`audit.path`: cannot open the audit trail"):
        AuditLog(blocker / "decisions.jsonl", 10).open()


def test_rotation_continues_the_chain_across_files(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, key, 40, rotate_bytes=4096)
    rotated = audit_file.rotated_files(path)
    assert len(rotated) >= 3
    files = [*rotated, path]
    for older, newer in zip(files, files[1:], strict=False):
        last, first = records(older)[-1], records(newer)[0]
        assert last["type"] == "checkpoint" and last["trigger"] == "rotation"
        assert (first["seq"], first["prev"]) == (last["seq"] + 1, last["hash"])
        assert newer == path or newer.name == f"decisions.jsonl.{first['seq']:012d}"
    assert verify(files, keys_of(key)).ok
    os.remove(rotated[1])
    problem = verify([*rotated[:1], *rotated[2:], path], keys_of(key)).problem
    assert problem is not None and problem.kind == "deleted"


def test_reopening_after_a_crash_mid_rotation(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, key, 10)
    before = records(path)
    os.rename(path, audit_file.rotated_name(path, 1))  # renamed, new live file not yet made
    write_trail(path, key, 1)
    assert records(path)[0]["seq"] == before[-1]["seq"] + 1
    assert verify(audit_file.trail_files(path), keys_of(key)).ok


# --- the fsync policy, with a fake clock ------------------------------------------------------


class Fsyncs:
    """Counts fsyncs per descriptor; optionally fails them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> None:
        self.calls: list[int] = []
        self.fail = fail
        real = os.fsync

        def fsync(fd: int) -> None:
            self.calls.append(fd)
            if self.fail is not None:
                raise self.fail
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def test_interval_fsync_happens_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(1000.0)  # binary-exact steps below: no rounding at the boundary
    trail = Trail(tmp_path / "decisions.jsonl", TrailOptions(fsync_interval=0.5), clock)
    trail.open()
    fsyncs = Fsyncs(monkeypatch)
    trail.write([decision(1)])
    assert fsyncs.calls == [] and trail.due() == 0.5
    clock.now += 0.25
    trail.write([decision(2)])  # not due yet: the first unsynced write was 250 ms ago
    assert fsyncs.calls == [] and trail.due() == 0.25
    clock.now += 0.25
    trail.housekeep()
    assert len(fsyncs.calls) == 1 and trail.due() is None
    clock.now += 10
    trail.write([decision(3)])
    assert len(fsyncs.calls) == 1  # the interval runs from this write
    clock.now += 0.5
    trail.write([decision(4)])
    assert len(fsyncs.calls) == 2
    trail.close()


def test_always_fsyncs_every_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = Trail(tmp_path / "decisions.jsonl", TrailOptions(fsync_interval=0), FakeClock())
    trail.open()
    fsyncs = Fsyncs(monkeypatch)
    trail.write([decision(1), decision(2)])
    trail.write([decision(3)])
    assert len(fsyncs.calls) == 2
    trail.close()


def test_checkpoints_by_count_and_by_time(tmp_path: Path, key: SigningKey) -> None:
    clock = FakeClock()
    path = tmp_path / "decisions.jsonl"
    trail = Trail(path, TrailOptions(key=key, checkpoint_records=3, checkpoint_seconds=60), clock)
    trail.open()
    trail.write([decision(1), decision(2)])
    trail.write([decision(3)])
    assert records(path)[-1]["trigger"] == "records"
    trail.write([decision(4)])
    assert trail.due() == pytest.approx(60)
    clock.now += 60
    trail.housekeep()
    assert records(path)[-1]["trigger"] == "interval"
    assert trail.due() is None  # nothing new since: no checkpoint pending
    trail.close()
    assert [r.get("trigger") for r in records(path) if r["type"] == "checkpoint"] == [
        "records",
        "interval",
        "shutdown",
    ]


def test_commit_with_fsync_always_returns_after_the_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "decisions.jsonl"
    synced_sizes: list[int] = []

    async def main() -> None:
        log = AuditLog(path, 10, TrailOptions(fsync_interval=0))
        log.open()
        real = os.fsync

        def fsync(fd: int) -> None:
            real(fd)
            synced_sizes.append(os.fstat(fd).st_size)

        monkeypatch.setattr(os, "fsync", fsync)
        assert await log.commit(decision(1))
        size_after = path.stat().st_size
        assert synced_sizes and synced_sizes[-1] == size_after  # the record was in that fsync
        await log.close()

    asyncio.run(main())


class Gate:
    """From now on the writer thread waits at each write until `opened` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = threading.Event()
        self.waiting = threading.Event()  # the writer holds a batch and waits
        real = Trail.write

        def write(trail: Trail, batch: list[Record]) -> None:
            self.waiting.set()
            assert self.opened.wait(10), "the test never opened the gate"
            real(trail, batch)

        monkeypatch.setattr(Trail, "write", write)


def blocked_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    return Gate(monkeypatch).opened


def test_commit_with_an_interval_returns_before_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, 10, TrailOptions(fsync_interval=0.05))
        log.open()
        gate = blocked_writes(monkeypatch)
        size = path.stat().st_size
        assert await log.commit(decision(1))  # returns although the writer cannot write
        assert path.stat().st_size == size
        gate.set()
        await log.close()

    asyncio.run(main())
    assert records(path)[1]["decision_id"] == "d-1"


# --- refusals -----------------------------------------------------------------------------------


def test_a_full_queue_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        log = AuditLog(
            tmp_path / "decisions.jsonl", queue_size=1, options=TrailOptions(fsync_interval=0.05)
        )
        log.open()
        gate = Gate(monkeypatch)
        assert log.emit(decision(0))
        assert await asyncio.to_thread(gate.waiting.wait, 10)  # the writer holds it, stuck
        assert log.emit(decision(1))  # the one place in the queue
        assert not log.emit(decision(2))
        assert not await log.commit(decision(3))
        gate.opened.set()
        await log.close()

    asyncio.run(main())


def test_refuses_before_open_and_after_close(tmp_path: Path) -> None:
    async def main() -> None:
        log = AuditLog(tmp_path / "decisions.jsonl", queue_size=10)
        assert not await log.commit(event())
        log.open()
        await log.close()
        assert not await log.commit(event())

    asyncio.run(main())


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        OSError(27, "File too large"),
        ValueError("closed file"),
    ],
    ids=["ENOSPC", "EFBIG", "ValueError"],
)
def test_a_write_failure_refuses_this_record_and_every_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, 100, TrailOptions(fsync_interval=0))
        log.open()
        assert await log.commit(decision(1))

        def fail(fd: int, data: object) -> int:
            raise error

        monkeypatch.setattr(os, "write", fail)
        assert not await log.commit(decision(2))
        monkeypatch.undo()  # the disk has room again: still refused until restart
        assert [(await log.commit(decision(n))).ok for n in range(3, 6)] == [False] * 3
        assert "failed" in log.failure
        await asyncio.wait_for(log.close(), 5)

    asyncio.run(main())
    assert [r.get("decision_id") for r in records(path)] == [None, "d-1"]


def test_an_fsync_failure_is_never_retried_on_that_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, 100, TrailOptions(fsync_interval=0, key=SigningKey.generate()))
        log.open()
        fsyncs = Fsyncs(monkeypatch, fail=OSError(5, "Input/output error"))
        assert not await log.commit(decision(1))
        fsyncs.fail = None  # fsync would now "succeed": it must not be asked
        assert not await log.commit(decision(2))
        await asyncio.wait_for(log.close(), 5)  # no shutdown checkpoint, no fsync
        assert len(fsyncs.calls) == 1

    asyncio.run(main())
    # The trail up to the failure still verifies; what fsync lost is unknown, never assumed.
    assert verify([path], None).ok


def test_a_failed_rotation_refuses(tmp_path: Path, key: SigningKey) -> None:
    audit_dir = tmp_path / "audit"
    path = audit_dir / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, 100, TrailOptions(fsync_interval=0, rotate_bytes=2048, key=key))
        log.open()
        assert await log.commit(decision(1))
        audit_dir.rename(tmp_path / "moved")  # the directory is gone ...
        audit_dir.write_text("and a file took its place")
        results = [(await log.commit(decision(n))).ok for n in range(2, 12)]
        assert False in results
        failed_at = results.index(False)
        assert results[failed_at:] == [False] * (len(results) - failed_at)
        await log.close()

    asyncio.run(main())


def test_record_lines_are_canonical_even_for_read_lines(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, None, 1)
    assert all(line.endswith(b"\n") for line in read_lines(path))


# --- through the pipeline ---------------------------------------------------------------------


class RefusingAudit(MemoryAudit):
    def emit(self, record: Record) -> bool:
        super().emit(record)
        return False


def test_no_record_no_allow(
    make_pipeline: PipelineFactory, issuer: DemoIssuer, clock: Clock
) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    assert asyncio.run(make_pipeline(store=store).check(check_input(token))).allowed
    refusing = RefusingAudit()
    pipeline = make_pipeline(store=store, audit=refusing)
    allowed = asyncio.run(pipeline.check(check_input(token)))
    denied = asyncio.run(pipeline.check(check_input(None)))
    for decision_ in (allowed, denied):
        assert (decision_.allowed, decision_.status, decision_.reason) == (
            False,
            503,
            "audit_unavailable",
        )
        assert decision_.receipt == ""
    assert [r.decision for r in refusing.records] == ["allow", "deny"]  # type: ignore[union-attr]
