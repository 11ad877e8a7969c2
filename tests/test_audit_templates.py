"""authz.audit.templates: a repeated decision's record, filled in from a template, is byte for
byte the record the whole-record encoder makes, so the chain and `audit verify` cannot tell."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from authz.audit import verify as audit_verify
from authz.audit.chain import Head
from authz.audit.records import AuditRecord, Repeat
from authz.audit.signing import SigningKey
from authz.audit.templates import Templates
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog
from tests.audit_helpers import decision, records

ODD = ["", "plain", 'quo"te', "back\\slash", "new\nline", "tab\t", "\x00\x1f\x7f", "caf\u00e9",
       "\u2028", "\U0001f600", "</script>", "x" * 600]  # fmt: skip


def odd_record(rng: random.Random) -> AuditRecord:
    def text() -> str:
        return rng.choice(ODD) + str(rng.randrange(10))

    return decision(
        rng.randrange(1000),
        user=text(),
        chain=[text() for _ in range(rng.randrange(5))],
        agent=text(),
        reason=text(),
        path=text(),
        txn=text(),
        status=rng.choice([200, 401, 403, 503]),
        policies=[text() for _ in range(rng.randrange(3))],
        shadow=[{"policy": text(), "effect": "forbid"} for _ in range(rng.randrange(2))],
        shadow_disagrees=rng.random() < 0.5,
        phi=rng.random() < 0.5,
        parents=[text()],
    )


def repeat_of(like: AuditRecord, rng: random.Random) -> Repeat:
    latency = rng.choice([0.0, 0.001, 0.5, 1.25, 12.345, 999.999, 123456.789])
    decision_id = rng.choice(ODD) + f"{rng.getrandbits(64):x}"
    trace_id = rng.choice(["", f"{rng.getrandbits(128):032x}"])
    return Repeat(like, decision_id, rng.choice(ODD), latency, rng.choice(ODD), trace_id)


def test_a_repeat_seals_to_the_same_bytes_as_its_whole_record() -> None:
    rng = random.Random(7)
    templates, by_template, whole = Templates(entries=8), Head(), Head()
    likes = [odd_record(rng) for _ in range(40)]
    for _ in range(2000):
        repeat = repeat_of(rng.choice(likes), rng)
        assert templates.seal(by_template, repeat) == whole.seal_line(repeat.to_dict())
        assert (by_template.seq, by_template.hash) == (whole.seq, whole.hash)


def test_a_repeat_is_the_record_of_its_own_check() -> None:
    like = decision(1)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    repeat = Repeat(like, "d-2", "2026-03-01T10:00:01.000+00:00", 0.25, "req-2", trace)
    expected: dict[str, Any] = {
        **like.to_dict(),
        "decision_id": "d-2",
        "time": "2026-03-01T10:00:01.000+00:00",
        "latency_ms": 0.25,
        "request_id": "req-2",
        "trace_id": trace,
    }
    assert repeat.to_dict() == expected
    assert repeat.record() == AuditRecord(**{k: v for k, v in expected.items() if k != "type"})


def test_a_non_finite_latency_is_refused_as_the_whole_record_encoder_refuses_it() -> None:
    with pytest.raises(ValueError):
        Templates().seal(Head(), Repeat(decision(1), "d", "t", float("nan"), "r", ""))


def test_a_trail_of_repeats_verifies(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "decisions.jsonl"
    like = decision(1)

    async def main() -> None:
        log = AuditLog(path, 1000, TrailOptions(key=key, checkpoint_records=50))
        log.open()
        assert await log.commit(like)
        for n in range(200):
            assert await log.commit(Repeat(like, f"d-r{n}", like.time, n / 8, f"req-{n}", ""))
        await log.close()

    asyncio.run(main())
    report = audit_verify.verify([path], {key.kid: key.private.public_key()})
    assert report.ok, report.problem
    written = [r for r in records(path) if r.get("type") == "decision"]
    assert [r["decision_id"] for r in written] == ["d-1"] + [f"d-r{n}" for n in range(200)]
    assert written[-1]["latency_ms"] == 199 / 8 and written[-1]["txn"] == like.txn
