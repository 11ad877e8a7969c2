"""`lasthop posture`: the identity posture report, for people, CI and cron.

Exit codes (authz.cli.conventions): 0, or 1 when `--fail-on SEVERITY` is
given and a finding at or above it exists; 2 on bad input, 3 when a trail
file is missing, 5 when the store cannot be read. `--metrics-file` writes
the counts as Prometheus gauges (`lasthop_posture_findings{kind,severity}`)
for node_exporter's textfile collector or a Pushgateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from authz import config
from authz.audit import setup as audit_setup
from authz.audit.disclosures import parse_day
from authz.audit.files import trail_files
from authz.cli.conventions import Exit, add_output
from authz.detect import inventory
from authz.detect.findings import RULES, SEVERITIES, Finding, at_or_above
from authz.detect.posture import assess
from authz.errors import StoreUnavailable, UsageError
from authz.model import Agent, Grant, RiskTiers
from authz.policy import load as policy_load
from authz.stores.redis_store import RedisStore

DEFAULT_DAYS = 30


def add_command(sub: Any) -> None:
    posture = sub.add_parser(
        "posture",
        help="report where the fleet is exposed: standing privilege, unused and broad grants, "
        "unowned, unseen and unregistered agents, long-lived tokens, policy gaps",
    )
    posture.add_argument("--config", required=True, help="the servers' TOML config")
    add_output(posture, "md")
    posture.add_argument(
        "--fail-on", choices=SEVERITIES, help="exit 1 if a finding at or above this exists"
    )
    posture.add_argument(
        "--trail",
        action="append",
        default=[],
        type=Path,
        help="another replica's live trail file (each holds only its own checks); repeatable",
    )
    posture.add_argument(
        "--since", help=f"read the trail from this date (default: {DEFAULT_DAYS} days ago)"
    )
    posture.add_argument("--at", help="assess as of this ISO time (default: now)")
    posture.add_argument(
        "--metrics-file", type=Path, help="also write the counts as Prometheus gauges here"
    )
    posture.set_defaults(func=cmd_posture)


def cmd_posture(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    directory = settings.path(settings.policies.dir)
    now = _time(args.at, "--at") if args.at else time.time()
    since = _time(args.since, "--since") if args.since else now - DEFAULT_DAYS * 86400
    inv = inventory.Inventory(
        now=now,
        since=since,
        bundle=policy_load.load(directory),
        policy_dir=directory,
        agents={},
        live={},
    )
    files = _files([audit_setup.trail_path(settings), *args.trail])
    if settings.store.redis_url:
        try:
            inv.agents, inv.live = asyncio.run(_from_redis(settings))
        except StoreUnavailable as err:
            print(f"lasthop: cannot read the store: {err.detail}", file=sys.stderr)
            return Exit.UNAVAILABLE
    inventory.read(inv, files, rebuild_store=not settings.store.redis_url)
    tiers = RiskTiers(settings.registry.medium_risk_from, settings.registry.high_risk_from)
    findings = assess(inv, tiers)
    print(render(findings, inv, args.output))
    if args.metrics_file:
        write_gauges(findings, args.metrics_file, now)
    failing = at_or_above(args.fail_on) if args.fail_on else frozenset()
    return Exit.NO if any(f.rule.severity in failing for f in findings) else Exit.OK


def _time(text: str, flag: str) -> float:
    try:
        return parse_day(text).timestamp()
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None


def _files(lives: list[Path]) -> list[Path]:
    files: list[Path] = []
    for live in lives:
        found = trail_files(live)
        if not found:
            raise FileNotFoundError(
                f"no audit trail at `{live}`; give the live trail file with --trail"
            )
        files.extend(found)
    return files


async def _from_redis(settings: config.Settings) -> tuple[dict[str, Agent], dict[str, Grant]]:
    st = settings.store
    store = RedisStore(st.redis_url, max(st.timeout_ms, 1000), cluster=st.redis_cluster)
    try:
        return await inventory.from_store(store, store)
    finally:
        await store.close()


# --- output -----------------------------------------------------------------------------------


def counts(findings: list[Finding]) -> dict[str, int]:
    tally = Counter(f.rule.severity for f in findings)
    return {severity: tally.get(severity, 0) for severity in reversed(SEVERITIES)}


def render(findings: list[Finding], inv: inventory.Inventory, output: str) -> str:
    scope = {
        "at": _iso(inv.now),
        "since": _iso(inv.since),
        "agents": sum(a.registered for a in inv.agents.values()),
        "live_grants": len(inv.live),
        "records": inv.records,
    }
    if output == "json":
        report = {**scope, "counts": counts(findings), "findings": [f.as_dict() for f in findings]}
        return json.dumps(report, indent=2)
    if output == "md":
        return _markdown(findings, scope)
    return _text(findings, scope)


def _text(findings: list[Finding], scope: dict[str, Any]) -> str:
    lines = [
        f"posture at {scope['at']}: {scope['agents']} agents, {scope['live_grants']} live grants, "
        f"{scope['records']} trail records since {scope['since']}",
        "",
    ]
    for f in findings:
        rule = f.rule
        lines += [
            f"{rule.severity.upper():<8} {f.id}",
            f"         {f.summary}",
            f"         {rule.owasp}",
            f"         evidence: {json.dumps(f.evidence, sort_keys=True)}",
            f"         fix: {rule.fix}",
            "",
        ]
    summary = ", ".join(f"{n} {severity}" for severity, n in counts(findings).items())
    lines.append(f"{len(findings)} findings: {summary}" if findings else "no findings")
    return "\n".join(lines)


def _markdown(findings: list[Finding], scope: dict[str, Any]) -> str:
    lines = [
        f"# Identity posture at {scope['at']}",
        "",
        f"{scope['agents']} agents, {scope['live_grants']} live grants, {scope['records']} "
        f"trail records since {scope['since']}.",
        "",
        "| severity | count |",
        "| --- | ---: |",
        *(f"| {severity} | {n} |" for severity, n in counts(findings).items()),
        "",
    ]
    if not findings:
        return "\n".join([*lines, "No findings."])
    lines += ["| severity | id | finding | OWASP NHI | fix |", "| --- | --- | --- | --- | --- |"]
    for f in findings:
        cells = (f.rule.severity, f"`{f.id}`", f.summary, f.rule.owasp, f.rule.fix)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_gauges(findings: list[Finding], path: Path, now: float) -> None:
    registry = CollectorRegistry()
    gauge = Gauge(
        "lasthop_posture_findings",
        "Posture findings by kind and severity, from the last `lasthop posture` run.",
        ["kind", "severity"],
        registry=registry,
    )
    found = Counter(f.kind for f in findings)
    for kind, rule in RULES.items():
        gauge.labels(kind, rule.severity).set(found.get(kind, 0))
    Gauge(
        "lasthop_posture_last_run_timestamp_seconds",
        "When `lasthop posture` last wrote these gauges.",
        registry=registry,
    ).set(now)
    try:
        write_to_textfile(str(path), registry)
    except OSError as err:
        raise UsageError(f"--metrics-file: cannot write `{path}`: {err.strerror or err}") from err


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
