"""Detection in process: the pipeline with the detectors on the embedded store.

What the detectors feed Cedar (`context.risk`), what each response does to the
store and the trail, and that containment holds when the store or the trail
refuses. Through Envoy and on a fleet: tests/integration/test_detect.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from authz import config
from authz.audit.records import EventRecord, MemoryAudit, Record
from authz.check.decisions import DecisionCache
from authz.check.pipeline import Pipeline
from authz.config import DetectSettings, IdentitySettings
from authz.detect import detectors
from authz.detect.detectors import Detection, Seen
from authz.detect.monitor import Monitor
from authz.detect.respond import Responder, _revoking
from authz.dev import stack as devstack
from authz.dev.tokens import DemoIssuer
from authz.errors import StoreUnavailable
from authz.model import (
    Agent,
    Chain,
    Decision,
    EntityRef,
    Grant,
    Intent,
    Revocation,
    Risk,
    RouteMatch,
)
from authz.policy.load import PolicyBundle
from authz.server import app as app_module
from authz.server.app import assemble
from authz.stores.embedded import EmbeddedAgentStore, EmbeddedGrantStore
from authz.stores.registry import StoreRegistry, seed
from authz.stores.windows import EmbeddedWindows, Observation, Tally, WindowSpec
from tests.conftest import PURPOSE, check_input, keys_for

WRITE = "/patients/p-1001/notes"
EXAMPLE = DetectSettings(breadth_response="suspend")  # the shipped example's [detect]
DEFAULTS = DetectSettings()


@dataclass
class Recorder:
    """A DetectObserver that keeps what it is told."""

    detections: list[tuple[str, str, str]] = field(default_factory=list)
    actions: list[tuple[str, bool]] = field(default_factory=list)
    containments: list[float] = field(default_factory=list)
    window_failures: int = 0

    def detected(self, detector: str, kind: str, response: str) -> None:
        self.detections.append((detector, kind, response))

    def acted(self, action: str, ok: bool) -> None:
        self.actions.append((action, ok))

    def contained(self, seconds: float) -> None:
        self.containments.append(seconds)

    def windows_failed(self) -> None:
        self.window_failures += 1


@dataclass
class Rig:
    pipeline: Pipeline
    monitor: Monitor
    agents: EmbeddedAgentStore
    grants: EmbeddedGrantStore
    audit: MemoryAudit
    observer: Recorder
    issuer: DemoIssuer

    async def check(self, path: str = "/patients/p-1001/records", method: str = "GET",
                    user: str = "dr-alice", agents: tuple[str, ...] = ("scribe",),
                    **claims: Any) -> Decision:  # fmt: skip
        """One check, then everything it set off (the flush and the responses)."""
        token = self.issuer.access_token(user, list(agents), purpose=PURPOSE, **claims)
        decision = await self.pipeline.check(check_input(token, method=method, path=path))
        await self.monitor.flush()
        await self.monitor.responder.drain()
        return decision

    def events(self, name: str = "") -> list[EventRecord]:
        return [
            r
            for r in self.audit.records
            if isinstance(r, EventRecord) and (not name or r.event == name)
        ]

    async def grant(
        self, *patients: str, actions: tuple[str, ...] = ("read",), agent: str = "scribe"
    ) -> Grant:
        now = int(time.time())
        g = Grant(
            id=f"g-{len(await self.grants.list())}", agent=agent, user="dr-alice", actions=actions,
            resources=tuple(f'Patient::"{p}"' for p in patients), purpose=PURPOSE,
            issued_by="test", issued_at=now, expires_at=now + 900,
        )  # fmt: skip
        await self.grants.put(g)
        return g


def make_rig(
    bundle: PolicyBundle,
    issuer: DemoIssuer,
    settings: DetectSettings = EXAMPLE,
    audit: MemoryAudit | None = None,
    agents: EmbeddedAgentStore | None = None,
) -> Rig:
    agents = agents or EmbeddedAgentStore()
    asyncio.run(seed(agents, bundle.agents, int(time.time())))
    grants, audit, observer = EmbeddedGrantStore(time.time), audit or MemoryAudit(), Recorder()
    windows = EmbeddedWindows()
    responder = Responder(
        settings=settings, windows=windows, agents=agents, grants=grants, audit=audit,
        observer=observer,
    )  # fmt: skip
    monitor = Monitor(settings, windows, responder, StoreRegistry(agents), observer)
    pipeline = assemble(
        ident=IdentitySettings(), keys=keys_for(issuer), bundle=bundle,
        registry=StoreRegistry(agents), store=grants, audit=audit, detect=monitor,
    )  # fmt: skip
    return Rig(pipeline, monitor, agents, grants, audit, observer, issuer)


def run(work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(work())


# --- breadth and containment ------------------------------------------------------------------


def test_a_sweep_is_suspended_past_the_line_and_the_trail_says_why(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    rig = make_rig(bundle, issuer)
    patients = [f"p-{i}" for i in range(40)]

    async def go() -> list[Decision]:
        await rig.grant(*patients)
        return [await rig.check(f"/patients/{p}/records") for p in patients]

    decisions = run(go)
    assert [d.reason for d in decisions] == ["allowed"] * 26 + ["agent_suspended"] * 14
    assert [d.risk.patients for d in decisions[:26] if d.risk] == list(range(26))
    assert run(lambda: rig.agents.get_agent("scribe")).status == "suspended"
    detected, suspended, flagged = rig.events()
    assert (detected.event, suspended.event, flagged.event) == (
        "threat_detected", "agent_suspended", "approval_required",
    )  # fmt: skip
    for event in (detected, suspended):
        assert event.actor == "lasthop" and event.target == "scribe"
        assert event.detail["detector"] == "breadth" and event.detail["kind"] == "patients"
        assert event.detail["decision_id"] == decisions[25].decision_id  # the 26th patient
        assert event.detail["evidence"] == {
            "window_seconds": 600, "entity": "Patient", "count": 26, "threshold": 25,
        }  # fmt: skip
    assert rig.observer.detections == [("breadth", "patients", "suspend")]
    assert len(rig.observer.containments) == 1


def test_a_resumed_agent_is_judged_afresh(bundle: PolicyBundle, issuer: DemoIssuer) -> None:
    """After a resume its windows start from nothing, and a second sweep, even at once, is
    contained by its own 26th patient."""
    rig = make_rig(bundle, issuer)
    patients = [f"p-{i}" for i in range(60)]

    async def go() -> list[str]:
        await rig.grant(*patients)
        for p in patients[:27]:
            await rig.check(f"/patients/{p}/records")
        agent = await rig.agents.get_agent("scribe")
        assert agent is not None and agent.status == "suspended"
        await rig.agents.put_agent(dataclasses.replace(agent, status="active"))  # resumed
        return [(await rig.check(f"/patients/{p}/records")).reason for p in patients[27:54]]

    assert run(go) == ["allowed"] * 26 + ["agent_suspended"]
    assert [e.event for e in rig.events("agent_suspended")] == ["agent_suspended"] * 2


class RefusingAgents(EmbeddedAgentStore):
    """The store refuses the first `failures` compare-and-sets (Redis down for a moment)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def replace_agent(self, current: Agent, new: Agent) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("redis write failed: ConnectionError")
        return await super().replace_agent(current, new)


def test_containment_holds_here_while_the_store_refuses_and_lands_when_it_is_back(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    agents = RefusingAgents(failures=3)
    rig = make_rig(bundle, issuer, agents=agents)
    patients = [f"p-{i}" for i in range(26)]

    async def go() -> tuple[list[Decision], list[Decision]]:
        await rig.grant(*patients)
        token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
        swept = []
        for p in patients:
            swept.append(
                await rig.pipeline.check(check_input(token, path=f"/patients/{p}/records"))
            )
            await rig.monitor.flush()
        await asyncio.sleep(0)  # the response starts: claimed, contained here, store refuses
        during = [await rig.pipeline.check(check_input(token)) for _ in range(3)]
        await rig.monitor.responder.drain()  # retried until the store takes it
        return swept, during

    swept, during = run(go)
    assert all(d.allowed for d in swept)
    assert {(d.reason, d.detail) for d in during} == {
        ("agent_suspended", "agent `scribe` is suspended by detector `breadth`")
    }
    assert run(lambda: agents.get_agent("scribe")).status == "suspended"
    assert rig.observer.actions.count(("suspend", False)) == 3
    assert rig.monitor.responder.contained("scribe") is None  # the store holds it now


def test_a_trail_that_refuses_does_not_undo_a_containment(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    class NoEvents(MemoryAudit):
        def emit(self, record: Record) -> bool:
            return not isinstance(record, EventRecord) and super().emit(record)

    rig = make_rig(bundle, issuer, audit=NoEvents())

    async def go() -> None:
        patients = [f"p-{i}" for i in range(26)]
        await rig.grant(*patients)
        for p in patients:
            await rig.check(f"/patients/{p}/records")

    run(go)
    assert run(lambda: rig.agents.get_agent("scribe")).status == "suspended"
    assert ("audit", False) in rig.observer.actions


# --- the ladder of responses ------------------------------------------------------------------


def _breadth(bundle: PolicyBundle, issuer: DemoIssuer, response: str) -> Rig:
    rig = make_rig(bundle, issuer, DetectSettings(breadth_patients=3, breadth_response=response))

    async def go() -> None:
        patients = [f"p-{i}" for i in range(6)]
        await rig.grant(*patients, actions=("read", "write"))
        await rig.grant("p-9")
        for p in patients:
            await rig.check(f"/patients/{p}/records")

    run(go)
    return rig


def test_record_only_counts_it(bundle: PolicyBundle, issuer: DemoIssuer) -> None:
    rig = _breadth(bundle, issuer, "record")
    assert rig.observer.detections == [("breadth", "patients", "record")]  # once: claimed
    assert rig.events() == []
    assert run(lambda: rig.agents.get_agent("scribe")).status == "active"


def test_an_alert_is_an_event_and_nothing_more(bundle: PolicyBundle, issuer: DemoIssuer) -> None:
    rig = _breadth(bundle, issuer, "alert")
    assert [e.event for e in rig.events()] == ["threat_detected"]
    assert rig.events()[0].detail["evidence"]["count"] == 4
    assert run(lambda: rig.agents.get_agent("scribe")).status == "active"


def test_approve_flags_new_access_and_policy_can_read_it(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    rig = _breadth(bundle, issuer, "approve")
    assert [e.event for e in rig.events()] == ["threat_detected", "approval_required"]
    assert "until" in rig.events("approval_required")[0].detail
    after = run(lambda: rig.check("/patients/p-1/records"))
    assert after.allowed and after.risk is not None and after.risk.approval_required
    assert after.cedar is not None and after.cedar["context"]["risk"]["approval_required"] is True
    assert run(lambda: rig.monitor.windows.flagged("scribe")) is True


def test_approve_sends_the_agents_access_requests_to_a_person(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    """The access requests' containment hook (issue 14): what approval policies would approve
    at once waits for a person while any agent of the chain is flagged, or the store cannot
    say."""
    rig = _breadth(bundle, issuer, "approve")
    responder = rig.monitor.responder
    assert run(lambda: responder.requires_person(("orchestrator", "scribe"))) is True
    assert run(lambda: responder.requires_person(("med-reconciler",))) is False

    async def unreachable(agent: str) -> bool:
        raise StoreUnavailable("redis read failed: ConnectionError")

    responder.windows.flagged = unreachable  # type: ignore[method-assign]
    assert run(lambda: responder.requires_person(("med-reconciler",))) is True


def test_revoke_suspends_and_revokes_every_grant(bundle: PolicyBundle, issuer: DemoIssuer) -> None:
    rig = _breadth(bundle, issuer, "revoke")
    assert run(lambda: rig.agents.get_agent("scribe")).status == "suspended"
    assert run(lambda: rig.grants.list(agent="scribe")) == []
    events = [e.event for e in rig.events()]
    assert events == ["threat_detected", "agent_suspended", "grant_revoked", "grant_revoked",
                      "approval_required"]  # fmt: skip
    assert {e.target for e in rig.events("grant_revoked")} == {"g-0", "g-1"}
    assert all(e.detail["detector"] == "breadth" for e in rig.events("grant_revoked"))


def test_a_revoke_whose_answer_was_lost_is_recorded_one_made_by_someone_else_is_not() -> None:
    """Revoking is retried until the store answers: a retry that finds the grant revoked
    made it itself on the try whose answer was lost (its event is written); a grant someone
    else revoked between the listing and the revoke is theirs (no event of ours)."""
    grants = EmbeddedGrantStore(time.time)
    now = int(time.time())
    for gid in ("g-lost", "g-theirs"):
        grant = Grant(gid, "scribe", "dr-alice", ("read",), ('Patient::"p-1"',), PURPOSE, "t",
                      now, now + 900)  # fmt: skip
        asyncio.run(grants.put(grant))
    real = grants.revoke
    lost = ["g-lost"]

    async def answer_lost_once(grant_id: str) -> Revocation | None:
        made = await real(grant_id)
        if grant_id in lost:
            lost.remove(grant_id)
            raise StoreUnavailable("redis revoke failed: TimeoutError")
        return made

    grants.revoke = answer_lost_once  # type: ignore[method-assign]
    asyncio.run(real("g-theirs"))  # an admin, just before
    with_retry = [_revoking(grants, "g-lost"), _revoking(grants, "g-theirs")]

    async def go() -> list[Grant | None]:
        found = []
        for revoke in with_retry:
            try:
                found.append(await revoke())
            except StoreUnavailable:
                found.append(await revoke())  # what Responder._retry does
        return found

    lost_grant, theirs = run(go)
    assert lost_grant is not None and lost_grant.id == "g-lost" and theirs is None


# --- signals reach policy ---------------------------------------------------------------------


def test_an_agent_refused_again_and_again_may_not_write(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    """The shipped `probing-agents-never-write` reads context.risk.denials."""
    rig = make_rig(bundle, issuer)

    async def go() -> tuple[Decision, Decision, Decision]:
        await rig.grant("p-1001", actions=("read", "write"))
        before = await rig.check(WRITE, "POST")
        for i in range(11):
            assert (await rig.check(f"/patients/p-{i}/records")).reason == "no_grant"
        return before, await rig.check(WRITE, "POST"), await rig.check()

    before, write, read = run(go)
    assert before.allowed
    assert (write.reason, write.policies) == ("risk_probing", ("probing-agents-never-write",))
    assert write.cedar is not None and write.cedar["context"]["risk"]["denials"] == 11
    assert read.allowed  # reads under its grant go on


def test_an_agent_outside_its_hours_may_not_write(bundle: PolicyBundle, issuer: DemoIssuer) -> None:
    rig = make_rig(bundle, issuer)
    later = (time.gmtime().tm_hour + 12) % 24

    async def go() -> tuple[Decision, Decision]:
        scribe = await rig.agents.get_agent("scribe")
        assert scribe is not None
        await rig.agents.put_agent(
            dataclasses.replace(scribe, hours=f"{later:02d}:00-{later:02d}:30")
        )
        await rig.grant("p-1001", actions=("read", "write"))
        return await rig.check(WRITE, "POST"), await rig.check()

    write, read = run(go)
    assert write.reason == "risk_off_hours" and read.allowed
    assert read.risk is not None and read.risk.off_hours
    (detected,) = rig.events("threat_detected")
    assert (detected.detail["detector"], detected.detail["kind"]) == ("hours", "off_hours")


def test_the_token_facts_reach_policy(bundle: PolicyBundle, issuer: DemoIssuer) -> None:
    rig = make_rig(bundle, issuer)
    run(lambda: rig.grant("p-1001"))
    decision = run(lambda: rig.check(ttl=2400, jti=None))
    assert decision.risk == Risk(token_lifetime=2400, token_jti=False)
    kinds = sorted(e.detail["kind"] for e in rig.events("threat_detected"))
    assert kinds == ["long_lived_token", "token_without_jti"]


def test_an_unregistered_agent_in_a_chain_is_named(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    rig = make_rig(bundle, issuer)
    decision = run(lambda: rig.check(agents=("orchestrator", "ghost")))
    assert decision.reason == "agent_unregistered"
    (event,) = rig.events("threat_detected")
    assert (event.target, event.detail["kind"]) == ("ghost", "unregistered_agent")
    assert event.detail["evidence"] == {"chain": ["orchestrator", "ghost"]}


def test_checks_the_windows_cannot_count_are_counted_late_not_lost(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    """A sweep while the store refuses the windows (its grants still cached): counted when
    the store is back, at the checks' own times, and the line it crossed is judged then."""

    class Flaky(EmbeddedWindows):
        down = True

        async def record(self, batch: Any, spec: WindowSpec) -> list[Tally]:
            if self.down:
                raise StoreUnavailable("redis detection windows failed: ConnectionError")
            return await super().record(batch, spec)

    rig = make_rig(bundle, issuer)
    windows = Flaky()
    rig.monitor.windows = rig.monitor.responder.windows = windows
    patients = [f"p-{i}" for i in range(30)]

    async def go() -> tuple[list[Decision], bool, Decision]:
        await rig.grant(*patients)
        swept = [await rig.check(f"/patients/{p}/records") for p in patients]
        not_yet = (await rig.agents.get_agent("scribe") or scribe).status
        windows.down = False
        assert await rig.monitor.flush()
        await rig.monitor.responder.drain()
        return swept, not_yet == "active", await rig.check("/patients/p-0/records")

    scribe = bundle.agents["scribe"]
    swept, unjudged, after = run(go)
    assert all(d.allowed for d in swept) and unjudged  # every decision made, nothing judged
    assert rig.observer.window_failures >= 30
    assert after.reason == "agent_suspended"
    (detected,) = rig.events("threat_detected")
    assert detected.detail["decision_id"] == swept[25].decision_id  # the 26th, as it happened


def test_checks_answered_in_handler_threads_are_counted(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    """The threaded server answers a cached decision in the handler's thread
    (`Pipeline.check_now`), where no event loop runs: observing it there raised
    (`asyncio.get_running_loop`). It is queued, and the loop's flusher counts it."""
    rig = make_rig(bundle, issuer)
    patients = [f"p-{i}" for i in range(30)]

    async def decide() -> list[Decision]:
        await rig.grant(*patients)
        rig.pipeline.detect = None  # decided here, observed below from threads
        decided = [await rig.check(f"/patients/{p}/records") for p in patients]
        rig.pipeline.detect = rig.monitor
        return decided

    decided = run(decide)
    errors: list[RuntimeError] = []

    def observe(batch: list[Decision]) -> None:
        try:
            for decision in batch:
                rig.monitor.observe(decision)
        except RuntimeError as err:  # what the handler thread would have raised
            errors.append(err)

    threads = [threading.Thread(target=observe, args=(decided[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def on_the_loop() -> Decision:
        await rig.monitor.flush()
        await rig.monitor.responder.drain()
        return await rig.check("/patients/p-0/records")

    assert run(on_the_loop).reason == "agent_suspended"  # all 30 counted: over the line
    (detected,) = rig.events("threat_detected")
    assert detected.detail["evidence"]["count"] >= 26


# --- the detectors, judged alone --------------------------------------------------------------


def _seen(
    allowed: bool = True, reason: str = "allowed", risk: Risk | None = None, **obs: Any
) -> Seen:
    decision = Decision(
        decision_id="d-1", allowed=allowed, status=200 if allowed else 403, reason=reason,
        detail="", chain=Chain("dr-alice", ("scribe",)), intent=Intent(PURPOSE, "t", "x"),
        route=RouteMatch("read", EntityRef("Records", "p-1"), (EntityRef("Patient", "p-1"),),
                         "/patients/{patient}/records", True),
        token_digest="ab" * 32, risk=risk,
    )  # fmt: skip
    return Seen.of(
        Observation(agent="scribe", user="dr-alice", at=1.0, event="d-1", **obs), decision
    )


def kinds(seen: Seen, tally: Tally, s: DetectSettings = DEFAULTS) -> list[str]:
    return [d.kind for d in detectors.judge(seen, tally, s)]


@pytest.mark.parametrize(
    ("requests", "baseline", "fires"),
    [(300, 0.0, False), (301, 0.0, True), (301, 30.1, False), (302, 30.1, True), (5000, 0.0, True)],
)
def test_rate_needs_both_the_floor_and_the_factor(
    requests: int, baseline: float, fires: bool
) -> None:
    assert kinds(_seen(), Tally(requests=requests, baseline=baseline)) == (
        ["requests"] if fires else []
    )


def test_probing_counts_only_on_a_denial() -> None:
    busy = Tally(denials=50, token_denials=50)
    assert kinds(_seen(), busy) == []
    assert kinds(_seen(False, "no_grant", denial=True, token="ab" * 32), busy) == [
        "agent_denials", "token_denials",
    ]  # fmt: skip


def test_novelty_waits_for_the_learning_period_but_a_reused_txn_never_does() -> None:
    new = Tally(new_habit=True, new_chain=True, learned=False, txn_owner="dr-bob scribe")
    assert kinds(_seen(habit="read Records", chain="scribe"), new) == ["txn_reused"]
    learned = dataclasses.replace(new, learned=True)
    assert kinds(_seen(habit="read Records", chain="scribe"), learned) == [
        "new_habit", "new_chain", "txn_reused",
    ]  # fmt: skip
    assert kinds(_seen(), learned, DetectSettings(novelty_learning=0)) == ["txn_reused"]


def test_breadth_per_user_only_when_configured() -> None:
    wide = Tally(patients=10, user_patients=10)
    assert kinds(_seen(), wide) == []
    assert kinds(_seen(), wide, DetectSettings(breadth_user_patients=9)) == ["user_patients"]
    assert kinds(_seen(), wide, DetectSettings(breadth_patients=9)) == ["patients"]


def test_every_detection_names_its_kind_from_the_closed_set() -> None:
    found: list[Detection] = detectors.judge(
        _seen(False, "no_grant", Risk(off_hours=True, token_lifetime=9999, token_jti=False),
              denial=True, token="ab" * 32, habit="read Records", chain="scribe"),
        Tally(patients=99, user_patients=99, requests=9999, denials=99, token_denials=99,
              new_habit=True, new_chain=True, learned=True, txn_owner="x y"),
        DetectSettings(breadth_user_patients=1),
    )  # fmt: skip
    assert {(d.detector, d.kind) for d in found} == {
        (detector, kind) for detector, kinds in detectors.KINDS.items() for kind in kinds
    } - {("hygiene", "unregistered_agent")}


# --- the server's wiring ----------------------------------------------------------------------


def test_build_wires_the_example_and_a_cached_allow_never_outlives_a_containment(
    tmp_path: Path,
) -> None:
    """The decision cache keys on local containments: while the store still refuses the
    suspension, an identical request in the same second is refused, not served from cache."""
    issuer = DemoIssuer("ES256", kid="wiring")
    path = devstack.write_config(tmp_path, issuer.write_jwks(tmp_path / "keys" / "jwks.json"))
    app = app_module.build(config.load(path, environ={}), CollectorRegistry())
    assert app.monitor is not None and app.settings.detect.breadth_response == "suspend"
    assert app.access.containment is app.monitor.responder  # access requests ask it
    refusals = [3]
    original = app.agents.replace_agent

    async def refusing(current: Agent, new: Agent) -> bool:
        if refusals[0]:
            refusals[0] -= 1
            raise StoreUnavailable("redis write failed: ConnectionError")
        return await original(current, new)

    app.agents.replace_agent = refusing  # type: ignore[method-assign]
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    monitor = app.monitor

    async def go() -> list[str]:
        app.audit.open()
        try:
            await app.seed_registry(app.pipeline.bundle)
            now = int(time.time())
            patients = [f"p-{i}" for i in range(26)]
            await app.store.put(Grant("g-1", "scribe", "dr-alice", ("read",),
                                      tuple(f'Patient::"{p}"' for p in patients), PURPOSE, "t",
                                      now, now + 900))  # fmt: skip
            for p in patients[1:]:
                await app.pipeline.check(check_input(token, path=f"/patients/{p}/records"))
                await monitor.flush()
            cached = await app.pipeline.check(check_input(token, path="/patients/p-0/records"))
            await app.pipeline.check(check_input(token, path="/patients/p-0/records"))  # a hit
            await monitor.flush()
            await asyncio.sleep(0)  # contained here; the store refuses the suspension
            again = await app.pipeline.check(check_input(token, path="/patients/p-0/records"))
            await monitor.close()
            return [cached.reason, again.reason]
        finally:
            await app.audit.close()

    assert run(go) == ["allowed", "agent_suspended"]
    hits = app.metrics.cache_requests.labels("decisions", "hit")._value.get()
    assert hits >= 1


def test_a_cached_decision_never_outlives_the_risk_values_its_policy_read(
    bundle: PolicyBundle, issuer: DemoIssuer
) -> None:
    """A write allowed and cached, then a burst of denials: the same write, in the same
    second, is decided again (and refused by `probing-agents-never-write`), not served
    from the decision cache with the values it was first decided on."""
    rig = make_rig(bundle, issuer)
    rig.pipeline.decisions = DecisionCache(lambda: rig.monitor.generation)
    token = issuer.access_token("dr-alice", ["scribe"], purpose=PURPOSE)
    write = check_input(token, method="POST", path=WRITE)

    async def go() -> list[str]:
        await rig.grant("p-1001", actions=("read", "write"))
        reasons = [(await rig.pipeline.check(write)).reason]
        reasons.append((await rig.pipeline.check(write)).reason)  # served from the cache
        for i in range(11):
            assert (await rig.check(f"/patients/p-{i}/records")).reason == "no_grant"
        reasons.append((await rig.pipeline.check(write)).reason)
        return reasons

    assert run(go) == ["allowed", "allowed", "risk_probing"]
