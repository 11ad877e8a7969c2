"""authz.audit.AuditLog: one JSON line per record, flush on close, refusal when it cannot write."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from authz.audit import AuditLog, AuditRecord
from authz.demo_tokens import DemoIssuer
from authz.grants import EmbeddedGrantStore
from tests.conftest import PURPOSE, Clock, PipelineFactory, check_input, grant


def record(n: int = 0, **changes: Any) -> AuditRecord:
    base = AuditRecord(
        decision_id=f"d-{n}", time="2026-01-01T00:00:00.000+00:00", decision="allow",
        status=200, reason="allowed", user="dr-alice", chain=["orchestrator", "scribe"],
        agent="scribe", client_id="scribe", peer="", action="read",
        resource='Records::"p-1001"', method="GET", host="ehr.local",
        path="/patients/p-1001/records", purpose=PURPOSE, txn="txn-1", grant_id="g-1",
        policies=["scribe-read-records"], policy_version="abc", token_sha256="0" * 64,
        latency_ms=1.25,
    )
    return dataclasses.replace(base, **changes)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="ascii").split("\n")[:-1]


def test_records_written_one_json_line_each(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "decisions.jsonl"  # the directory is created
    records = [record(i) for i in range(3)]

    async def main() -> None:
        log = AuditLog(path, queue_size=10)
        log.open()
        assert all(log.emit(r) for r in records)
        await log.close()

    asyncio.run(main())
    written = lines(path)
    assert len(written) == 3
    assert [json.loads(line) for line in written] == [dataclasses.asdict(r) for r in records]
    assert path.read_text().endswith("\n")


@pytest.mark.parametrize("value", [
    "dr-alice\nforged: record", "a\r\nb", "line\u2028separator", "para\u2029graph",
    'quote " and \\ backslash', "tab\there", "nul\x00byte", "caf\u00e9 \U0001f600", "{\"x\":1}",
])
def test_claim_values_stay_on_one_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "decisions.jsonl"
    rec = record(user=value, purpose=value, txn=value, chain=[value], path=value)

    async def main() -> None:
        log = AuditLog(path, queue_size=10)
        log.open()
        assert log.emit(rec)
        assert log.emit(record(1))
        await log.close()

    asyncio.run(main())
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2
    assert all(b < 0x80 for b in raw)  # every non-ASCII character is escaped
    assert "\u2028".encode() not in raw and "\u2029".encode() not in raw
    first, second = lines(path)
    assert json.loads(first)["user"] == value
    assert json.loads(first)["chain"] == [value]
    assert json.loads(second)["decision_id"] == "d-1"


def test_close_flushes_everything_enqueued(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, queue_size=5000)
        log.open()
        for i in range(2000):  # more than one batch, never yielding to the writer
            assert log.emit(record(i))
        assert log.depth == 2000
        await log.close()

    asyncio.run(main())
    assert [json.loads(line)["decision_id"] for line in lines(path)] == [
        f"d-{i}" for i in range(2000)]


def test_reopening_appends(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"

    async def write(n: int) -> None:
        log = AuditLog(path, queue_size=10)
        log.open()
        log.emit(record(n))
        await log.close()

    asyncio.run(write(1))
    asyncio.run(write(2))
    assert [json.loads(line)["decision_id"] for line in lines(path)] == ["d-1", "d-2"]


def test_emit_refuses_when_the_queue_is_full(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, queue_size=1)
        log.open()  # the writer task has not run yet: nothing drains the queue
        assert log.emit(record(1)) is True
        assert log.emit(record(2)) is False
        assert log.emit(record(3)) is False
        await log.close()

    asyncio.run(main())
    assert [json.loads(line)["decision_id"] for line in lines(path)] == ["d-1"]


def test_emit_accepts_again_once_the_writer_drains(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        log = AuditLog(path, queue_size=1)
        log.open()
        assert log.emit(record(1))
        assert not log.emit(record(2))
        for _ in range(100):
            if log.depth == 0:
                break
            await asyncio.sleep(0.01)
        assert log.emit(record(3))
        await log.close()

    asyncio.run(main())
    assert [json.loads(line)["decision_id"] for line in lines(path)] == ["d-1", "d-3"]


async def wait_until_refused(log: AuditLog) -> None:
    for _ in range(100):
        if not log.emit(record(99)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("emit kept accepting records after the write failed")


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   ValueError("I/O operation on closed file")],
                         ids=["OSError", "ValueError"])
def test_emit_refuses_after_a_write_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            error: Exception) -> None:
    path = tmp_path / "decisions.jsonl"

    def failing(self: AuditLog, text: str) -> None:
        raise error

    monkeypatch.setattr(AuditLog, "_write_sync", failing)

    async def main() -> None:
        log = AuditLog(path, queue_size=100)
        log.open()
        try:
            assert log.emit(record(1))
            await asyncio.wait_for(wait_until_refused(log), 2)
            assert [log.emit(record(i)) for i in range(5)] == [False] * 5
            await asyncio.wait_for(log.close(), 2)  # and close() does not hang
        finally:
            if log._file is not None and not log._file.closed:  # only when the test failed
                log._file.close()

    asyncio.run(main())
    assert path.read_text() == ""


def test_open_fails_when_the_directory_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("not a directory")

    async def main() -> None:
        log = AuditLog(blocker / "decisions.jsonl", queue_size=10)
        with pytest.raises(OSError):
            log.open()
        await log.close()

    asyncio.run(main())


# --- through the pipeline ---------------------------------------------------------------------


class RefusingAudit:
    def __init__(self) -> None:
        self.offered: list[AuditRecord] = []

    def emit(self, rec: AuditRecord) -> bool:
        self.offered.append(rec)
        return False


def test_allowed_request_becomes_503_when_audit_refuses(make_pipeline: PipelineFactory,
                                                        issuer: DemoIssuer,
                                                        clock: Clock) -> None:
    store = EmbeddedGrantStore(clock)
    asyncio.run(store.put(grant(now=clock.now)))
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)

    # the same request is allowed when the audit trail takes the record
    assert asyncio.run(make_pipeline(store=store).check(check_input(token))).allowed

    sink = RefusingAudit()
    decision = asyncio.run(make_pipeline(store=store, audit=sink).check(check_input(token)))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503,
                                                                   "audit_unavailable")
    assert len(sink.offered) == 1
    assert sink.offered[0].decision == "allow"  # the record it could not take
    assert sink.offered[0].decision_id == decision.decision_id


def test_denied_request_also_becomes_audit_unavailable(make_pipeline: PipelineFactory,
                                                       issuer: DemoIssuer) -> None:
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    decision = asyncio.run(make_pipeline(audit=RefusingAudit()).check(check_input(token)))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503,
                                                                   "audit_unavailable")


def test_pipeline_with_a_full_audit_log(make_pipeline: PipelineFactory, issuer: DemoIssuer,
                                        clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)

    async def main() -> None:
        store = EmbeddedGrantStore(clock)
        await store.put(grant(now=clock.now))
        log = AuditLog(path, queue_size=1)
        pipeline = make_pipeline(store=store, audit=log)
        # The writer is not started yet, so nothing drains the queue between checks
        # (a check may yield to the event loop, e.g. for registry lookups).
        first = await pipeline.check(check_input(token))   # takes the only slot
        second = await pipeline.check(check_input(token))  # the queue is full
        assert first.allowed
        assert (second.allowed, second.reason) == (False, "audit_unavailable")
        log.open()
        await log.close()

    asyncio.run(main())
    written = [json.loads(line) for line in lines(path)]
    assert [r["decision"] for r in written] == ["allow"]
    assert token not in path.read_text()  # only its digest
    assert len(written[0]["token_sha256"]) == 64
