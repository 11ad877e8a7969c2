"""authz.audit.verify: every kind of tampering is detected, named and located.

The trail here is written by the real writer (tests.audit_helpers.write_trail);
tests/integration/test_audit_tamper.py does the same to a trail written by a
real server behind Envoy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz.audit.chain import canonical, line, record_hash, signing_input
from authz.audit.files import rotated_files, trail_files
from authz.audit.signing import SigningKey
from authz.audit.verify import Problem, verify
from authz.codec import b64url
from tests.audit_helpers import read_lines, write_trail

RECORDS = 20  # + trail_opened, 4 checkpoints (every 5 records), 1 at shutdown


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def keys(key: SigningKey) -> dict[str, Ed25519PublicKey]:
    return {key.kid: key.private.public_key()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("trail")
    path, anchors = base / "decisions.jsonl", base / "decisions.jsonl.checkpoints"
    write_trail(path, key, RECORDS, checkpoint_records=5, anchors=anchors)
    return path, anchors


@pytest.fixture
def trail(tmp_path: Path, pristine: tuple[Path, Path]) -> tuple[Path, Path]:
    path, anchors = tmp_path / "decisions.jsonl", tmp_path / "decisions.jsonl.checkpoints"
    path.write_bytes(pristine[0].read_bytes())
    anchors.write_bytes(pristine[1].read_bytes())
    return path, anchors


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in read_lines(path)]


def save(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(line(r) for r in records))


def reseal(records: list[dict[str, Any]], start: int) -> None:
    """What someone without the key can do: recompute every link from `start` on."""
    for index in range(start, len(records)):
        if index:
            records[index]["prev"] = records[index - 1]["hash"]
        records[index]["hash"] = record_hash(records[index])


def problem(trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]) -> Problem:
    report = verify([trail[0]], keys, [trail[1]])
    assert report.problem is not None, "tampering went undetected"
    return report.problem


def first_index(records: list[dict[str, Any]], kind: str, after: int = 0) -> int:
    return next(i for i, r in enumerate(records) if r["type"] == kind and i > after)


def test_the_pristine_trail_verifies(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    report = verify([trail[0]], keys, [trail[1]])
    assert report.ok, report.problem
    assert report.records == len(load(trail[0])) and report.first_seq == 1
    assert report.checkpoints == 5 and report.last_checkpoint == report.last_seq
    assert report.notes == []


def test_flipped_decision(trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]) -> None:
    records = load(trail[0])
    index = first_index(records, "decision")
    assert records[index]["decision"] == "deny"
    records[index]["decision"] = "allow"
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("edited", index + 1)
    assert "does not match its hash" in found.message


def test_flipped_decision_with_its_hash_recomputed(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    records[3]["decision"] = "deny" if records[3]["decision"] == "allow" else "allow"
    records[3]["hash"] = record_hash(records[3])
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line, found.seq) == ("edited", 4, 4)
    assert "hash recomputed" in found.message


def test_deleted_record(trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]) -> None:
    records = load(trail[0])
    del records[4]
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line, found.seq) == ("deleted", 5, 6)
    assert "seq 5 to 5 are missing" in found.message


@pytest.mark.parametrize("distance", [1, 4])
def test_swapped_records(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey], distance: int
) -> None:
    records = load(trail[0])
    records[8], records[8 + distance] = records[8 + distance], records[8]
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("reordered", 9)
    assert f"seq 9 should come here, but it is at {trail[0]}:{9 + distance}" in found.message


def test_swapped_last_two_records(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    records[-1], records[-2] = records[-2], records[-1]
    save(trail[0], records)
    assert problem(trail, keys).kind == "reordered"


def test_inserted_copy_after_the_original(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    records.insert(10, dict(records[6]))
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("inserted", 11)
    assert f"a copy of the record at {trail[0]}:7" in found.message


def test_inserted_copy_before_the_original(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    records.insert(6, dict(records[12]))
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("inserted", 7)


def test_inserted_forgery_that_chains_correctly(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    forged = {
        **records[7],
        "decision_id": "d-forged",
        "seq": records[6]["seq"] + 1,
        "prev": records[6]["hash"],
    }
    forged["hash"] = record_hash(forged)
    records.insert(7, forged)
    save(trail[0], records)
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("inserted", 8)
    assert f"the genuine seq 8 is at {trail[0]}:9" in found.message


def test_truncated_before_a_checkpoint(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    cut = first_index(records, "checkpoint", after=10)  # drop it and everything after
    save(trail[0], records[: cut - 1])
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("truncated", cut - 1)
    assert f"checkpoint seq {records[cut]['seq']}" in found.message
    # Without the anchors file only a cut short line would show: the chain itself is intact.
    assert verify([trail[0]], keys).ok


def test_forged_checkpoint_signature(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey], key: SigningKey
) -> None:
    records = load(trail[0])
    index = first_index(records, "checkpoint", after=5)
    forger = SigningKey.generate()  # same kid, another key
    records[index]["sig"] = b64url(forger.sign(signing_input(records[index])))
    reseal(records, index)
    save(trail[0], records)
    report = verify([trail[0]], keys)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.where and report.problem.where.line) == (
        "bad_signature",
        index + 1,
    )


def test_rewriting_with_every_hash_recomputed_fails_at_the_next_checkpoint(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    records = load(trail[0])
    records[2]["decision"] = "allow" if records[2]["decision"] == "deny" else "deny"
    reseal(records, 2)
    save(trail[0], records)
    found = problem(trail, keys)
    assert found.kind == "bad_signature"
    assert found.where and found.where.line == first_index(records, "checkpoint") + 1


def test_unknown_signing_key(trail: tuple[Path, Path]) -> None:
    other = SigningKey.generate()
    found = problem(trail, {other.kid: other.private.public_key()})
    assert found.kind == "unknown_key"


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw.replace(b'","', b'", "', 1),  # re-encoded: not canonical
        lambda raw: b"not json at all\n",
        lambda raw: b"[1, 2]\n",
        lambda raw: raw.replace(b'"seq":', b'"sequence":'),
    ],
    ids=["re-encoded", "garbage", "not-an-object", "no-seq"],
)
def test_edited_lines(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey], edit: Any
) -> None:
    lines = read_lines(trail[0])
    lines[5] = edit(lines[5])
    trail[0].write_bytes(b"".join(lines))
    found = problem(trail, keys)
    assert (found.kind, found.where and found.where.line) == ("edited", 6)


def test_a_torn_last_line_is_a_note_not_a_failure(
    trail: tuple[Path, Path], keys: dict[str, Ed25519PublicKey]
) -> None:
    with trail[0].open("ab") as file:
        file.write(b'{"decision":"al')
    report = verify([trail[0]], keys, [trail[1]])
    assert report.ok and len(report.notes) == 1 and "cut short" in report.notes[0]


def test_an_empty_trail_does_not_verify(tmp_path: Path) -> None:
    empty = tmp_path / "decisions.jsonl"
    empty.write_bytes(b"")
    report = verify([empty], None)
    assert report.problem is not None and report.problem.kind == "empty"


def test_rotated_files_in_any_order_and_partial_trails(
    tmp_path: Path, key: SigningKey, keys: dict[str, Ed25519PublicKey]
) -> None:
    path = tmp_path / "decisions.jsonl"
    write_trail(path, key, 30, rotate_bytes=4096)
    files = trail_files(path)
    assert len(files) >= 3
    assert verify(list(reversed(files)), keys).ok  # ordered by their first seq
    later = files[1:]
    found = verify(later, keys).problem
    assert found is not None and found.kind == "deleted" and "--partial" in found.message
    assert verify(later, keys, partial=True).ok
    # a cut-short line at the end of a file the trail goes on from is a truncation
    first = rotated_files(path)[0]
    first.write_bytes(first.read_bytes()[:-10])
    found = verify(files, keys).problem
    assert found is not None and found.kind == "truncated"


def test_canonical_form_is_what_verify_checks(trail: tuple[Path, Path]) -> None:
    first = read_lines(trail[0])[0]
    assert canonical(json.loads(first)) + b"\n" == first
