"""Every detector, through Envoy on a fleet of two replicas sharing one Redis.

Each detector has a test that fires it and shows its response (audit events with
the evidence, the signed webhook, the suspension on both replicas), and the
hospital's normal clinical traffic fires none of them. The fleet runs the
shipped example's `[detect]` (breadth suspends) and the defaults otherwise, but
novelty learns for 2 s instead of a day, and answers with an alert (its default
is record only) so that a firing shows in the trail. Tests use fresh agents, so
their windows never mix.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authz._proto import agents_pb2 as apb
from authz._proto import grants_pb2 as pb
from authz.access import webhook
from authz.dev import clinic
from authz.dev import stack as devstack
from authz.dev.upstream import DemoUpstream
from tests.integration.conftest import PURPOSE, RECORDS, read_audit, unique, wait_until
from tests.integration.fleet import BOUND_SECONDS, Fleet, Replica, running_fleet

pytestmark = pytest.mark.integration

LEARNING = 2  # seconds: novelty's learning period on this fleet
SECRET = b"integration-test-webhook-secret"
EVENT_WAIT = 10.0  # seconds an expected event may take to reach a trail on a busy machine


@dataclass
class Receiver:
    """The alert webhook's receiver: keeps each delivery whose Standard Webhooks signature
    holds, and counts the others."""

    deliveries: list[dict[str, Any]] = field(default_factory=list)
    bad: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _receiver(state: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            timestamp = self.headers.get("webhook-timestamp", "")
            good = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
            good = good and hmac.compare_digest(
                self.headers.get("webhook-signature", ""),
                webhook.sign(SECRET, self.headers.get("webhook-id", ""), int(timestamp), body),
            )
            with state.lock:
                if good:
                    state.deliveries.append(json.loads(body))
                else:
                    state.bad += 1
            self.send_response(204 if good else 401)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Detecting:
    fleet: Fleet
    receiver: Receiver

    def events(self, agent: str, *names: str) -> list[dict[str, Any]]:
        """The events about `agent` in both replicas' trails, oldest first."""
        found = [
            r
            for replica in self.fleet.replicas
            for r in read_audit(replica.config.parent / "audit" / "decisions.jsonl")
            if r.get("type") == "event"
            and r.get("event") in names
            and (r.get("target") == agent or r.get("detail", {}).get("agent") == agent)
        ]
        return sorted(found, key=lambda r: r["time"])

    def detections(self, agent: str, wait_for: str = "") -> list[dict[str, Any]]:
        """The `threat_detected` details about `agent`; waits for one of kind `wait_for`."""
        if wait_for:
            wait_until(
                lambda: any(d["kind"] == wait_for for d in self.detections(agent)), EVENT_WAIT
            )
        return [r["detail"] for r in self.events(agent, "threat_detected")]


@pytest.fixture(scope="module")
def detecting(
    upstream: DemoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Detecting]:
    secret = tmp_path_factory.mktemp("webhook") / "secret"
    secret.write_text("whsec_" + base64.b64encode(SECRET).decode())
    state = Receiver()
    receiver = _receiver(state)
    env = {
        "LASTHOP_DETECT_NOVELTY_LEARNING": f"{LEARNING}s",
        "LASTHOP_DETECT_NOVELTY_RESPONSE": "alert",
        "LASTHOP_DETECT_WEBHOOK_URL": f"http://127.0.0.1:{receiver.server_address[1]}/alerts",
        "LASTHOP_DETECT_WEBHOOK_SECRET_FILE": str(secret),
    }
    try:
        with devstack.workdir("lasthop-it-detect-redis-") as work:
            redis = devstack.RedisServer(Path(work))
            try:
                with running_fleet(
                    "lasthop-it-detect-", redis.url, env=env, upstream=upstream
                ) as fleet:
                    yield Detecting(fleet, state)
            finally:
                redis.close()
    finally:
        receiver.shutdown()
        receiver.server_close()


def _grant(replica: Replica, agent: str, user: str, patients: list[str]) -> pb.Grant:
    return replica.admin.issue(
        pb.IssueGrantRequest(
            agent=agent,
            user=user,
            actions=["read"],
            resources=[f'Patient::"{p}"' for p in patients],
            purpose=PURPOSE,
            ttl_seconds=900,
        )
    )


def _decision_id(resp: Any) -> str:
    return str(resp.upstream_saw.get("x-lasthop-decision-id", "")) if resp.status == 200 else ""


# --- breadth ------------------------------------------------------------------------------------


def test_a_sweep_is_suspended_on_both_replicas_and_the_trail_says_why(detecting: Detecting) -> None:
    fleet = detecting.fleet
    one, two = fleet.replicas
    agent, user = fleet.register(prefix="sweeper"), unique("u-sweep")
    patients = [f"p-{9000 + i}" for i in range(40)]
    _grant(one, agent, user, patients)
    token = fleet.token(user, [agent])
    first = f"/patients/{patients[0]}/records"
    assert wait_until(lambda: two.get(first, token).status == 200, 5.0)  # two has the grant
    answers = [one.get(f"/patients/{p}/records", token) for p in patients]
    allowed = [a for a in answers if a.status == 200]
    # 26 distinct patients (one more than the example's 25) is the line; a few more may be
    # in flight before containment lands, and nothing after it
    first_refused = next(i for i, a in enumerate(answers) if a.status != 200)
    assert 26 <= len(allowed) == first_refused < 30, [(a.status, a.reason) for a in answers]
    assert {a.reason for a in answers[first_refused:]} == {"agent_suspended"}
    crossed = time.monotonic()
    denied_at = None
    while denied_at is None and time.monotonic() - crossed < BOUND_SECONDS:
        if two.get(first, token).reason == "agent_suspended":
            denied_at = time.monotonic()
    assert denied_at is not None, "replica two never refused the suspended agent"

    (detection,) = detecting.detections(agent, wait_for="patients")
    assert detection["detector"] == "breadth" and detection["response"] == "suspend"
    assert detection["evidence"] == {
        "window_seconds": 600,
        "entity": "Patient",
        "count": 26,
        "threshold": 25,
    }
    assert detection["decision_id"] == _decision_id(allowed[25])  # the 26th patient's check
    (suspended,) = detecting.events(agent, "agent_suspended")
    assert suspended["actor"] == "lasthop" and suspended["detail"]["evidence"]["count"] == 26

    two.admin.resume_agent(agent)  # an admin reviews and resumes: audited, judged afresh
    resumed = detecting.events(agent, "agent_resumed")
    assert [r["actor"] for r in resumed] == ["ops-admin"]
    assert wait_until(lambda: one.get(first, token).status == 200, 5.0)
    assert one.get(f"/patients/{patients[-1]}/records", token).status == 200
    assert wait_until(
        lambda: any(d["type"] == "detection.threat_detected" and d["data"]["agent"] == agent
                    for d in detecting.receiver.deliveries), EVENT_WAIT
    )  # fmt: skip
    assert detecting.receiver.bad == 0


# --- rate ---------------------------------------------------------------------------------------


def test_a_burst_counted_across_both_replicas_is_an_alert(detecting: Detecting) -> None:
    """320 requests, half through each replica: neither alone passes rate_min (300)."""
    fleet = detecting.fleet
    agent, user = fleet.register(prefix="burst"), unique("u-burst")
    fleet.grant(user, agent)
    token = fleet.token(user, [agent])
    if time.time() % 60 > 45:  # keep the burst inside one rate window
        time.sleep(61 - time.time() % 60)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda i: fleet.replicas[i % 2].get(RECORDS, token).status, range(320))
        )
    assert statuses.count(200) >= 300, statuses
    detection = next(d for d in detecting.detections(agent, "requests") if d["kind"] == "requests")
    assert detection["detector"] == "rate" and detection["response"] == "alert"
    assert detection["evidence"]["count"] > 300 and detection["evidence"]["threshold"] == 300
    assert not detecting.events(agent, "agent_suspended")  # an alert contains nothing


# --- probing ------------------------------------------------------------------------------------


def test_a_burst_of_denials_is_probing_for_the_token_and_then_the_agent(
    detecting: Detecting,
) -> None:
    fleet = detecting.fleet
    agent = fleet.register(prefix="prober")
    token = fleet.token(unique("u-probe"), [agent])  # no grant: every request is no_grant
    for i in range(22):
        assert fleet.replicas[i % 2].get(f"/patients/p-{i}/records", token).reason == "no_grant"
    detecting.detections(agent, "agent_denials")
    kinds = {d["kind"]: d for d in detecting.detections(agent)}
    # the evidence is the claim that won: the crossing check's, or the next one's when the
    # other replica judged it at the same moment and its claim reached the store first
    token_denials, agent_denials = (
        kinds["token_denials"]["evidence"],
        kinds["agent_denials"]["evidence"],
    )
    assert token_denials["threshold"] == 10 and 10 < token_denials["count"] <= 12, token_denials
    assert agent_denials["threshold"] == 20 and 20 < agent_denials["count"] <= 22, agent_denials
    assert kinds["agent_denials"]["evidence"]["reason"] == "no_grant"


# --- novelty ------------------------------------------------------------------------------------


def test_a_new_chain_after_learning_and_a_reused_txn_are_novel(detecting: Detecting) -> None:
    fleet = detecting.fleet
    one, two = fleet.replicas
    agent, user = fleet.register(prefix="novel"), unique("u-novel")
    fleet.grant(user, agent)
    assert one.get(RECORDS, fleet.token(user, [agent])).status == 200  # learns its habits
    time.sleep(LEARNING + 0.5)
    assert one.get(RECORDS, fleet.token(user, [agent])).status == 200  # known: nothing fires
    assert two.get(RECORDS, fleet.token(user, ["orchestrator", agent])).status == 200
    (novel,) = detecting.detections(agent, "new_chain")
    assert novel["evidence"]["chain"] == ["orchestrator", agent]

    txn = str(uuid.uuid4())
    other = unique("u-other")
    fleet.grant(other, agent)
    assert one.get(RECORDS, fleet.token(user, [agent], txn=txn)).status == 200
    assert two.get(RECORDS, fleet.token(other, [agent], txn=txn)).status == 200
    reused = next(d for d in detecting.detections(agent, "txn_reused") if d["kind"] == "txn_reused")
    assert reused["evidence"] == {
        "txn": txn,
        "first_owner": f"{user} {agent}",
        "owner": f"{other} {agent}",
    }


# --- hours --------------------------------------------------------------------------------------


def test_a_request_outside_declared_hours(detecting: Detecting) -> None:
    fleet = detecting.fleet
    now = time.gmtime()
    later = (now.tm_hour + 12) % 24  # a one-hour span twelve hours from now, every day
    hours = f"{later:02d}:00-{later:02d}:59"
    agent, user = f"nightshift-{uuid.uuid4().hex[:8]}", unique("u-hours")
    fleet.replicas[0].admin.register_agent(
        apb.RegisterAgentRequest(
            id=agent, owner="dr-alice", risk=10, allowed_purposes=[PURPOSE], hours=hours
        )
    )
    fleet.grant(user, agent)
    assert fleet.replicas[1].get(RECORDS, fleet.token(user, [agent])).status == 200
    (detection,) = detecting.detections(agent, "off_hours")
    assert detection["detector"] == "hours"


# --- hygiene ------------------------------------------------------------------------------------


def test_an_unregistered_agent_a_long_lived_token_and_a_token_without_jti(
    detecting: Detecting,
) -> None:
    fleet = detecting.fleet
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    resp = fleet.replicas[0].get(RECORDS, fleet.token(unique("u-ghost"), ["orchestrator", ghost]))
    assert resp.reason == "agent_unregistered"
    (unregistered,) = detecting.detections(ghost, "unregistered_agent")
    assert unregistered["evidence"] == {"chain": ["orchestrator", ghost]}

    agent, user = fleet.register(prefix="hygiene"), unique("u-hygiene")
    fleet.grant(user, agent)
    assert fleet.replicas[1].get(RECORDS, fleet.token(user, [agent], ttl=3000)).status == 200
    assert fleet.replicas[0].get(RECORDS, fleet.token(user, [agent], jti=None)).status == 200
    detecting.detections(agent, "token_without_jti")
    kinds = {d["kind"]: d["evidence"] for d in detecting.detections(agent, "long_lived_token")}
    assert kinds["long_lived_token"]["lifetime_seconds"] == 3000
    assert kinds["long_lived_token"]["threshold"] == 1800
    assert set(kinds) == {"long_lived_token", "token_without_jti"}


# --- normal traffic -----------------------------------------------------------------------------


def test_a_clinic_day_fires_no_detector(detecting: Detecting) -> None:
    """The hospital's agents doing their jobs, twice (the second time past novelty's
    learning period), through both replicas: every detector at its default stays quiet."""
    fleet = detecting.fleet
    bases = [r.envoy.url for r in fleet.replicas]
    grants, steps = clinic.day(7)
    clinic.issue(fleet.replicas[0].admin, grants)
    first = clinic.run(bases, fleet.issuer, steps)
    time.sleep(LEARNING + 0.5)
    second = clinic.run(bases, fleet.issuer, steps)
    for outcomes in (first, second):
        assert outcomes == {"allowed": len(steps) - 1, "no_grant": 1}, outcomes
    time.sleep(0.5)  # let the last flush land before looking
    for agent in ("scribe", "orchestrator", "med-reconciler", "billing-bot"):
        assert detecting.events(agent, "threat_detected", "agent_suspended") == [], agent
