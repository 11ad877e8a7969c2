"""The hash chain: canonical encoding, sealing a record into the chain, signed checkpoints.

Canonical encoding: JSON with keys sorted, no whitespace, every non-ASCII
character escaped as `\\uXXXX`, no NaN or infinity. A line in the trail is
exactly the canonical encoding of its record plus `\\n`; a line that is not
is an edited line.

Sealing gives a record three fields:

    seq    1 for the first record of a trail, then +1, never a gap
    prev   the previous record's `hash` (64 zeros before the first)
    hash   SHA-256, hex, of the canonical encoding of every other field

A checkpoint is a record of type `checkpoint` whose `sig` is an Ed25519
signature (base64url) over the canonical encoding of its other fields except
`hash`: it signs its own `seq` and `prev`, hence every record before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz.audit.records import CHECKPOINT
from authz.audit.signing import SigningKey, verify_signature
from authz.codec import b64url, b64url_decode

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "prev", "hash")


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of every field but `hash`."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def signing_input(record: Mapping[str, Any]) -> bytes:
    """What a checkpoint's `sig` covers: every field but `sig` and `hash`."""
    return canonical({k: v for k, v in record.items() if k not in ("sig", "hash")})


def line(record: Mapping[str, Any]) -> bytes:
    return canonical(record) + b"\n"


def sealed_line(record: Mapping[str, Any]) -> tuple[str, bytes]:
    """(hash, line) of a record without `hash`, encoding it once.

    Keys are sorted, so the canonical encoding is the members before `hash`,
    then `hash`, then the members after it: the halves are encoded once and
    joined with and without the `hash` member.
    """
    left = canonical({k: v for k, v in record.items() if k < "hash"})[1:-1]
    right = canonical({k: v for k, v in record.items() if k > "hash"})[1:-1]
    body = b"{" + b",".join(part for part in (left, right) if part) + b"}"
    digest = hashlib.sha256(body).hexdigest()
    member = b'"hash":"' + digest.encode("ascii") + b'"'
    return digest, b"{" + b",".join(part for part in (left, member, right) if part) + b"}\n"


@dataclass
class Head:
    """The last record of the chain: the next record gets `seq + 1` and `prev = hash`."""

    seq: int = 0
    hash: str = GENESIS

    def seal(self, body: Mapping[str, Any]) -> dict[str, Any]:
        record = {**body, "seq": self.seq + 1, "prev": self.hash}
        if record.get("type") == CHECKPOINT:
            raise ValueError("use checkpoint() to seal a checkpoint")
        return self._link(record)

    def seal_line(self, body: Mapping[str, Any]) -> bytes:
        """`line(self.seal(body))`, faster: the writer's per-record path."""
        if body.get("type") == CHECKPOINT or "hash" in body:
            raise ValueError("use checkpoint() to seal a checkpoint; `hash` is the chain's")
        digest, raw = sealed_line({**body, "seq": self.seq + 1, "prev": self.hash})
        self.seq, self.hash = self.seq + 1, digest
        return raw

    def checkpoint(self, key: SigningKey, time: str, trigger: str) -> dict[str, Any]:
        """A signed checkpoint of the chain as it stands."""
        record: dict[str, Any] = {
            "type": CHECKPOINT,
            "time": time,
            "kid": key.kid,
            "trigger": trigger,
            "seq": self.seq + 1,
            "prev": self.hash,
        }
        record["sig"] = b64url(key.sign(signing_input(record)))
        return self._link(record)

    def _link(self, record: dict[str, Any]) -> dict[str, Any]:
        record["hash"] = record_hash(record)
        self.seq, self.hash = record["seq"], record["hash"]
        return record


def checkpoint_signed(record: Mapping[str, Any], public: Ed25519PublicKey) -> bool:
    sig = record.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        signature = b64url_decode(sig)
    except ValueError:
        return False
    return verify_signature(public, signature, signing_input(record))
