"""Access requests: an agent asks, the approval policies decide at once, people decide the rest.

    request  -> check the input (a bad one is refused and nothing is written)
             -> the approval policies (access.approval) say approve, person or refuse
             -> approve: a grant issued at once, decided by that policy
                person:  pending; the webhook is told; a person the policies name
                         approves or denies it within `access.pending_ttl`, or it expires
                refuse:  nothing granted; the reason names the policy and any limit
    break-glass -> as any request, but never longer than `access.break_glass_max_ttl`,
                and always alerted: a metric, the webhook and an audit event

Proof: every step is an audit event (access_requested, access_pending,
access_approved, access_refused, access_denied, access_expired,
access_cancelled, break_glass, grant_issued, grant_revoked, task_ended). A
step that grants access is undone when the trail cannot record it; one that
takes access away stands, and the failure is logged.

Fleet: requests live in the shared store and change only by compare and set,
so a request made on one replica is decided on any other, and of two people
deciding at once one wins and the other is told who did.

What this reports and consults beside the stores (metrics, the webhook,
containment) is in `access.hooks`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from authz.access import approval, people, tasks
from authz.access.approval import Verdict
from authz.access.asks import MAX_REASON, Ask, check_ask
from authz.access.events import Recorder
from authz.access.hooks import AccessObserver, Containment, NoContainment, Notifier
from authz.access.issue import GrantRequest, new_grant
from authz.access.people import Approver, Viewer
from authz.audit.records import AuditSink, EventRecord
from authz.check.pipeline import Caller
from authz.config import AccessSettings
from authz.errors import (
    AccessRequestError,
    AgentNotActive,
    AuditUnavailable,
    GrantRequestError,
    StoreUnavailable,
)
from authz.model import AccessRequest, Grant, RiskTiers
from authz.policy.load import PolicyBundle
from authz.stores.protocols import AccessStore, AgentRegistry, GrantStore

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 0.1
SERVER = "lasthop"


@dataclass(frozen=True, slots=True)
class TaskEnded:
    txn: str
    grants: tuple[str, ...]  # revoked
    requests: tuple[str, ...]  # pending requests cancelled


class AccessRequests:
    def __init__(
        self,
        *,
        store: AccessStore,
        grants: GrantStore,
        registry: AgentRegistry,
        bundle: Callable[[], PolicyBundle],
        audit: AuditSink,
        settings: AccessSettings,
        max_ttl: int,
        tiers: RiskTiers,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        observer: AccessObserver | None = None,
        containment: Containment | None = None,
    ) -> None:
        self._store = store
        self._grants = grants
        self._registry = registry
        self._bundle = bundle
        self._events = Recorder(audit, clock)
        self._settings = settings
        self._max_ttl = max_ttl
        self._tiers = tiers
        self._clock = clock
        self._notifier = notifier
        self._observer = observer
        self.containment: Containment = containment or NoContainment()

    # --- asking ---------------------------------------------------------------------------

    async def request(self, caller: Caller, ask: Ask) -> AccessRequest:
        """Decide a new request; raises AccessRequestError on bad input (nothing written)."""
        bundle = self._bundle()
        now = int(self._clock())
        asked = self._new(caller, ask, bundle, now)
        if ask.txn and await self._store.task_ended(ask.txn, asked.user):
            raise tasks.ended(ask.txn)
        verdict = await self._verdict(asked, caller, bundle, now)
        if verdict.outcome == "refuse":
            made = await self._refuse(asked, verdict, now)
        elif verdict.outcome == "person":
            made = await self._wait_for_person(asked, verdict)
        else:
            made = await self._approve_at_once(asked, verdict, now)
        if made.break_glass:
            self._alert(made)  # with what became of it
        return made

    def _new(self, caller: Caller, ask: Ask, bundle: PolicyBundle, now: int) -> AccessRequest:
        chain = caller.chain
        if not chain.agents:
            raise AccessRequestError(
                f"`{chain.user}` presents a token with no `act`: an agent asks for access "
                "with its own delegated token",
                "permission_denied",
            )
        resource = check_ask(ask, bundle, self._max_ttl)
        return AccessRequest(
            id=f"r-{secrets.token_hex(8)}",
            agent=chain.actor,
            user=chain.user,
            chain=chain.agents,
            action=ask.action,
            resource=resource,
            purpose=ask.purpose,
            ttl_seconds=ask.ttl_seconds,
            max_uses=ask.max_uses,
            txn=ask.txn,
            reason=ask.reason,
            break_glass=ask.break_glass,
            created_at=now,
            expires_at=now + self._settings.pending_ttl,
            owner=caller.agents[-1].owner if caller.agents else "",
        )

    async def _verdict(
        self, asked: AccessRequest, caller: Caller, bundle: PolicyBundle, now: int
    ) -> Verdict:
        most = self._settings.break_glass_max_ttl
        if asked.break_glass and asked.ttl_seconds > most:
            return Verdict(
                "refuse",
                (),
                reason="ttl_over_limit",
                limit=f"ttl_seconds <= {most}",
                detail=f"break-glass access lasts at most {most} s (access.break_glass_max_ttl)",
            )
        verdict = approval.evaluate(
            bundle, asked, caller.agents, caller.intent.purpose, self._tiers, now
        )
        if verdict.outcome == "approve" and await self.containment.requires_person(asked.chain):
            verdict = replace(
                verdict,
                outcome="person",
                approvers=approval.resolve(("user",), asked.user, asked.owner),
                detail="an agent of the chain is contained: the user decides",
            )
        return verdict

    async def _refuse(self, asked: AccessRequest, verdict: Verdict, now: int) -> AccessRequest:
        refused = replace(
            asked,
            status="refused",
            policies=verdict.policies,
            decided_by=_policy(verdict),
            decided_at=now,
            outcome=verdict.reason,
            detail=verdict.detail,
            limit=verdict.limit,
        )
        await self._store.add_request(refused)
        await self._events.commit_or_raise(
            *self._requested(refused),
            self._events.request("access_refused", refused.decided_by, refused, verdict),
        )
        self._count("refused")
        return refused

    async def _wait_for_person(self, asked: AccessRequest, verdict: Verdict) -> AccessRequest:
        pending = replace(
            asked, approvers=verdict.approvers, policies=verdict.policies, detail=verdict.detail
        )
        await self._store.add_request(pending)
        if not await self._events.commit(
            *self._requested(pending),
            self._events.request("access_pending", SERVER, pending, verdict),
        ):
            await self._close(
                pending, "cancelled", "audit_unavailable", "the trail cannot record it"
            )
            raise AuditUnavailable()
        self._notify("pending", pending)
        self._count("pending")
        return pending

    async def _approve_at_once(
        self, asked: AccessRequest, verdict: Verdict, now: int
    ) -> AccessRequest:
        by = _policy(verdict)
        grant = await self._grant(asked, by, asked.ttl_seconds, now)
        approved = replace(
            asked,
            status="approved",
            policies=verdict.policies,
            decided_by=by,
            decided_at=now,
            detail=verdict.detail,
            grant_id=grant.id,
        )
        await self._store.add_request(approved)  # first: a grant always has its request
        undone = replace(approved, status="cancelled", outcome="not_issued", detail="not issued")
        await self._issue(approved, undone, grant)
        if not await self._events.commit(
            *self._requested(asked),
            self._events.request("access_approved", by, approved, verdict),
            self._events.grant("grant_issued", by, grant),
        ):
            await self._withdraw(approved, undone, grant)
            raise AuditUnavailable()
        self._count("approved_by_policy")
        return approved

    # --- deciding -------------------------------------------------------------------------

    async def approve(self, request_id: str, approver: Approver, ttl: int = 0) -> AccessRequest:
        current = await self._open(request_id, approver, approving=True)
        if not 0 <= ttl <= current.ttl_seconds:
            raise AccessRequestError(
                f"ttl may only shorten the request: between 1 s and {current.ttl_seconds} s"
            )
        now = int(self._clock())
        grant = await self._grant(current, approver.sub, ttl or current.ttl_seconds, now)
        approved = replace(
            current,
            status="approved",
            decided_by=approver.sub,
            decided_at=now,
            detail=f"approved by `{approver.sub}`",
            grant_id=grant.id,
        )
        await self._swap(current, approved)
        await self._issue(approved, current, grant)
        if not await self._events.commit(
            self._events.request("access_approved", approver.sub, approved),
            self._events.grant("grant_issued", approver.sub, grant),
        ):
            await self._withdraw(approved, current, grant)
            raise AuditUnavailable()
        self._count("approved")
        return approved

    async def deny(self, request_id: str, approver: Approver, reason: str) -> AccessRequest:
        if not reason.strip() or len(reason) > MAX_REASON:
            raise AccessRequestError(f"a denial needs a reason of 1 to {MAX_REASON} characters")
        current = await self._open(request_id, approver, approving=False)
        denied = replace(
            current,
            status="denied",
            decided_by=approver.sub,
            decided_at=int(self._clock()),
            outcome="denied",
            detail=reason,
        )
        await self._swap(current, denied)
        await self._events.commit_or_log(
            self._events.request("access_denied", approver.sub, denied)
        )
        self._count("denied")
        return denied

    async def _open(self, request_id: str, approver: Approver, approving: bool) -> AccessRequest:
        """The pending request `approver` may decide; raises AccessRequestError otherwise."""
        current = await self.get(request_id, approver)
        if not current.pending:
            raise AccessRequestError(
                f"access request `{request_id}` is already {current.status}"
                + (f" by `{current.decided_by}`" if current.decided_by else ""),
                "failed_precondition",
            )
        problem = people.refusal(current, approver, approving)
        if problem:
            raise AccessRequestError(problem, "permission_denied")
        return current

    async def _swap(self, current: AccessRequest, new: AccessRequest) -> None:
        if not await self._store.replace_request(current, new):
            now = await self._store.get_request(current.id)
            status = f"{now.status} by `{now.decided_by}`" if now else "gone"
            raise AccessRequestError(
                f"access request `{current.id}` was decided meanwhile: {status}",
                "failed_precondition",
            )

    # --- reading --------------------------------------------------------------------------

    async def get(self, request_id: str, viewer: Viewer) -> AccessRequest:
        found = await self._store.get_request(request_id)
        if found is None or not people.may_see(found, viewer):
            raise AccessRequestError(f"no access request `{request_id}`", "not_found")
        return await self._expire_if_due(found)

    async def list(
        self, viewer: Viewer, status: str = "", user: str = ""
    ) -> builtins.list[AccessRequest]:
        found = []
        for request in await self._store.list_requests():
            if people.may_see(request, viewer) and (not user or request.user == user):
                request = await self._expire_if_due(request)
                if not status or request.status == status:
                    found.append(request)
        return found

    async def wait(self, request_id: str, viewer: Viewer, seconds: float) -> AccessRequest:
        """The request once decided, or as it is after `seconds` (at most max_wait_seconds).
        A read the store cannot answer is tried again until then."""
        deadline = time.monotonic() + min(seconds, self._settings.max_wait_seconds)
        while True:
            try:
                request = await self.get(request_id, viewer)
            except StoreUnavailable:  # a slow read while waiting: wait on, up to the deadline
                if time.monotonic() >= deadline:
                    raise
            else:
                if not request.pending or time.monotonic() >= deadline:
                    return request
            await asyncio.sleep(WAIT_POLL_SECONDS)

    # --- expiry ---------------------------------------------------------------------------

    async def expire_due(self) -> int:
        """Expire every pending request past its deadline; how many this call expired."""
        count = 0
        for request in await self._store.pending_requests():
            if request.expires_at <= self._clock():
                count += (await self._expire_if_due(request)).status == "expired"
        return count

    async def run(self, interval: float = 1.0) -> None:
        """Expire undecided requests as their time passes (each replica; one wins each).
        A store that cannot answer is logged once, until it answers again."""
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire_due()
                failing = False
            except StoreUnavailable as err:
                if not failing:
                    log.warning(
                        "access: cannot expire undecided requests: %s",
                        err.detail,
                        extra={"event": "access.expiry_unavailable"},
                    )
                failing = True
            except Exception:
                log.exception(
                    "access: expiring undecided requests failed",
                    extra={"event": "access.expiry_failed"},
                )

    async def _expire_if_due(self, request: AccessRequest) -> AccessRequest:
        if not request.pending or request.expires_at > self._clock():
            return request
        detail = f"no one decided within {self._settings.pending_ttl} s"
        expired = await self._close(request, "expired", "expired", detail)
        return expired or await self._store.get_request(request.id) or request

    async def _close(
        self, request: AccessRequest, status: str, outcome: str, detail: str
    ) -> AccessRequest | None:
        """pending -> expired or cancelled, recorded; None if someone else changed it first."""
        closed = replace(
            request,
            status=status,
            decided_by=SERVER,
            decided_at=int(self._clock()),
            outcome=outcome,
            detail=detail,
        )
        if not await self._store.replace_request(request, closed):
            return None
        await self._events.commit_or_log(self._events.request(f"access_{status}", SERVER, closed))
        self._count(status)
        return closed

    # --- tasks ----------------------------------------------------------------------------

    async def end_task(self, txn: str, who: Viewer) -> TaskEnded:
        """Revoke every grant bound to `txn` that `who` may end, and cancel its pending
        requests; the task stays ended for those users (see `access.people`)."""
        user = people.task_user(who)
        await tasks.may_end(self._store, self._grants, txn, who, user)
        requests = [
            r
            for r in await self._store.pending_requests()
            if r.txn == txn and (user is None or r.user == user)
        ]
        users = {user} if user is not None else await tasks.users(self._store, self._grants, txn)
        users.update(r.user for r in requests if user is None)
        until = int(self._clock()) + self._max_ttl
        actor = people.actor_of(who)
        revoked = await tasks.end(self._grants, self._store, txn, users, until)
        cancelled = [
            r.id
            for r in requests
            if await self._close(r, "cancelled", "task_ended", f"task `{txn}` ended")
        ]
        for grant in revoked:
            await self._events.commit_or_log(self._events.grant("grant_revoked", actor, grant))
        detail = {"users": sorted(users), "grants": [g.id for g in revoked], "requests": cancelled}
        await self._events.commit_or_log(self._events.event("task_ended", actor, txn, detail))
        return TaskEnded(txn, tuple(g.id for g in revoked), tuple(cancelled))

    # --- helpers --------------------------------------------------------------------------

    async def _grant(self, request: AccessRequest, issued_by: str, ttl: int, now: int) -> Grant:
        """The grant `request` asks for, checked as `grants issue` checks one: the agent
        registered and active now (a suspended one: failed_precondition)."""
        asked = GrantRequest(
            agent=request.agent,
            user=request.user,
            actions=(request.action,),
            resources=(request.resource,),
            purpose=request.purpose,
            ttl_seconds=ttl,
            max_uses=request.max_uses,
        )
        agent = await self._registry.get(request.agent)
        try:
            grant = new_grant(
                asked,
                issued_by,
                now,
                {request.agent: agent} if agent is not None else {},
                self._bundle().actions,
                self._max_ttl,
            )
        except AgentNotActive as err:
            raise AccessRequestError(
                f"{err}; its request cannot be approved", "failed_precondition"
            ) from None
        except GrantRequestError as err:
            raise AccessRequestError(str(err)) from None
        return replace(
            grant, txn=request.txn, request_id=request.id, break_glass=request.break_glass
        )

    async def _issue(self, approved: AccessRequest, revert: AccessRequest, grant: Grant) -> None:
        """Store the grant; if that fails, the request becomes `revert`."""
        try:
            await tasks.issue(self._grants, self._store, grant)
        except BaseException:
            await self._store.replace_request(approved, revert)
            raise

    async def _withdraw(self, approved: AccessRequest, revert: AccessRequest, grant: Grant) -> None:
        """An approval the trail could not record: the grant goes, the request becomes `revert`."""
        await self._grants.revoke(grant.id)
        await self._store.replace_request(approved, revert)

    def _requested(self, request: AccessRequest) -> builtins.list[EventRecord]:
        """The request's first events: `access_requested`, and `break_glass` for one."""
        kinds = (
            ("access_requested", "break_glass") if request.break_glass else ("access_requested",)
        )
        return [self._events.request(kind, request.agent, request) for kind in kinds]

    def _alert(self, request: AccessRequest) -> None:
        if self._observer:
            self._observer.break_glass()
        self._notify("break_glass", request)
        log.warning(
            "BREAK-GLASS access request %s: %s for %s, %s on %s: %s",
            request.id,
            request.agent,
            request.user,
            request.action,
            request.resource,
            request.reason,
            extra={"event": "access.break_glass"},
        )

    def _notify(self, event: str, request: AccessRequest) -> None:
        if self._notifier is not None:
            self._notifier.notify(event, request)

    def _count(self, outcome: str) -> None:
        if self._observer:
            self._observer.access_outcome(outcome)


def _policy(verdict: Verdict) -> str:
    return f"policy:{verdict.policies[0]}" if verdict.policies else SERVER
