"""`lasthop audit verify|disclosures|keygen` and `lasthop receipt verify`, in process."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from authz.audit import disclosures
from authz.audit.receipts import ReceiptSigner
from authz.audit.signing import SigningKey, write_jwks
from authz.audit.trail import TrailOptions
from authz.audit.writer import AuditLog
from authz.cli.main import main
from tests.audit_helpers import allowed, decision, event


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


ACCESSES = [  # (decision id, time, decision, phi, user, agent, resource, parents)
    (
        "allow-1",
        "2026-03-01T09:00:00.000+00:00",
        "allow",
        True,
        "dr-alice",
        "scribe",
        'Records::"p-1001"',
        ['Patient::"p-1001"'],
    ),
    (
        "deny-1",
        "2026-03-01T09:01:00.000+00:00",
        "deny",
        True,
        "dr-alice",
        "scribe",
        'Records::"p-1001"',
        ['Patient::"p-1001"'],
    ),
    (
        "allow-2",
        "2026-03-02T09:00:00.000+00:00",
        "allow",
        True,
        "dr-alice",
        "med-reconciler",
        'Medications::"p-1002"',
        ['Patient::"p-1002"'],
    ),
    (
        "not-phi",
        "2026-03-02T10:00:00.000+00:00",
        "allow",
        False,
        "dr-alice",
        "scribe",
        'Formulary::"metformin"',
        [],
    ),
    (
        "bob-1",
        "2026-03-03T09:00:00.000+00:00",
        "allow",
        True,
        "bob",
        "billing-bot",
        'Claim::"c-1"',
        [],
    ),
    (
        "allow-3",
        "2026-03-04T23:59:59.000+00:00",
        "allow",
        True,
        "dr-alice",
        "scribe",
        'Patient::"p-1001"',
        [],
    ),
]


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> Path:
    path = tmp_path_factory.mktemp("cli") / "decisions.jsonl"
    write_jwks(path.with_name("lasthop-receipts.json"), key)

    async def write() -> None:
        log = AuditLog(
            path, 100, TrailOptions(key=key, anchors=path.with_name("decisions.jsonl.checkpoints"))
        )
        log.open()
        assert await log.commit(event(1))
        for did, time, verdict, phi, user, agent, resource, parents in ACCESSES:
            assert await log.commit(
                decision(
                    decision_id=did,
                    time=time,
                    decision=verdict,
                    phi=phi,
                    user=user,
                    agent=agent,
                    owner="bob" if user == "bob" else "dr-alice",
                    resource=resource,
                    parents=parents,
                    chain=[agent],
                )
            )
        await log.close()

    asyncio.run(write())
    return path


def jwks(trail: Path) -> str:
    return str(trail.with_name("lasthop-receipts.json"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- disclosures -------------------------------------------------------------------------------


def rows(trail: Path, **kwargs: Any) -> list[str]:
    found = disclosures.account(disclosures.read_records([trail]), **kwargs)
    return [r.decision_id for r in found]


def test_only_allowed_phi_accesses_are_disclosures(trail: Path) -> None:
    assert rows(trail, user="dr-alice") == ["allow-1", "allow-2", "allow-3"]
    assert rows(trail, user="bob") == ["bob-1"]
    assert rows(trail, patient="p-1001") == ["allow-1", "allow-3"]
    assert rows(trail, user="dr-alice", patient="p-1002") == ["allow-2"]
    window = disclosures.Window(
        disclosures.parse_day("2026-03-02"), disclosures.parse_day("2026-03-04", end=True)
    )
    assert rows(trail, user="dr-alice", window=window) == ["allow-2", "allow-3"]


def test_disclosures_command_formats(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "audit",
        "disclosures",
        "--user",
        "dr-alice",
        "--trail",
        str(trail),
        "--jwks",
        jwks(trail),
        "--output",
        "json",
    )
    assert code == 0
    data = json.loads(out)
    assert [r["decision_id"] for r in data] == ["allow-1", "allow-2", "allow-3"]
    assert data[1] == {
        "date": "2026-03-02T09:00:00.000+00:00",
        "recipient": "med-reconciler",
        "recipient_owner": "dr-alice",
        "description": 'read Medications::"p-1002"',
        "purpose": "clinical-documentation",
        "user": "dr-alice",
        "chain": "dr-alice -> med-reconciler",
        "grant_id": "g-1",
        "txn": "txn-0",
        "decision_id": "allow-2",
        "approved_by": "",  # a record from before grants said who approved them
        "break_glass": False,
    }

    code, out, _ = run(
        capsys,
        "audit",
        "disclosures",
        "--patient",
        "p-1001",
        "--trail",
        str(trail),
        "--output",
        "csv",
        "--until",
        "2026-03-03",
    )
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["decision_id"] for r in table] == ["allow-1"]

    code, out, err = run(
        capsys, "audit", "disclosures", "--user", "dr-alice", "--trail", str(trail)
    )
    assert code == 0 and "not checked" in err  # no --jwks: signatures are not checked
    assert out.startswith("# Accounting of disclosures: user dr-alice")
    assert '| scribe (owner dr-alice) | read Records::"p-1001" | clinical-documentation |' in out
    assert out.count("\n| 2026-") == 3


def test_disclosures_refuse_a_broken_trail(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "decisions.jsonl"
    copy.write_bytes(trail.read_bytes().replace(b'"decision":"deny"', b'"decision":"allow"'))
    code, _, err = run(capsys, "audit", "disclosures", "--user", "dr-alice", "--trail", str(copy))
    assert code == 1 and "does not verify" in err and "edited" in err


def test_disclosures_need_a_user_or_patient(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "audit", "disclosures", "--trail", str(trail))
    assert code == 2 and "--user" in err


def test_disclosures_read_the_configured_trail(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "lasthop.toml"
    cfg.write_text(f"[audit]\npath = {json.dumps(str(trail))}\n")
    code, out, _ = run(
        capsys, "audit", "disclosures", "--user", "bob", "--config", str(cfg), "--output", "json"
    )
    assert code == 0 and [r["decision_id"] for r in json.loads(out)] == ["bob-1"]


# --- verify ------------------------------------------------------------------------------------


def test_verify_exit_codes(trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "verify", str(trail), "--jwks", jwks(trail))
    assert code == 0 and out.startswith("ok: 9 records, seq 1 to 9")
    assert "anchors checked" in out

    broken = tmp_path / "decisions.jsonl"
    lines = trail.read_bytes().splitlines(keepends=True)
    broken.write_bytes(b"".join(lines[:3] + lines[4:]))
    code, out, _ = run(capsys, "audit", "verify", str(broken), "--jwks", jwks(trail))
    assert code == 1
    assert out.startswith(f"BROKEN: {broken}:4: seq 5: deleted: seq 4 to 4 are missing")
    assert '"decision_id":"allow-2"' in out.splitlines()[1]  # the record is shown

    code, _, err = run(capsys, "audit", "verify", str(trail))
    assert code == 2 and "--jwks" in err
    code, _, err = run(
        capsys, "audit", "verify", str(tmp_path / "nope.jsonl"), "--jwks", jwks(trail)
    )
    assert code == 3 and "no such file" in err  # not found


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "audit.pem"
    code, out, _ = run(capsys, "audit", "keygen", str(target))
    assert code == 0 and target.exists() and "kid" in out
    code, _, err = run(capsys, "audit", "keygen", str(target))
    assert code == 2 and "not overwriting" in err


# --- receipt verify ----------------------------------------------------------------------------


def test_receipt_verify(
    trail: Path,
    key: SigningKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receipt = ReceiptSigner(key, 60).mint(*allowed(3))
    code, out, _ = run(
        capsys,
        "receipt",
        "verify",
        receipt,
        "--jwks",
        jwks(trail),
        "--method",
        "GET",
        "--path",
        "/patients/p-1001/records",
    )
    assert code == 0 and out.startswith(
        f"valid: signed by {key.kid}; binding checked: method, path"
    )
    assert json.loads(out.split("\n", 1)[1])["jti"] == "d-3"

    code, out, _ = run(
        capsys,
        "receipt",
        "verify",
        receipt,
        "--jwks",
        jwks(trail),
        "--path",
        "/patients/p-1002/records",
    )
    assert code == 1 and out.startswith("INVALID: binding_mismatch")

    monkeypatch.setattr("sys.stdin", io.StringIO(receipt + "\n"))
    code, _, _ = run(capsys, "receipt", "verify", "-", "--jwks", jwks(trail))
    assert code == 0
