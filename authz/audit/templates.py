"""Record templates: a record's canonical encoding made once, with a few members left open.

Identical checks repeat one decision (the decision cache), so their records
differ only in `decision_id`, `time`, `latency_ms`, `request_id` and
`trace_id`, and, once sealed, in `seq`, `prev` and `hash`. A template holds
the canonical encoding (`chain.py`) of every other member, in key order, and
fills the open ones per record: the line it makes is byte for byte the one
`chain.sealed_line` makes from the whole record (tests/test_audit_templates.py
holds it to that).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from authz.audit.chain import Head, canonical
from authz.audit.records import AuditRecord, Repeat
from authz.stores.cache import BoundedCache

TEMPLATES = 4096  # distinct repeated decisions whose templates the writer keeps

PER_CHECK = ("decision_id", "latency_ms", "request_id", "time", "trace_id")
PER_SEAL = ("prev", "seq")
_OPEN = (*PER_CHECK, *PER_SEAL)


class RecordTemplate:
    """The canonical encoding of `fixed` plus the open members, `hash` excluded."""

    def __init__(self, fixed: Mapping[str, Any]) -> None:
        names = sorted({*fixed, *_OPEN} - {"hash"})
        self._left = _compile([n for n in names if n < "hash"], fixed)
        self._right = _compile([n for n in names if n > "hash"], fixed)

    def sealed(self, values: Mapping[str, Any]) -> tuple[str, bytes]:
        """(hash, line) of the record with the open members set to `values`."""
        left, right = _fill(*self._left, values), _fill(*self._right, values)
        body = "{" + ",".join(part for part in (left, right) if part) + "}"
        digest = hashlib.sha256(body.encode("ascii")).hexdigest()
        member = f'"hash":"{digest}"'
        line = "{" + ",".join(part for part in (left, member, right) if part) + "}\n"
        return digest, line.encode("ascii")


Compiled = tuple[tuple[str, ...], tuple[str, ...]]


def _compile(names: list[str], fixed: Mapping[str, Any]) -> Compiled:
    """(text chunks, open names): the encoding is chunk 0, value 0, chunk 1, value 1, ..."""
    chunks, slots = [""], []
    for index, name in enumerate(names):
        separator = "," if index else ""
        if name in fixed:
            chunks[-1] += separator + canonical({name: fixed[name]}).decode("ascii")[1:-1]
        else:
            chunks[-1] += f"{separator}{encode_basestring_ascii(name)}:"
            slots.append(name)
            chunks.append("")
    return tuple(chunks), tuple(slots)


def _fill(chunks: tuple[str, ...], slots: tuple[str, ...], values: Mapping[str, Any]) -> str:
    out = [chunks[0]]
    for slot, chunk in zip(slots, chunks[1:], strict=True):
        out.append(_scalar(values[slot]))
        out.append(chunk)
    return "".join(out)


def _scalar(value: Any) -> str:
    """The canonical JSON of one open member's value."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)  # what json.dumps writes for a finite float
    return canonical(value).decode("ascii")  # booleans, anything else (NaN raises)


class Templates:
    """The templates of the decisions being repeated; the writer thread's alone."""

    def __init__(self, entries: int = TEMPLATES) -> None:
        # id(record) -> (the record, its template): the entry holds the record, so its id
        # is not reused while the entry lives, and `is` confirms it is the same record
        self._by_id: BoundedCache[int, tuple[AuditRecord, RecordTemplate]] = BoundedCache(entries)

    def seal(self, head: Head, repeat: Repeat) -> bytes:
        """`head.seal_line(repeat.to_dict())`, from the template of `repeat.like`."""
        digest, line = self._of(repeat.like).sealed(
            {
                "decision_id": repeat.decision_id,
                "time": repeat.time,
                "latency_ms": repeat.latency_ms,
                "request_id": repeat.request_id,
                "trace_id": repeat.trace_id,
                "seq": head.seq + 1,
                "prev": head.hash,
            }
        )
        head.seq, head.hash = head.seq + 1, digest
        return line

    def _of(self, like: AuditRecord) -> RecordTemplate:
        entry = self._by_id.get(id(like))
        if entry is None or entry[0] is not like:
            fixed = {k: v for k, v in like.to_dict().items() if k not in PER_CHECK}
            entry = (like, RecordTemplate(fixed))
            self._by_id.put(id(like), entry)
        return entry[1]
