"""`lasthop audit shadow-report`: what the shadow policies would have changed, by policy.

Reads decision records from the audit trail (their `shadow` list and
`shadow_disagrees` flag) over a time window and reports, per shadow policy,
how often it held and how often the decision would have flipped with it.
Shadow approval policies are reported the same way, from the access events
that carry them (their example ids are access request ids).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authz import config


@dataclass
class PolicyTally:
    policy: str
    effect: str
    held: int = 0  # checks where its scope and conditions held
    disagreements: int = 0  # ... and enforcing the shadow set would have flipped the decision
    examples: list[str] = field(default_factory=list)  # decision ids, a few


def parse_when(text: str) -> datetime:
    """A date (2026-01-01) or an ISO time; naive means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"`{text}` is not a date like 2026-01-01 or an ISO time") from err
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def read_records(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{number}: not a JSON record") from err
                if isinstance(record, dict) and "decision_id" in record:
                    yield _checked(record, f"{path}:{number}")
                elif _shadowed_access(record):
                    yield _checked(_as_decision(record), f"{path}:{number}")


def _shadowed_access(record: Any) -> bool:
    """An access event whose approval decision shadow approval policies held for."""
    detail = record.get("detail") if isinstance(record, dict) else None
    return record.get("type") == "event" and isinstance(detail, dict) and "shadow" in detail


def _as_decision(record: dict[str, Any]) -> dict[str, Any]:
    detail = record["detail"]
    return {
        "time": record.get("time"),
        "decision_id": record.get("target", ""),
        "shadow": detail.get("shadow"),
        "shadow_disagrees": bool(detail.get("shadow_disagrees")),
    }


def _checked(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A decision record with the fields the report reads, or ValueError naming the line."""
    if not isinstance(record.get("time"), str):
        raise ValueError(f"{where}: decision record has no `time`")
    shadow = record.get("shadow", [])
    if not isinstance(shadow, list) or not all(
        isinstance(h, dict)
        and isinstance(h.get("policy"), str)
        and isinstance(h.get("effect"), str)
        for h in shadow
    ):
        raise ValueError(f"{where}: `shadow` must be a list of {{policy, effect}}")
    return record


def tally(
    records: Iterable[dict[str, Any]], since: datetime | None, until: datetime | None
) -> tuple[int, int, list[PolicyTally]]:
    """(records in the window, records whose decision would flip, per-policy tallies)."""
    total = flips = 0
    by_policy: dict[str, PolicyTally] = {}
    for record in records:
        when = parse_when(record["time"])
        if (since and when < since) or (until and when >= until):
            continue
        total += 1
        disagrees = bool(record.get("shadow_disagrees"))
        flips += disagrees
        for hit in record.get("shadow", []):
            entry = by_policy.setdefault(hit["policy"], PolicyTally(hit["policy"], hit["effect"]))
            entry.held += 1
            if disagrees:
                entry.disagreements += 1
                if len(entry.examples) < 3:
                    entry.examples.append(record["decision_id"])
    ordered = sorted(by_policy.values(), key=lambda t: (-t.disagreements, -t.held, t.policy))
    return total, flips, ordered


def add_command(audit: Any) -> None:
    report = audit.add_parser(
        "shadow-report", help="summarise what shadow policies would have changed, by policy"
    )
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="read the configured audit.path")
    source.add_argument("--trail", nargs="+", type=Path, help="audit files to read")
    report.add_argument("--since", help="from this date or time (inclusive)")
    report.add_argument("--until", help="until this date or time (exclusive)")
    report.add_argument("--output", choices=("text", "json"), default="text")
    report.set_defaults(func=cmd_shadow_report)


def cmd_shadow_report(args: argparse.Namespace) -> int:
    if args.trail:
        paths = list(args.trail)
    else:
        settings = config.load(args.config)
        paths = [settings.path(settings.audit.path)]
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    total, flips, tallies = tally(read_records(paths), since, until)
    if args.output == "json":
        print(
            json.dumps(
                {"records": total, "would_flip": flips, "policies": [t.__dict__ for t in tallies]},
                indent=2,
            )
        )
        return 0
    print(
        f"{total} decisions in the window; {flips} would have changed with the shadow "
        "policies enforced"
    )
    if tallies:
        print(f"\n{'POLICY':<36} {'EFFECT':<7} {'HELD':>7} {'FLIPS':>7}  EXAMPLES")
    for t in tallies:
        print(
            f"{t.policy:<36} {t.effect:<7} {t.held:>7} {t.disagreements:>7}  {' '.join(t.examples)}"
        )
    return 0
