"""`lasthop demo`, second part: a compromised agent sweeping charts, contained fleet-wide.

Two Lasthop replicas, each behind its own Envoy, share one Redis and run the
shipped example's `[detect]` (`stack.EXAMPLE_DETECT`: more than 25 distinct
patients in 10 minutes suspends the agent). First a clinic day of normal
traffic goes through both: no detector fires. Then the scribe's token is
stolen and the thief sweeps dr-alice's 40-patient clinic list (a grant she
approved for the day) through replica A, while a watcher keeps asking
replica B, which never sees the sweep. Lasthop suspends the scribe; both
replicas deny it within milliseconds of the request that crossed the line;
the trail says why, and an admin resumes the scribe (audited).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authz import config
from authz._proto import grants_pb2 as pb
from authz.audit import setup as audit_setup
from authz.cli.admin_client import AdminClient
from authz.dev import clinic
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.dev.upstream import DemoUpstream

CLINIC_LIST = [f"p-{3000 + i}" for i in range(40)]
THRESHOLD = 25
EVENTS = ("threat_detected", "agent_suspended", "agent_resumed")


@dataclass
class Replica:
    name: str
    lasthop: devstack.LasthopServer
    envoy: devstack.Envoy
    trail: Path


@dataclass
class Sweep:
    answers: list[tuple[float, clinic.Answer]] = field(default_factory=list)  # replica A
    watched: list[tuple[float, clinic.Answer]] = field(default_factory=list)  # replica B


@contextlib.contextmanager
def fleet(work: Path, issuer: DemoIssuer, upstream: DemoUpstream) -> Iterator[list[Replica]]:
    """Redis and two replicas (Lasthop + Envoy), the shipped example's config; all stopped."""
    jwks = issuer.write_jwks(work / "keys" / "jwks.json")
    with contextlib.ExitStack() as stack:
        redis = devstack.RedisServer(work)
        stack.callback(redis.close)
        replicas = []
        for name in ("A", "B"):
            home = work / f"replica-{name}"
            home.mkdir()
            cfg = devstack.write_config(home, jwks, redis_url=redis.url)
            lasthop = devstack.LasthopServer(cfg)
            stack.callback(lasthop.close)
            envoy = devstack.Envoy(home, lasthop.port, upstream.port)
            stack.callback(envoy.close)
            trail = audit_setup.trail_path(config.load(cfg))
            replicas.append(Replica(name, lasthop, envoy, trail))
        yield replicas


def run(work: Path) -> dict[str, Any]:
    """The scenario, printed, writing (and keeping) everything in `work`; returns what it
    measured."""
    print("\n== Detection: a compromised agent sweeps the charts, on a fleet of two ==")
    work.mkdir(parents=True, exist_ok=True)
    issuer = DemoIssuer("ES256", kid="demo-detect")
    upstream = DemoUpstream()
    try:
        with fleet(work, issuer, upstream) as replicas:
            a, b = replicas
            admin = AdminClient(a.lasthop.ready["admin_listen"], issuer.admin_token(ttl=600))
            try:
                normal, before = _normal_day(admin, issuer, replicas)
                measured = _sweep(admin, issuer, replicas, before)
                resumed = _resume(admin, issuer, a)
            finally:
                admin.close()
            events = _show_trail(replicas)
            return {**measured, "normal": normal, "resumed": resumed, "events": events}
    finally:
        upstream.close()


def _normal_day(
    admin: AdminClient, issuer: DemoIssuer, replicas: list[Replica]
) -> tuple[dict[str, int], int]:
    """The day's outcomes, and how many distinct patients the scribe asked for."""
    grants, steps = clinic.day(0)
    clinic.issue(admin, grants)
    outcomes = clinic.run([r.envoy.url for r in replicas], issuer, steps)
    fired = sum(_count(r.trail, "threat_detected") for r in replicas)
    print(
        f"\nA clinic day through both replicas: {sum(outcomes.values())} requests "
        f"({', '.join(f'{n} {reason}' for reason, n in sorted(outcomes.items()))}); "
        f"detections: {fired}"
    )
    scribe = {s.path.split("/")[2] for s in steps if s.agents[-1] == "scribe"}
    return dict(outcomes), len(scribe)


def _sweep(
    admin: AdminClient, issuer: DemoIssuer, replicas: list[Replica], before: int
) -> dict[str, Any]:
    """`before`: the scribe's distinct patients already in the window (the clinic day)."""
    a, b = replicas
    admin.issue(
        pb.IssueGrantRequest(
            agent="scribe",
            user="dr-alice",
            actions=["read"],
            resources=[f'Patient::"{p}"' for p in CLINIC_LIST],
            purpose=clinic.DOCUMENTATION,
            ttl_seconds=3600,
        )
    )
    print(
        f"\n+ dr-alice approves a grant over today's clinic list ({len(CLINIC_LIST)} patients) "
        "for her scribe\n- the scribe's token is stolen; the thief reads every chart, through "
        "replica A only"
    )
    stolen = issuer.access_token("dr-alice", ["scribe"], purpose=clinic.DOCUMENTATION)
    sweep, stop = Sweep(), threading.Event()
    watcher = threading.Thread(target=_watch, args=(b, stolen, sweep, stop), daemon=True)
    watcher.start()
    try:
        for patient in CLINIC_LIST:
            answer = clinic.send(a.envoy.url, "GET", f"/patients/{patient}/records", stolen)
            sweep.answers.append((time.monotonic(), answer))
        deadline = time.monotonic() + 5
        while not _first_deny(sweep.watched) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        watcher.join()
    return _report(sweep, _crossing(replicas), before)


def _watch(replica: Replica, token: str, sweep: Sweep, stop: threading.Event) -> None:
    path = f"/patients/{CLINIC_LIST[0]}/records"
    while not stop.is_set():
        answer = clinic.send(replica.envoy.url, "GET", path, token)
        sweep.watched.append((time.monotonic(), answer))
        time.sleep(0.005)


def _crossing(replicas: list[Replica], wait: float = 2.0) -> dict[str, Any]:
    """The breadth detection's event, from whichever replica claimed it (its trail may take
    a moment): the decision it names, and the count."""
    deadline = time.monotonic() + wait
    while True:
        for replica in replicas:
            for r in _records(replica.trail):
                if r.get("event") == "threat_detected":
                    return dict(r["detail"])
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.02)


def _first_deny(answers: list[tuple[float, clinic.Answer]], after: float = 0.0) -> float | None:
    return next((t for t, a in answers if t >= after and a.outcome == "agent_suspended"), None)


def _report(sweep: Sweep, detection: dict[str, Any], before: int) -> dict[str, Any]:
    """Every check judged over the line fires, so replica B's own check may claim the
    detection first (the event then names it); the line was still crossed by the sweep's
    chart that made `THRESHOLD + 1` patients."""
    allowed = sum(a.outcome == "allowed" for _, a in sweep.answers)
    crossing = detection.get("decision_id")
    index = next((i for i, (_, a) in enumerate(sweep.answers) if a.decision_id == crossing), -1)
    if index < 0 and detection and THRESHOLD - before < len(sweep.answers):
        index = THRESHOLD - before  # the chart that crossed (the sweep's patients are new)
    ms: dict[str, float | None] = {"replica_a_ms": None, "replica_b_ms": None}
    if index >= 0:
        crossed = sweep.answers[index][0]
        for key, answers in (("replica_a_ms", sweep.answers), ("replica_b_ms", sweep.watched)):
            denied = _first_deny(answers, crossed)
            ms[key] = None if denied is None else round((denied - crossed) * 1000, 1)
    count = (detection.get("evidence") or {}).get("count", "?")
    print(
        f"  Chart {index + 1} of the sweep made {count} patients in 10 minutes, the clinic "
        f"day's included (the line is {THRESHOLD}): Lasthop contained the scribe. The thief "
        f"read {allowed} of {len(sweep.answers)} charts ({allowed - index - 1} answered "
        f"while the containment was on its way).\n"
        f"  From the answer that crossed the line to the first refusal: replica A "
        f"{ms['replica_a_ms']} ms; replica B, which saw none of the sweep, "
        f"{ms['replica_b_ms']} ms."
    )
    return {"allowed": allowed, "swept": len(sweep.answers), "count": count, **ms}


def _resume(admin: AdminClient, issuer: DemoIssuer, a: Replica) -> str:
    admin.resume_agent("scribe")
    token = issuer.access_token("dr-alice", ["scribe"], purpose=clinic.DOCUMENTATION)
    deadline = time.monotonic() + 5
    while True:
        path = f"/patients/{CLINIC_LIST[0]}/records"
        outcome = clinic.send(a.envoy.url, "GET", path, token).outcome
        if outcome == "allowed" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    print(
        f"\n+ ops-admin reviews and resumes the scribe: `lasthop agents resume scribe`\n  {outcome}"
    )
    return outcome


def _show_trail(replicas: list[Replica]) -> list[dict[str, Any]]:
    """The detection's events from both trails (closed by the replicas' shutdown)."""
    events = sorted(
        (r for replica in replicas for r in _records(replica.trail) if r.get("event") in EVENTS),
        key=lambda r: r["time"],
    )
    print("\nWhy, from the replicas' audit trails:")
    for r in events:
        detail = r["detail"]
        evidence = detail.get("evidence")
        why = (
            f"{detail['detector']}/{detail['kind']}: {json.dumps(evidence, sort_keys=True)}, "
            f"crossed by decision {detail['decision_id']}"
            if evidence
            else f"status {detail.get('status')}"
        )
        print(f"  {r['time']} {r['event']:<16} {r['target']} by {r['actor']}: {why}")
    return events


def _records(trail: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trail.read_text().splitlines() if line.strip()]


def _count(trail: Path, event: str) -> int:
    return sum(r.get("event") == event for r in _records(trail))
