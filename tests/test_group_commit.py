"""Group commit: checks that arrive together share one fsync and one receipt signature; a check
at low load waits for its own commit and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from authz.audit.receipts import ReceiptSigner, verify
from authz.audit.signing import SigningKey
from authz.audit.trail import TrailOptions
from authz.audit.writer import GROUP_WINDOW, AuditLog, GroupCommit
from tests.audit_helpers import allowed, decision, records
from tests.test_audit_log import Fsyncs, Gate


class Batches:
    """The writer's observer: records per batch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def audit_batch(self, records: int, commit_seconds: float) -> None:
        self.sizes.append(records)


def test_sparse_records_never_wait_for_company() -> None:
    group = GroupCommit(GROUP_WINDOW)
    for n in range(50):  # 200 a second: one every 5 ms
        group.arrived(n * 0.005)
        group.committed(0.0002)
    assert group.linger() == 0.0


def test_records_faster_than_the_window_gather_for_what_is_left_of_it() -> None:
    group = GroupCommit(GROUP_WINDOW)
    for n in range(200):  # 10,000 a second
        group.arrived(n * 0.0001)
        group.committed(0.0002)
    assert group.linger() == pytest.approx(GROUP_WINDOW - 0.0002, rel=0.05)
    group.committed(0.01)  # a slow disk: its own fsync already gathers the batch
    for _ in range(100):
        group.committed(0.01)
    assert group.linger() == 0.0


def test_checks_that_queue_behind_an_fsync_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches()
    path = tmp_path / "decisions.jsonl"

    async def main() -> list[bool]:
        log = AuditLog(path, 1000, TrailOptions(fsync_interval=0), observer=batches)
        log.open()
        gate = Gate(monkeypatch)  # the writer holds the first batch until the gate opens
        fsyncs = Fsyncs(monkeypatch)
        first = asyncio.ensure_future(log.commit(decision(0)))
        assert await asyncio.to_thread(gate.waiting.wait, 10)
        rest = [asyncio.ensure_future(log.commit(decision(n))) for n in range(1, 64)]
        await asyncio.sleep(0)  # every one queued while the disk is busy
        gate.opened.set()
        results = [bool(r) for r in await asyncio.gather(first, *rest)]
        assert len(fsyncs.calls) == 2  # the first batch, then the 63 that waited
        await log.close()
        return results

    assert asyncio.run(main()) == [True] * 64
    assert batches.sizes == [1, 63]
    assert len(records(path)) == 1 + 64  # trail_opened, then every check


def test_receipts_of_one_batch_share_one_signature_and_each_binds_its_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = SigningKey.generate()
    signer = ReceiptSigner(key, 60)

    async def main() -> list[str]:
        log = AuditLog(tmp_path / "decisions.jsonl", 1000, TrailOptions(fsync_interval=0))
        log.open()
        gate = Gate(monkeypatch)
        first = asyncio.ensure_future(log.commit(decision(0)))
        assert await asyncio.to_thread(gate.waiting.wait, 10)
        made = [allowed(n) for n in range(1, 9)]
        pending = [
            asyncio.ensure_future(log.commit(decision(n), signer.claims(*made[n - 1])))
            for n in range(1, 9)
        ]
        await asyncio.sleep(0)
        gate.opened.set()
        await first
        receipts = [(await p).receipt for p in pending]
        await log.close()
        return receipts

    receipts = asyncio.run(main())
    assert len({r.rsplit(".", 1)[1] for r in receipts}) == 1
    keys = {key.kid: key.private.public_key()}
    assert [verify(r, keys)["jti"] for r in receipts] == [f"d-{n}" for n in range(1, 9)]


def test_with_an_interval_a_receipt_is_signed_at_once_and_the_record_only_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "decisions.jsonl"
    key = SigningKey.generate()
    signer = ReceiptSigner(key, 60)

    async def main() -> None:
        log = AuditLog(path, 1000, TrailOptions(fsync_interval=10.0))
        log.open()
        gate = Gate(monkeypatch)  # the writer cannot write: nothing waits for it
        committed = await log.commit(decision(1), signer.claims(*allowed(1)))
        assert committed.ok and verify(committed.receipt, {key.kid: key.private.public_key()})
        assert len(records(path)) == 1  # only trail_opened: the record is still queued
        gate.opened.set()
        await log.close()

    asyncio.run(main())
    assert records(path)[1]["decision_id"] == "d-1"
