"""A real trail, written by `lasthop serve` behind a real Envoy, tampered with six ways.

Each tampering must make `lasthop audit verify` exit non-zero and name the kind
and the line of the first broken record; the pristine trail exits 0.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.audit.chain import line, record_hash, signing_input
from authz.audit.signing import SigningKey
from authz.codec import b64url
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import RECORDS, run_cli, running_stack, unique

pytestmark = pytest.mark.integration

CHECKPOINT_EVERY = 8


@dataclass(frozen=True)
class Written:
    trail: Path
    anchors: Path
    jwks: Path
    served_jwks: dict[str, Any]
    decisions: int  # requests Lasthop decided


@pytest.fixture(scope="module")
def written(upstream: DemoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    keep = tmp_path_factory.mktemp("tamper")
    with running_stack(
        "lasthop-it-tamper-",
        use_redis=False,
        upstream=upstream,
        audit=f"checkpoint_records = {CHECKPOINT_EVERY}\n",
    ) as stack:
        user = unique("u-tamper")
        grant = stack.grant(user)
        allowed, no_grant = stack.token(user, ["scribe"]), stack.token(unique("u-x"), ["scribe"])
        statuses = [
            stack.get(RECORDS, token).status
            for _ in range(12)
            for token in (allowed, no_grant, None)
        ]
        assert statuses.count(200) == 12 and statuses.count(403) == 12, statuses
        stack.admin.revoke(grant.id)
        assert stack.get(RECORDS, allowed).status == 403
        metrics = stack.lasthop.ready["metrics_listen"]
        with urllib.request.urlopen(
            f"http://{metrics}/.well-known/lasthop-receipts.json", timeout=5
        ) as resp:
            served = json.loads(resp.read())
        assert stack.lasthop.close() == 0  # SIGTERM: a final checkpoint, fsync, close
        audit = stack.audit_path.parent
        for name in ("decisions.jsonl", "decisions.jsonl.checkpoints", "lasthop-receipts.json"):
            shutil.copy(audit / name, keep / name)
    yield Written(
        keep / "decisions.jsonl",
        keep / "decisions.jsonl.checkpoints",
        keep / "lasthop-receipts.json",
        served,
        decisions=37,
    )


@pytest.fixture
def copy(written: Written, tmp_path: Path) -> Path:
    for source in (written.trail, written.anchors):
        shutil.copy(source, tmp_path / source.name)
    return tmp_path / written.trail.name


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def save(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(line(r) for r in records))


def verify(path: Path, jwks: Path) -> tuple[int, str]:
    result = run_cli("audit", "verify", str(path), "--jwks", str(jwks))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def assert_broken(path: Path, jwks: Path, kind: str, line_number: int) -> str:
    code, out = verify(path, jwks)
    assert code == 1, out
    assert out.startswith(f"BROKEN: {path}:{line_number}: "), out
    assert f": {kind}: " in out.splitlines()[0], out
    return out


def index_of(records: list[dict[str, Any]], **match: Any) -> int:
    return next(i for i, r in enumerate(records) if all(r.get(k) == v for k, v in match.items()))


def test_the_real_trail_is_complete_and_verifies(written: Written) -> None:
    records = load(written.trail)
    decisions = [r for r in records if r["type"] == "decision"]
    assert len(decisions) == written.decisions
    assert {r["reason"] for r in decisions} == {"allowed", "no_grant", "missing_token"}
    events = [(r["event"], r["actor"]) for r in records if r["type"] == "event"]
    detected = [r["detail"]["kind"] for r in records if r.get("event") == "threat_detected"]
    assert [e for e in events if e[0] != "threat_detected"] == [
        ("trail_opened", "lasthop"),
        ("grant_issued", "ops-admin"),
        ("grant_revoked", "ops-admin"),
    ]
    # twelve no_grant denials of one token in a few seconds: the default probing alert
    assert detected == ["token_denials"]
    checkpoints = [r for r in records if r["type"] == "checkpoint"]
    assert len(checkpoints) >= 4 and checkpoints[-1]["trigger"] == "shutdown"
    assert load(written.anchors) == checkpoints
    assert json.loads(written.jwks.read_text()) == written.served_jwks
    code, out = verify(written.trail, written.jwks)
    assert code == 0, out
    assert out.startswith(f"ok: {len(records)} records, seq 1 to {len(records)}"), out


def test_flip_a_decision(copy: Path, written: Written) -> None:
    records = load(copy)
    index = index_of(records, decision="deny")
    records[index]["decision"], records[index]["status"] = "allow", 200
    save(copy, records)
    assert "does not match its hash" in assert_broken(copy, written.jwks, "edited", index + 1)


def test_delete_a_record(copy: Path, written: Written) -> None:
    records = load(copy)
    index = index_of(records, decision="allow")
    del records[index]
    save(copy, records)
    assert_broken(copy, written.jwks, "deleted", index + 1)


def test_swap_two_records(copy: Path, written: Written) -> None:
    records = load(copy)
    index = index_of(records, reason="no_grant")
    records[index], records[index + 1] = records[index + 1], records[index]
    save(copy, records)
    assert_broken(copy, written.jwks, "reordered", index + 1)


def test_insert_a_copy(copy: Path, written: Written) -> None:
    records = load(copy)
    index = index_of(records, decision="allow")
    records.insert(index + 5, dict(records[index]))
    save(copy, records)
    out = assert_broken(copy, written.jwks, "inserted", index + 6)
    assert f"a copy of the record at {copy}:{index + 1}" in out


def test_truncate_before_a_checkpoint(copy: Path, written: Written) -> None:
    records = load(copy)
    checkpoint = index_of(records, type="checkpoint", trigger="records")
    save(copy, records[: checkpoint - 2])
    out = assert_broken(copy, written.jwks, "truncated", checkpoint - 2)
    assert f"checkpoint seq {records[checkpoint]['seq']}" in out


def test_forge_a_checkpoint_signature(copy: Path, written: Written) -> None:
    records = load(copy)
    index = index_of(records, type="checkpoint")
    forged = records[index]
    forged["sig"] = b64url(SigningKey.generate().sign(signing_input(forged)))
    for i in range(index, len(records)):  # and re-link everything after it
        records[i]["prev"] = records[i - 1]["hash"]
        records[i]["hash"] = record_hash(records[i])
    save(copy, records)
    (copy.parent / "decisions.jsonl.checkpoints").unlink()  # the forger owns the anchors too
    assert_broken(copy, written.jwks, "bad_signature", index + 1)
