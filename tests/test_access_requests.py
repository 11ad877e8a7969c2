"""authz.access.requests in process: the shipped approval policies, embedded stores, the real
pipeline. Each rule of the lifecycle, each rule of who may decide, and that bad input changes
nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from authz.access.asks import Ask
from authz.access.people import Approver
from authz.access.requests import AccessRequests
from authz.audit.receipts import Unsigned
from authz.audit.records import Committed, EventRecord, MemoryAudit, Record
from authz.check.pipeline import Caller, Pipeline
from authz.config import AccessSettings
from authz.dev.tokens import DemoIssuer
from authz.errors import AccessRequestError, AuditUnavailable, StoreUnavailable
from authz.model import DEFAULT_TIERS, AccessRequest, CheckInput
from authz.policy.load import PolicyBundle
from authz.reasons import Reason
from authz.stores.embedded import EmbeddedGrantStore, SeededRegistry
from authz.stores.requests import EmbeddedAccessStore
from tests.conftest import Clock, PipelineFactory, check_input

T = TypeVar("T")
RECONCILE = "medication-reconciliation"
DOCUMENT = "clinical-documentation"
MEDS = 'Medications::"p-1001"'
NOTES = 'Notes::"p-1001"'
ALICE = Approver("dr-alice", admin=False)
ADMIN = Approver("ops-admin", admin=True)


@dataclass
class Seen:
    """What the desk told its observer and its notifier."""

    outcomes: list[str] = field(default_factory=list)
    notified: list[tuple[str, str]] = field(default_factory=list)

    def access_outcome(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    def break_glass(self) -> None:
        self.outcomes.append("break_glass")

    def notify(self, event: str, request: AccessRequest) -> None:
        self.notified.append((event, request.id))


class Refusing(MemoryAudit):
    """A trail that takes nothing."""

    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        return Committed(False)


@dataclass
class Desk:
    requests: AccessRequests
    pipeline: Pipeline
    grants: EmbeddedGrantStore
    store: EmbeddedAccessStore
    audit: MemoryAudit
    clock: Clock
    issuer: DemoIssuer
    seen: Seen

    def token(self, agents: list[str], purpose: str = RECONCILE, **claims: Any) -> str:
        return self.issuer.access_token("dr-alice", agents, purpose=purpose, **claims)

    async def caller(self, agents: list[str], purpose: str = RECONCILE, **claims: Any) -> Caller:
        token = self.token(agents, purpose, **claims)
        headers = {"authorization": [f"Bearer {token}"]}
        return await self.pipeline.identify(CheckInput("", "", "", headers))

    async def ask(self, agents: list[str], ask: Ask, **claims: Any) -> AccessRequest:
        return await self.requests.request(await self.caller(agents, ask.purpose, **claims), ask)

    def events(self) -> list[str]:
        return [r.event for r in self.audit.records if isinstance(r, EventRecord)]


@pytest.fixture
def make_desk(
    make_pipeline: PipelineFactory,
    bundle: PolicyBundle,
    issuer: DemoIssuer,
    clock: Clock,
) -> Callable[..., Desk]:
    def factory(audit: MemoryAudit | None = None, **settings: Any) -> Desk:
        grants = EmbeddedGrantStore(clock)
        trail = audit or MemoryAudit()
        pipeline = make_pipeline(store=grants, audit=MemoryAudit())
        store = EmbeddedAccessStore(clock)
        seen = Seen()
        requests = AccessRequests(
            store=store,
            grants=grants,
            registry=SeededRegistry(bundle.agents),
            bundle=lambda: bundle,
            audit=trail,
            settings=AccessSettings(**settings),
            max_ttl=8 * 3600,
            tiers=DEFAULT_TIERS,
            clock=clock,
            notifier=seen,
            observer=seen,
        )
        return Desk(requests, pipeline, grants, store, trail, clock, issuer, seen)

    return factory


@pytest.fixture
def desk(make_desk: Callable[..., Desk]) -> Desk:
    return make_desk()


def run(awaitable: Awaitable[T]) -> T:
    return asyncio.run(awaitable)  # type: ignore[arg-type]


def reconcile(ttl: int = 900, uses: int = 50, **extra: Any) -> Ask:
    return Ask("read", MEDS, RECONCILE, ttl, uses, **extra)


def note(**extra: Any) -> Ask:
    return Ask("write", NOTES, DOCUMENT, 600, **extra)


# --- approved at once -----------------------------------------------------------------------


def test_the_reconciler_is_approved_at_once_and_its_grant_works(desk: Desk) -> None:
    async def go() -> None:
        made = await desk.ask(["med-reconciler"], reconcile(txn="adm-1"), txn="adm-1")
        assert (made.status, made.decided_by) == (
            "approved",
            "policy:med-reconciler-reads-medications",
        )
        grant = await desk.grants.get(made.grant_id)
        assert grant is not None
        assert (grant.txn, grant.request_id, grant.max_uses) == ("adm-1", made.id, 50)
        assert grant.issued_by == made.decided_by and grant.expires_at - grant.issued_at == 900
        token = desk.token(["med-reconciler"], txn="adm-1")
        allowed = await desk.pipeline.check(check_input(token, path="/patients/p-1001/medications"))
        assert allowed.allowed and allowed.grant is not None and allowed.grant.id == grant.id

    run(go())
    assert desk.events() == ["access_requested", "access_approved", "grant_issued"]
    assert desk.seen.outcomes == ["approved_by_policy"]


def test_over_a_policy_limit_is_refused_naming_it_and_grants_nothing(desk: Desk) -> None:
    async def go() -> AccessRequest:
        return await desk.ask(["med-reconciler"], reconcile(ttl=3600))

    made = run(go())
    assert (made.status, made.outcome, made.limit) == (
        "refused",
        "ttl_over_limit",
        "ttl_seconds <= 900",
    )
    assert made.decided_by == "policy:medication-reconciliation-at-most-15-minutes"
    assert "ttl_seconds <= 900" in made.detail
    assert run(desk.grants.list()) == []
    assert desk.events() == ["access_requested", "access_refused"]


def test_unlimited_uses_are_over_the_limit(desk: Desk) -> None:
    made = run(desk.ask(["med-reconciler"], reconcile(uses=0)))
    assert (made.outcome, made.limit) == ("uses_over_limit", "max_uses <= 50")


# --- a person decides -----------------------------------------------------------------------


def test_a_note_waits_for_the_clinician_who_approves_it(desk: Desk) -> None:
    async def go() -> None:
        made = await desk.ask(["scribe"], note())
        assert (made.status, made.approvers) == ("pending", ("user:dr-alice",))
        assert await desk.grants.list() == []
        approved = await desk.requests.approve(made.id, ALICE)
        assert (approved.status, approved.decided_by) == ("approved", "dr-alice")
        token = desk.token(["scribe"], purpose=DOCUMENT)
        decision = await desk.pipeline.check(
            check_input(token, method="POST", path="/patients/p-1001/notes")
        )
        assert decision.allowed and decision.grant is not None
        assert decision.grant.issued_by == "dr-alice"

    run(go())
    assert desk.seen.notified[0][0] == "pending"
    assert desk.events() == [
        "access_requested",
        "access_pending",
        "access_approved",
        "grant_issued",
    ]
    assert desk.seen.outcomes == ["pending", "approved"]


@pytest.mark.parametrize(
    ("approver", "says"),
    [
        (ADMIN, "the approval policies let user:dr-alice decide"),
        (Approver("bob", admin=False), "no access request"),  # not his to see
        (Approver("scribe", admin=True), "cannot decide its own request"),
        (Approver("dr-alice", admin=False, roles=frozenset({"x"})), ""),
    ],
)
def test_only_whom_policy_names_may_approve(desk: Desk, approver: Approver, says: str) -> None:
    made = run(desk.ask(["scribe"], note()))
    if not says:  # dr-alice, with a role that changes nothing
        assert run(desk.requests.approve(made.id, approver)).status == "approved"
        return
    with pytest.raises(AccessRequestError) as err:
        run(desk.requests.approve(made.id, approver))
    assert err.value.code in ("permission_denied", "not_found") and says in err.value.detail
    assert run(desk.store.get_request(made.id)) == made  # nothing changed
    assert run(desk.grants.list()) == []


def test_a_role_named_by_policy_lets_an_admin_holding_it_approve(desk: Desk) -> None:
    made = run(desk.ask(["dictation-vendor", "med-reconciler"], reconcile()))
    assert made.approvers == ("role:privacy-officer", "user:dr-alice")
    roles = frozenset({"privacy-officer"})
    with pytest.raises(AccessRequestError, match="approves only for themselves"):
        run(desk.requests.approve(made.id, Approver("officer-1", admin=False, roles=roles)))
    officer = Approver("officer-2", admin=True, roles=roles)
    assert run(desk.requests.approve(made.id, officer)).status == "approved"


def test_an_approver_may_only_shorten_the_grant(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    with pytest.raises(AccessRequestError, match="may only shorten"):
        run(desk.requests.approve(made.id, ALICE, ttl=3600))
    approved = run(desk.requests.approve(made.id, ALICE, ttl=60))
    grant = run(desk.grants.get(approved.grant_id))
    assert grant is not None and grant.expires_at - grant.issued_at == 60


def test_a_denied_request_cannot_be_approved_after(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    with pytest.raises(AccessRequestError, match="needs a reason"):
        run(desk.requests.deny(made.id, ALICE, " "))
    denied = run(desk.requests.deny(made.id, ALICE, "not this patient"))
    assert (denied.status, denied.detail, denied.decided_by) == (
        "denied",
        "not this patient",
        "dr-alice",
    )
    with pytest.raises(AccessRequestError) as err:
        run(desk.requests.approve(made.id, ALICE))
    assert err.value.code == "failed_precondition"
    assert "already denied by `dr-alice`" in err.value.detail


def test_two_approvals_at_once_make_one_grant(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    officer = Approver("dr-alice", admin=True)

    async def both() -> list[Any]:
        return await asyncio.gather(  # type: ignore[return-value]
            desk.requests.approve(made.id, ALICE),
            desk.requests.approve(made.id, officer),
            return_exceptions=True,
        )

    results = run(both())
    won = [r for r in results if isinstance(r, AccessRequest)]
    lost = [r for r in results if isinstance(r, AccessRequestError)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].code == "failed_precondition"
    assert [g.id for g in run(desk.grants.list())] == [won[0].grant_id]


def test_an_undecided_request_expires(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    desk.clock.now += 301
    assert run(desk.requests.expire_due()) == 1
    found = run(desk.requests.get(made.id, ALICE))
    assert (found.status, found.outcome, found.decided_by) == ("expired", "expired", "lasthop")
    with pytest.raises(AccessRequestError, match="already expired"):
        run(desk.requests.approve(made.id, ALICE))
    assert desk.events()[-1] == "access_expired"
    assert run(desk.requests.expire_due()) == 0


def test_a_request_expires_when_read_past_its_deadline(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    desk.clock.now += 301
    with pytest.raises(AccessRequestError, match="already expired"):
        run(desk.requests.approve(made.id, ALICE))


def test_the_agent_sees_its_own_requests_and_no_one_else_does(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    mine = run(desk.caller(["scribe"], DOCUMENT))
    assert run(desk.requests.get(made.id, mine)) == made
    for stranger in (run(desk.caller(["med-reconciler"])), Approver("bob", admin=False)):
        with pytest.raises(AccessRequestError) as err:
            run(desk.requests.get(made.id, stranger))
        assert err.value.code == "not_found"
    assert [r.id for r in run(desk.requests.list(ALICE, status="pending"))] == [made.id]
    assert run(desk.requests.list(Approver("bob", admin=False))) == []


def test_waiting_returns_once_a_person_decides(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    mine = run(desk.caller(["scribe"], DOCUMENT))

    async def go() -> AccessRequest:
        waiting = asyncio.ensure_future(desk.requests.wait(made.id, mine, 30))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await desk.requests.approve(made.id, ALICE)
        return await waiting

    assert run(go()).status == "approved"


# --- tasks ----------------------------------------------------------------------------------


def test_ending_the_task_revokes_its_grants_and_refuses_new_ones(desk: Desk) -> None:
    async def go() -> None:
        made = await desk.ask(["med-reconciler"], reconcile(txn="adm-7"), txn="adm-7")
        pending = await desk.ask(["scribe"], note(txn="adm-7"), txn="adm-7")
        token = desk.token(["med-reconciler"], txn="adm-7")
        meds = check_input(token, path="/patients/p-1001/medications")
        assert (await desk.pipeline.check(meds)).allowed
        other = desk.token(["med-reconciler"], txn="adm-8")
        wrong = await desk.pipeline.check(check_input(other, path="/patients/p-1001/medications"))
        assert wrong.reason == Reason.TASK_MISMATCH
        ended = await desk.requests.end_task(
            "adm-7", await desk.caller(["orchestrator"], txn="adm-7")
        )
        assert (ended.grants, ended.requests) == ((made.grant_id,), (pending.id,))
        assert (await desk.pipeline.check(meds)).reason == Reason.NO_GRANT
        assert (await desk.store.get_request(pending.id)) is not None
        with pytest.raises(AccessRequestError, match="has ended"):
            await desk.ask(["med-reconciler"], reconcile(txn="adm-7"), txn="adm-7")

    run(go())
    assert desk.events()[-3:] == ["access_cancelled", "grant_revoked", "task_ended"]


def test_an_agent_outside_the_task_may_not_end_it(desk: Desk) -> None:
    run(desk.ask(["med-reconciler"], reconcile(txn="adm-9"), txn="adm-9"))
    outsider = run(desk.caller(["scribe"], DOCUMENT, txn="other"))
    with pytest.raises(AccessRequestError) as err:
        run(desk.requests.end_task("adm-9", outsider))
    assert err.value.code == "permission_denied"
    assert len(run(desk.grants.list())) == 1


def test_a_grant_approved_after_its_task_ended_is_withdrawn(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note(txn="adm-3"), txn="adm-3"))
    run(desk.store.end_task("adm-3", "dr-alice", int(desk.clock.now) + 60))  # another replica
    with pytest.raises(AccessRequestError, match="has ended"):
        run(desk.requests.approve(made.id, ALICE))
    assert run(desk.grants.list()) == []
    assert run(desk.store.get_request(made.id)) == made


# --- break-glass, containment, the trail ----------------------------------------------------


def test_break_glass_is_approved_by_policy_short_flagged_and_alerted(desk: Desk) -> None:
    ask = Ask("read", 'Records::"p-1001"', DOCUMENT, 900, break_glass=True, reason="code blue")
    made = run(desk.ask(["scribe"], ask))
    assert (made.status, made.decided_by) == ("approved", "policy:break-glass-reads-at-once")
    grant = run(desk.grants.get(made.grant_id))
    assert grant is not None and grant.break_glass
    assert ("break_glass", made.id) in desk.seen.notified
    assert desk.events()[:2] == ["access_requested", "break_glass"]
    long = run(desk.ask(["scribe"], dataclasses.replace(ask, ttl_seconds=3600)))
    assert (long.status, long.limit) == ("refused", "ttl_seconds <= 900")
    assert "break_glass_max_ttl" in long.detail
    assert desk.events()[-3:] == ["access_requested", "break_glass", "access_refused"]


def test_break_glass_counts_even_when_refused(desk: Desk) -> None:
    ask = Ask("read", 'Records::"p-1001"', DOCUMENT, 3600, break_glass=True, reason="code blue")
    run(desk.ask(["scribe"], ask))
    assert desk.seen.outcomes == ["refused", "break_glass"]
    assert [e for e, _ in desk.seen.notified] == ["break_glass"]


def test_containment_sends_what_policy_approves_to_a_person(desk: Desk) -> None:
    class Contained:
        async def requires_person(self, agents: tuple[str, ...]) -> bool:
            return "med-reconciler" in agents

    desk.requests.containment = Contained()
    made = run(desk.ask(["med-reconciler"], reconcile()))
    assert (made.status, made.approvers) == ("pending", ("user:dr-alice",))
    assert "contained" in made.detail


def test_what_the_trail_cannot_record_is_not_granted(make_desk: Callable[..., Desk]) -> None:
    desk = make_desk(audit=Refusing())
    with pytest.raises(AuditUnavailable):
        run(desk.ask(["med-reconciler"], reconcile()))
    assert run(desk.grants.list()) == []
    [request] = run(desk.store.list_requests())
    assert request.status == "cancelled"
    with pytest.raises(AuditUnavailable):
        run(desk.ask(["scribe"], note()))
    assert [r.status for r in run(desk.store.list_requests())] == ["cancelled", "cancelled"]


# --- bad input changes nothing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ask", "says"),
    [
        (Ask("delete", MEDS, RECONCILE, 60), "unknown action `delete`"),
        (Ask("read", "Medications:p-1001", RECONCILE, 60), "is not a Cedar entity reference"),
        (Ask("read", 'Pharmacy::"x"', RECONCILE, 60), "resource type `Pharmacy` is not one"),
        (Ask("read", MEDS, RECONCILE, 9 * 3600), "grants.max_ttl"),
        (Ask("read", MEDS, RECONCILE, 0), "ttl must be between"),
        (Ask("read", MEDS, RECONCILE, 60, -1), "max_uses must be"),
        (Ask("read", MEDS, "", 60), "is not a purpose name"),
        (Ask("read", MEDS, RECONCILE, 60, txn="a b"), "is not a task id"),
        (Ask("read", MEDS, RECONCILE, 60, break_glass=True), "needs a reason"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(desk: Desk, ask: Ask, says: str) -> None:
    with pytest.raises(AccessRequestError) as err:
        run(desk.ask(["med-reconciler"], ask))
    assert err.value.code == "invalid_argument" and says in err.value.detail
    assert run(desk.store.list_requests()) == [] and run(desk.grants.list()) == []
    assert desk.audit.records == []


def test_a_user_token_with_no_act_cannot_ask(desk: Desk) -> None:
    with pytest.raises(AccessRequestError) as err:
        run(desk.ask([], reconcile()))
    assert err.value.code == "permission_denied" and "delegated token" in err.value.detail


def test_a_request_id_that_does_not_exist(desk: Desk) -> None:
    for call in (
        desk.requests.approve("r-nope", ALICE),
        desk.requests.deny("r-nope", ALICE, "no"),
        desk.requests.get("r-nope", ADMIN),
    ):
        with pytest.raises(AccessRequestError) as err:
            run(call)
        assert (err.value.code, err.value.detail) == ("not_found", "no access request `r-nope`")


def test_a_slow_store_read_while_waiting_does_not_end_the_wait(desk: Desk) -> None:
    made = run(desk.ask(["scribe"], note()))
    mine = run(desk.caller(["scribe"], DOCUMENT))
    real = desk.store.get_request
    failures = [2]

    async def flaky(request_id: str) -> AccessRequest | None:
        if failures[0]:
            failures[0] -= 1
            raise StoreUnavailable("redis read failed: TimeoutError")
        return await real(request_id)

    desk.store.get_request = flaky  # type: ignore[method-assign]

    async def go() -> AccessRequest:
        waiting = asyncio.ensure_future(desk.requests.wait(made.id, mine, 30))
        await asyncio.sleep(0.3)  # both failures are behind it
        desk.store.get_request = real  # type: ignore[method-assign]
        await desk.requests.approve(made.id, ALICE)
        return await waiting

    assert run(go()).status == "approved" and failures == [0]
