"""An accounting of disclosures (HIPAA, 45 CFR 164.528) from the audit trail.

A disclosure is a decision record with `decision` `allow` on a route marked
`phi = true`. Denied requests are not disclosures: nothing was disclosed.
Each row has the four elements of 164.528(b)(2):

    (i)   date          the record's `time`
    (ii)  recipient     the agent that received the data, and its accountable owner
    (iii) description   the action and the resource (e.g. read Records::"p-1001"), and
                        the MCP tool when an agent's tool call disclosed it; a database
                        connection is `connect` on the Database, a disclosure of all of
                        it: it is listed in every patient's accounting
    (iv)  purpose       the purpose the request stated, and the grant it used

plus what ties it back to the trail: user, chain, transaction id, decision id,
and who approved the grant behind it (a person, or the approval policy that
approved it at once); disclosures under break-glass (emergency) access are
flagged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from authz.audit.records import DECISION
from authz.model import EntityRef

PATIENT_TYPE = "Patient"
CONNECTION = "connection"  # a record's `kind` for a database connection
FORMATS = ("md", "json", "csv")


@dataclass(frozen=True)
class Disclosure:
    date: str
    recipient: str  # the agent
    recipient_owner: str  # the human accountable for it
    description: str
    purpose: str
    user: str
    chain: str
    grant_id: str
    txn: str
    decision_id: str
    approved_by: str = ""  # who issued the grant: a person's `sub` or `policy:<id>`
    break_glass: bool = False


@dataclass(frozen=True)
class Window:
    since: datetime | None = None
    until: datetime | None = None  # exclusive

    def holds(self, when: datetime) -> bool:
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )


def parse_day(text: str, end: bool = False) -> datetime:
    """A date (2026-01-01) or an ISO time, UTC when naive. `end`: a bare date covers its day."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"`{text}` is not a date like 2026-01-01 or an ISO time") from err
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if end and len(text.strip()) == len("2026-01-01"):
        value += timedelta(days=1)
    return value


def read_records(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                if raw.endswith(b"\n"):  # a last line cut short by a crash is no record
                    record = json.loads(raw)
                    if isinstance(record, dict):
                        yield record


def about(record: dict[str, Any], subject: str) -> bool:
    """Is the record's resource `subject` or inside it (e.g. Records of that Patient)? A
    database connection could reach any patient's chart, so it is about every patient."""
    if record.get("kind") == CONNECTION:
        return True
    return record.get("resource") == subject or subject in record.get("parents", [])


def account(
    records: Iterable[dict[str, Any]], user: str = "", patient: str = "", window: Window = Window()
) -> list[Disclosure]:
    subject = str(EntityRef(PATIENT_TYPE, patient)) if patient else ""
    rows = []
    for r in records:
        if r.get("type") != DECISION or r.get("decision") != "allow" or not r.get("phi"):
            continue
        if (user and r.get("user") != user) or (subject and not about(r, subject)):
            continue
        when = datetime.fromisoformat(r["time"])
        if window.holds(when):
            rows.append((when, _row(r)))
    rows.sort(key=lambda row: row[0])  # in time order across trails (one per worker)
    return [row for _, row in rows]


def _row(r: dict[str, Any]) -> Disclosure:
    chain = [r.get("user", ""), *r.get("chain", [])]
    return Disclosure(
        date=r["time"],
        recipient=r.get("agent", ""),
        recipient_owner=r.get("owner", ""),
        description=_description(r),
        purpose=r.get("purpose", ""),
        user=r.get("user", ""),
        chain=" -> ".join(chain),
        grant_id=r.get("grant_id", ""),
        txn=r.get("txn", ""),
        decision_id=r.get("decision_id", ""),
        approved_by=r.get("approved_by", ""),
        break_glass=bool(r.get("break_glass", False)),
    )


def _description(r: dict[str, Any]) -> str:
    what = f"{r.get('action', '')} {r.get('resource', '')}"
    tool = r.get("tool")
    if r.get("kind") == CONNECTION:
        return f"{what} (database connection: the whole database)"
    return f"{what} (MCP tool {tool})" if tool else what


def render(rows: list[Disclosure], fmt: str, title: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=list(Disclosure.__dataclass_fields__), lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
        return out.getvalue()
    return _markdown(rows, title)


def _markdown(rows: list[Disclosure], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} disclosure(s). Elements of 45 CFR 164.528(b)(2): date, "
        "recipient, description of the information, purpose.",
        "",
        "| date | recipient (agent, owner) | description | purpose | on behalf of "
        "(chain) | grant | approved by | decision id |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = [
            r.date,
            f"{r.recipient} (owner {r.recipient_owner or 'unknown'})",
            r.description,
            r.purpose,
            r.chain,
            r.grant_id or "-",
            _approval(r),
            r.decision_id,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _approval(r: Disclosure) -> str:
    who = r.approved_by or "-"
    return f"BREAK-GLASS, {who}" if r.break_glass else who
