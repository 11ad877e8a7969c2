"""Helpers for the audit tests: sample records, a fake clock, a trail written in process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from authz.audit.records import AuditRecord, EventRecord
from authz.audit.signing import SigningKey
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog
from authz.model import Chain, CheckInput, Decision, Intent

PURPOSE = "clinical-documentation"


def decision(n: int = 0, **changes: Any) -> AuditRecord:
    base = AuditRecord(
        decision_id=f"d-{n}",
        time="2026-03-01T10:00:00.000+00:00",
        decision="allow",
        status=200,
        reason="allowed",
        user="dr-alice",
        chain=["orchestrator", "scribe"],
        agent="scribe",
        client_id="scribe",
        peer="",
        action="read",
        resource='Records::"p-1001"',
        method="GET",
        host="ehr.local",
        path="/patients/p-1001/records",
        purpose=PURPOSE,
        txn=f"txn-{n}",
        grant_id="g-1",
        policies=["scribe-read-records"],
        policy_version="abc",
        token_sha256="0" * 64,
        latency_ms=1.25,
        owner="dr-alice",
        phi=True,
        parents=['Patient::"p-1001"'],
    )
    return dataclasses.replace(base, **changes)


def allowed(
    n: int = 0, chain: tuple[str, ...] = ("orchestrator", "scribe"), body_sha256: str = ""
) -> tuple[Decision, CheckInput]:
    """An allowed decision and its request, as `decision(n)` records them: what a receipt binds."""
    made = Decision(
        decision_id=f"d-{n}",
        allowed=True,
        status=200,
        reason="allowed",
        detail="allowed",
        chain=Chain("dr-alice", chain),
        intent=Intent(PURPOSE, f"txn-{n}", "access-token"),
        policy_version="abc",
    )
    request = CheckInput(
        method="GET",
        path="/patients/p-1001/records",
        host="ehr.local",
        headers={},
        body_sha256=body_sha256,
    )
    return made, request


def event(n: int = 0) -> EventRecord:
    return EventRecord(
        event="grant_issued",
        actor="ops-admin",
        target=f"g-{n}",
        time="2026-03-01T10:00:00.000+00:00",
        detail={"agent": "scribe"},
    )


class FakeClock:
    def __init__(self, now: float = 1_772_359_200.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_trail(
    path: Path,
    key: SigningKey | None,
    records: int,
    *,
    checkpoint_records: int = 1000,
    rotate_bytes: int = 0,
    anchors: Path | None = None,
) -> None:
    """A trail of `records` decisions through the real writer (open, commit each, close)."""
    options = TrailOptions(
        key=key, checkpoint_records=checkpoint_records, rotate_bytes=rotate_bytes, anchors=anchors
    )

    async def main() -> None:
        log = AuditLog(path, queue_size=10_000, options=options)
        log.open()
        for n in range(records):
            assert await log.commit(decision(n, decision="allow" if n % 3 else "deny"))
        await log.close()

    asyncio.run(main())


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]
