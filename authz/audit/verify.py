"""Verify an audit trail offline: every line, hash, sequence number and checkpoint signature.

Rules, applied record by record in sequence order, across rotated files:

    each line is the canonical encoding of a JSON object  else: edited
    its `hash` is the SHA-256 of its other fields         else: edited
    its `seq` is the previous one + 1 (1 at the start)    else: deleted, reordered, inserted
    its `prev` is the previous record's `hash`            else: edited (hash recomputed), inserted
    a checkpoint's `sig` verifies with the JWKS key `kid` else: bad_signature, unknown_key
    every checkpoint in the anchors file is in the trail  else: truncated (or edited)

The first rule that fails stops verification; the report names the file,
line and sequence number of the first broken record and what is wrong. A last
line cut short (no newline) at the very end of the trail is a crash during a
write, not tampering: it is reported as a note, and Lasthop drops it on start.

What each protection covers: the chain catches any change by someone who does
not recompute hashes; signed checkpoints catch a rewrite of anything before
them by someone without the key; the anchors file, kept elsewhere, catches a
truncation. Records after the last checkpoint are covered by the chain alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from authz.audit.chain import GENESIS, canonical, checkpoint_signed, record_hash
from authz.audit.records import CHECKPOINT

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SUFFIX = re.compile(r"\.(\d{12,})\Z")


@dataclass(frozen=True)
class Location:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    kind: str  # edited | deleted | reordered | inserted | bad_signature | unknown_key | truncated
    where: Location | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where else ""
        seq = f"seq {self.seq}: " if self.seq is not None else ""
        return f"{where}{seq}{self.kind}: {self.message}"


@dataclass
class Report:
    files: list[Path]
    records: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0
    kids: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class _Entry:
    where: Location
    raw: bytes
    last: bool  # the last line of the last file


@dataclass(frozen=True)
class _Link:
    where: Location
    seq: int
    hash: str
    prev: str


def order(files: Sequence[Path]) -> list[Path]:
    """Files in trail order: by the `seq` of their first record, else by rotated suffix."""

    def key(path: Path) -> tuple[float, str]:
        first = _first_seq(path)
        if first is None:
            match = _SUFFIX.search(path.name)
            first = int(match.group(1)) if match else None
        return (float(first) if first is not None else float("inf"), str(path))

    unique = {p.resolve(): p for p in files}
    return sorted(unique.values(), key=key)


def verify(
    files: Sequence[Path],
    keys: Mapping[str, Ed25519PublicKey] | None,
    anchors: Sequence[Path] = (),
    partial: bool = False,
) -> Report:
    """Verify the trail made of `files`. `keys` None: signatures are not checked (noted).

    `partial`: the files may start anywhere in the trail (earlier files archived).
    """
    ordered = order(files)
    report = Report(files=ordered)
    checker = _Checker(ordered, keys, report, partial)
    checker.run()
    if report.ok:
        checker.check_anchors(anchors)
    if keys is None:
        report.notes.append("checkpoint signatures were not checked: no JWKS given")
    return report


class _Checker:
    def __init__(
        self,
        files: list[Path],
        keys: Mapping[str, Ed25519PublicKey] | None,
        report: Report,
        partial: bool,
    ) -> None:
        self.files = files
        self.keys = keys
        self.report = report
        self.expected: int | None = None if partial else 1
        self.prev_hash = GENESIS
        self.prev_where: Location | None = None
        self.checkpoint_hashes: dict[int, str] = {}

    def run(self) -> None:
        for entry in _entries(self.files):
            problem = self._check(entry)
            if problem is not None:
                self.report.problem = problem
                return
        if self.report.first_seq is None:
            self.report.problem = Problem(
                "empty",
                None,
                None,
                f"no records in {', '.join(map(str, self.files)) or 'no files'}",
            )

    def _check(self, entry: _Entry) -> Problem | None:
        where = entry.where
        if not entry.raw.endswith(b"\n"):
            if entry.last:
                self.report.notes.append(
                    f"{where}: the last line is cut short ({len(entry.raw)} bytes, no newline): "
                    "a crash during a write; not a record, Lasthop drops it on its next start"
                )
                return None
            return Problem(
                "truncated",
                where,
                None,
                "this file ends in a line cut short, but the trail goes on after it",
            )
        record, problem = _parse(entry.raw)
        if record is None:
            return Problem("edited", where, None, problem)
        seq, prev, digest = record["seq"], record["prev"], record["hash"]
        if record_hash(record) != digest:
            return Problem(
                "edited", where, seq, "its content does not match its hash: a field was changed"
            )
        if self.expected is None:  # a partial trail starts wherever it starts
            self.expected, self.prev_hash = seq, prev
        if seq != self.expected or prev != self.prev_hash:
            link = _Link(where, seq, digest, prev)
            return _Classifier(self.files).explain(link, self.expected, self.prev_where)
        if record.get("type") == CHECKPOINT:
            failure = self._signature(record)
            if failure is not None:
                return Problem(failure[0], where, seq, failure[1])
            self.checkpoint_hashes[seq] = digest
            self.report.checkpoints += 1
            self.report.last_checkpoint = seq
        self._accept(where, seq, digest)
        return None

    def _accept(self, where: Location, seq: int, digest: str) -> None:
        report = self.report
        if report.first_seq is None:
            report.first_seq = seq
        report.records += 1
        report.last_seq = seq
        self.expected, self.prev_hash, self.prev_where = seq + 1, digest, where

    def _signature(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """None when the checkpoint verifies (or no keys were given), else (kind, message)."""
        if self.keys is None:
            return None
        kid = record.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None or not isinstance(kid, str):
            return "unknown_key", f"checkpoint signed with key `{kid}`, which the JWKS lacks"
        if not checkpoint_signed(record, key):
            return "bad_signature", (
                f"the checkpoint's signature does not verify with key "
                f"`{kid}`: it was forged, or the records before it were "
                "rewritten"
            )
        self.report.kids.add(kid)
        return None

    def check_anchors(self, anchors: Sequence[Path]) -> None:
        for path in anchors:
            for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
                problem = self._anchor(Location(path, number), raw)
                if problem is not None:
                    self.report.problem = problem
                    return

    def _anchor(self, where: Location, raw: bytes) -> Problem | None:
        record, problem = _parse(raw)
        if record is None or record_hash(record) != record["hash"]:
            return Problem("edited", where, None, f"anchor checkpoint: {problem or 'bad hash'}")
        seq = record["seq"]
        failure = self._signature(record)
        if failure is not None:
            return Problem(failure[0], where, seq, f"anchor checkpoint: {failure[1]}")
        if seq < (self.report.first_seq or 1):
            return None  # before a partial trail's first file
        if seq > self.report.last_seq:
            return Problem(
                "truncated",
                self.prev_where,
                self.report.last_seq,
                f"the trail ends here, but checkpoint seq {seq} ({record.get('time')}) "
                f"in `{where.file}` was signed later: the records after seq "
                f"{self.report.last_seq} were cut off",
            )
        if self.checkpoint_hashes.get(seq) != record["hash"]:
            return Problem(
                "edited",
                where,
                seq,
                "the trail does not hold this checkpoint at its seq: the trail was rewritten",
            )
        return None


class _Classifier:
    """Names what broke the sequence, from the whole trail (only ever run on a failure).

    A genuine record is one whose predecessor (the record whose hash is its
    `prev`) has the sequence number before its own.
    """

    def __init__(self, files: list[Path]) -> None:
        self.links: list[_Link] = []
        for entry in _entries(files):
            record, _ = _parse(entry.raw)
            if record is not None:
                self.links.append(_Link(entry.where, record["seq"], record["hash"], record["prev"]))
        self.by_hash: dict[str, _Link] = {}
        for link in self.links:
            self.by_hash.setdefault(link.hash, link)
        self.chained = {link.prev for link in self.links}

    def genuine(self, link: _Link) -> bool:
        if link.seq == 1:
            return link.prev == GENESIS
        pred = self.by_hash.get(link.prev)
        return pred is not None and pred.seq == link.seq - 1

    def explain(self, cur: _Link, expected: int, prev_where: Location | None) -> Problem:
        copy = next(
            (link for link in self.links if link.hash == cur.hash and link.where != cur.where), None
        )
        if copy is not None:
            return Problem("inserted", cur.where, cur.seq, f"a copy of the record at {copy.where}")
        if cur.seq == expected:  # right place, wrong link: the record before was rewritten
            if prev_where is None:
                return Problem(
                    "edited",
                    cur.where,
                    cur.seq,
                    "the first record does not start from the genesis hash",
                )
            return Problem(
                "edited",
                prev_where,
                expected - 1,
                f"changed and its hash recomputed: the next record ({cur.where}) "
                f"chains to another hash, `{cur.prev[:16]}...`",
            )
        if cur.seq < expected:
            if cur.hash in self.chained and self.genuine(cur):
                forged = next(
                    link for link in self.links if link.seq == cur.seq and link.hash != cur.hash
                )
                return Problem(
                    "inserted",
                    forged.where,
                    cur.seq,
                    f"no record chains to it; the genuine seq {cur.seq} is at {cur.where}",
                )
            return Problem(
                "inserted",
                cur.where,
                cur.seq,
                f"a record claiming seq {cur.seq}, "
                f"which the trail already holds, that no record chains to",
            )
        later = next((link for link in self.links if link.seq == expected), None)
        if later is not None and self.genuine(cur):
            return Problem(
                "reordered",
                cur.where,
                cur.seq,
                f"seq {expected} should come here, but it is at {later.where}",
            )
        if later is None:
            if prev_where is None:
                return Problem(
                    "deleted",
                    cur.where,
                    cur.seq,
                    f"the trail starts at seq "
                    f"{cur.seq}: seq 1 to {cur.seq - 1} are missing (pass "
                    "--partial if earlier files were archived)",
                )
            return Problem(
                "deleted",
                cur.where,
                cur.seq,
                f"seq {expected} to {cur.seq - 1} are missing between {prev_where} and here",
            )
        return Problem(
            "inserted",
            cur.where,
            cur.seq,
            f"a record out of sequence (seq {expected} was due) that chains to none",
        )


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    try:
        record = json.loads(raw)
    except ValueError:
        return None, "not JSON: the line was edited or corrupted"
    if not isinstance(record, dict):
        return None, "not a JSON object: the line was edited"
    encoded = canonical(record)
    if raw not in (encoded + b"\n", encoded):
        return None, "not in canonical form: the line was edited or re-encoded"
    if not (
        isinstance(record.get("seq"), int)
        and isinstance(record.get("prev"), str)
        and isinstance(record.get("hash"), str)
        and _HEX64.fullmatch(record["prev"])
        and _HEX64.fullmatch(record["hash"])
    ):
        return None, "no valid `seq`, `prev` and `hash`: the line was edited"
    return record, ""


def _entries(files: Sequence[Path]) -> Iterator[_Entry]:
    for file_index, path in enumerate(files):
        last_file = file_index == len(files) - 1
        with path.open("rb") as handle:
            number, raw = 1, handle.readline()
            while raw:
                following = handle.readline()
                yield _Entry(Location(path, number), raw, last_file and not following)
                number, raw = number + 1, following


def _first_seq(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            first = handle.readline()
        value = json.loads(first).get("seq")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
