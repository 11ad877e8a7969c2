"""authz.audit.chain: canonical encoding, sealing into the chain, signed checkpoints."""

from __future__ import annotations

import hashlib
import json

import pytest

from authz.audit.chain import (
    GENESIS,
    Head,
    canonical,
    checkpoint_signed,
    line,
    record_hash,
)
from authz.audit.signing import SigningKey
from tests.audit_helpers import decision


def test_canonical_is_sorted_compact_ascii() -> None:
    assert canonical({"b": 1, "a": ["é", "\n"]}) == b'{"a":["\\u00e9","\\n"],"b":1}'


def test_canonical_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical({"latency_ms": float("nan")})


def test_sealing_numbers_and_links_records() -> None:
    head = Head()
    first = head.seal(decision(1).to_dict())
    second = head.seal(decision(2).to_dict())
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    assert (head.seq, head.hash) == (2, second["hash"])
    body = {k: v for k, v in second.items() if k != "hash"}
    assert second["hash"] == hashlib.sha256(canonical(body)).hexdigest()


def test_every_field_is_covered_including_new_ones() -> None:
    sealed = Head().seal({**decision().to_dict(), "shadow": [{"policy": "p", "effect": "deny"}]})
    assert record_hash(sealed) == sealed["hash"]
    for name in sealed:
        if name == "hash":
            continue
        changed = {**sealed, name: "x" if sealed[name] != "x" else "y"}
        assert record_hash(changed) != sealed["hash"], name


def test_a_line_parses_back_to_the_same_canonical_bytes() -> None:
    sealed = Head().seal(decision(user="dr-\u00e9\n\u2028x", latency_ms=0.001).to_dict())
    raw = line(sealed)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert all(byte < 0x80 for byte in raw)
    assert canonical(json.loads(raw)) + b"\n" == raw


def test_the_hash_is_recomputable_from_the_line_bytes_alone() -> None:
    """The README's language-neutral recipe: drop the `hash` member and its comma, SHA-256."""
    key = SigningKey.generate()
    head = Head()
    lines = [
        head.seal_line(decision(latency_ms=0.0).to_dict()),
        line(head.checkpoint(key, "2026-03-01T10:00:00.000+00:00", "records")),
    ]
    for raw in lines:
        digest = json.loads(raw)["hash"]
        member = f'"hash":"{digest}"'.encode()
        body = raw.rstrip(b"\n").replace(member + b",", b"").replace(b"," + member, b"")
        assert hashlib.sha256(body).hexdigest() == digest


def test_checkpoint_signs_seq_and_prev() -> None:
    key = SigningKey.generate()
    head = Head()
    head.seal(decision().to_dict())
    checkpoint = head.checkpoint(key, "2026-03-01T10:00:00.000+00:00", "records")
    assert checkpoint["seq"] == 2 and checkpoint["kid"] == key.kid
    assert record_hash(checkpoint) == checkpoint["hash"]
    public = key.private.public_key()
    assert checkpoint_signed(checkpoint, public)
    assert not checkpoint_signed({**checkpoint, "prev": "1" * 64}, public)
    assert not checkpoint_signed({**checkpoint, "seq": 3}, public)
    assert not checkpoint_signed(checkpoint, SigningKey.generate().private.public_key())
    assert not checkpoint_signed({**checkpoint, "sig": "not base64 !"}, public)


def test_seal_refuses_an_unsigned_checkpoint() -> None:
    with pytest.raises(ValueError):
        Head().seal({"type": "checkpoint"})
