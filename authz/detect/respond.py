"""Automatic responses to a detection, graduated; each does what the ones before it do.

    record    count it (`lasthop_detections_total`); the values stay in `context.risk`
    alert     + a `threat_detected` audit event and the signed webhook
    approve   + the agent's new access needs a person's approval for
                `detect.approval_ttl` (a flag in the store, `context.risk.approval_required`,
                and an `approval_required` event)
    suspend   + the agent is suspended fleet-wide (`agent_suspended` event, actor `lasthop`)
    revoke    + every grant it holds is revoked (a `grant_revoked` event each)

Below suspend, a detection fires at most once per agent and kind (and per
user, token or txn where the kind is) for `detect.cooldown`, fleet-wide: the
first replica to claim it in the store responds. Every event carries the
detector, the kind, the decision that crossed the line and the evidence
(window, count, threshold).

Containment (suspend, revoke) waits for no claim and is never lost: this
replica refuses the agent at once (the `risk` phase asks `contained`), then
the suspension is written by compare-and-set through the same store as every
admin change, retried until the store takes it, and only then is the local
refusal lifted. The replica whose compare-and-set suspends the agent records
it (the others find it suspended and stop). It starts the agent's windows
afresh, so an agent an admin resumes (`lasthop agents resume`, audited) is
judged anew. A narrowing change stands even when the trail cannot record it;
the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from authz.audit.records import AuditSink, EventRecord, grant_detail
from authz.codec import rfc3339
from authz.config import RESPONSES, DetectSettings
from authz.detect.detectors import Detection, DetectObserver
from authz.errors import StoreUnavailable
from authz.model import Agent, Grant
from authz.stores.cache import BoundedCache
from authz.stores.protocols import AgentStore, GrantStore
from authz.stores.windows import Windows

log = logging.getLogger(__name__)

ACTOR = "lasthop"
ALERT, APPROVE, SUSPEND, REVOKE = (
    RESPONSES.index(r) for r in ("alert", "approve", "suspend", "revoke")
)
ACTIONS = ("alert", "webhook", "approve", "suspend", "revoke", "audit")  # metric labels
CONTAIN_DEDUP_SECONDS = 5  # a containment under way is not started again from this replica
BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # retrying a containment the store refused
SWAP_ATTEMPTS = 50
CONTAINED_ENTRIES = 100_000

WEBHOOK_ATTEMPTS = 4  # tries per alert; the access webhook's backoff between them

T = TypeVar("T")


class Alerts(Protocol):
    """Where alerts are POSTed, signed (the access requests' webhook: Standard Webhooks)."""

    async def deliver(self, body: bytes) -> bool: ...


class WebhookReport:
    """The webhook's deliveries, counted as detection's `webhook` actions."""

    def __init__(self, observer: DetectObserver | None) -> None:
        self._observer = observer

    def webhook(self, result: str) -> None:
        if self._observer is not None and result != "retried":
            self._observer.acted("webhook", result == "delivered")


def alert_body(detail: dict[str, Any], now: float) -> bytes:
    """The webhook's JSON, in the access webhook's envelope."""
    body = {"type": "detection.threat_detected", "timestamp": rfc3339(now), "data": detail}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class Responder:
    def __init__(
        self,
        *,
        settings: DetectSettings,
        windows: Windows,
        agents: AgentStore,
        grants: GrantStore,
        audit: AuditSink,
        webhook: Alerts | None = None,
        observer: DetectObserver | None = None,
        clock: Callable[[], float] = time.time,
        refresh: Callable[[str], None] = lambda agent: None,
    ) -> None:
        """`refresh(agent)` drops this replica's cached copy of the agent (Redis caches)."""
        self.settings = settings
        self.windows = windows
        self.agents = agents
        self.grants = grants
        self.audit = audit
        self.webhook = webhook
        self.observer = observer
        self.clock = clock
        self.refresh = refresh
        self.generation = 0  # moves on with every local containment: a cache generation
        self._contained: BoundedCache[str, str] = BoundedCache(CONTAINED_ENTRIES)
        # claims this replica made or lost, until they expire: a detection that stays above
        # its line on every later check is not sent to the store again and again
        self._claimed: BoundedCache[tuple[str, str], bool] = BoundedCache(CONTAINED_ENTRIES)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def containing(self) -> bool:
        """Some agent is contained here (or was, its entry not yet swept)."""
        return len(self._contained) > 0

    def contained(self, agent: str) -> str | None:
        """The detector that contained `agent` on this replica, until the store has it."""
        return self._contained.get(agent)

    async def requires_person(self, agents: tuple[str, ...]) -> bool:
        """Access requests' containment hook: an agent of the chain flagged by an `approve`
        response (or higher) has its new access decided by a person, not at once. A store
        that cannot say is taken as yes."""
        for agent in agents:
            try:
                if await self.windows.flagged(agent):
                    return True
            except StoreUnavailable:
                return True
        return False

    def spawn(self, detection: Detection) -> None:
        """Respond in the background, unless this detection's claim is known to be taken."""
        key = (detection.agent, _claim_kind(detection))
        if key in self._claimed:
            return
        self._claimed.put(key, True, time.monotonic() + self._claim_seconds(detection))
        self._keep(self.respond(detection))

    def _level(self, d: Detection) -> tuple[str, int, bool]:
        """(the detector's response, its rank, whether it contains the agent)."""
        response: str = getattr(self.settings, f"{d.detector}_response")
        level = RESPONSES.index(response)
        return response, level, level >= SUSPEND and d.kind != "unregistered_agent"

    def _claim_seconds(self, d: Detection) -> int:
        return CONTAIN_DEDUP_SECONDS if self._level(d)[2] else self.settings.cooldown

    def _keep(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "detection response failed",
                exc_info=task.exception(),
                extra={"event": "detect.response_failed"},
            )

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def respond(self, d: Detection) -> str:
        """Carry out the detector's response; the response, or "" when another replica has it.

        The store changes come first (containment is the point); then the trail, in the
        order a reader needs: the detection, then what was done about it."""
        response, level, containing = self._level(d)
        suspended = None
        if containing:  # the compare-and-set decides which replica (if any) suspends
            try:
                suspended = await self._suspend(d)
            finally:  # done: the next crossing (after a resume) is contained again at once
                self._claimed.pop((d.agent, _claim_kind(d)))
            if suspended is None:
                return ""  # suspended already, by another replica or a person
        elif not await self._claim(d):
            return ""
        if self.observer:
            self.observer.detected(d.detector, d.kind, response)
        revoked = await self._revoke(d) if containing and level >= REVOKE else []
        if level >= APPROVE:
            await self._retry(
                "approve", lambda: self.windows.flag(d.agent, self.settings.approval_ttl)
            )
        if level < ALERT:
            return response
        detail = d.as_detail(response)
        await self._event("threat_detected", d.agent, detail, "alert")
        if self.webhook is not None:
            self._keep(self.webhook.deliver(alert_body(detail, self.clock())))
        if suspended is not None:
            await self._event(
                "agent_suspended", d.agent, {**_agent_detail(suspended), **detail}, "suspend"
            )
        for grant in revoked:
            await self._event(
                "grant_revoked", grant.id, {**grant_detail(grant), **detail}, "revoke"
            )
        if level >= APPROVE:
            until = rfc3339(self.clock() + self.settings.approval_ttl)
            await self._event("approval_required", d.agent, {**detail, "until": until}, "approve")
        return response

    async def _claim(self, d: Detection) -> bool:
        kind = _claim_kind(d)
        try:
            return await self.windows.claim(d.agent, kind, self._claim_seconds(d))
        except StoreUnavailable as err:
            log.warning(
                "cannot claim %s for %s (%s); responding anyway",
                kind,
                d.agent,
                err.detail,
                extra={"event": "detect.claim_failed"},
            )
            return True  # a repeated response is the safe side of a lost one

    # --- containment --------------------------------------------------------------------------

    async def _suspend(self, d: Detection) -> Agent | None:
        """Refuse here at once, then suspend in the store; the agent, or None if not active."""
        self._contained.put(d.agent, d.detector)
        self.generation += 1
        try:
            suspended = await self._retry("suspend", lambda: self._swap(d.agent))
            self.refresh(d.agent)
            await self._retry("suspend", lambda: self.windows.reset(d.agent))
        finally:
            self._contained.pop(d.agent)  # the store refuses it now (or it is not an agent)
            self.generation += 1
        if suspended is not None and self.observer:
            self.observer.contained(self.clock() - d.at)
        return suspended

    async def _swap(self, agent_id: str) -> Agent | None:
        """Suspend by compare-and-set; None if it is not an active registered agent."""
        for _ in range(SWAP_ATTEMPTS):
            current = await self.agents.get_agent(agent_id)
            if current is None or not current.registered or not current.active:
                return None
            new = dataclasses.replace(current, status="suspended")
            if await self.agents.replace_agent(current, new):
                return new
        raise StoreUnavailable(f"agent `{agent_id}` kept changing underneath")

    async def _revoke(self, d: Detection) -> list[Grant]:
        """Revoke every grant the agent holds; the grants revoked."""
        held = await self._retry("revoke", lambda: self.grants.list(agent=d.agent))
        revoked = []
        for grant in held:
            if await self._retry("revoke", _revoking(self.grants, grant.id)) is not None:
                revoked.append(grant)
        return revoked

    # --- helpers ------------------------------------------------------------------------------

    async def _retry(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        """Until the store takes it: a containment is never dropped."""
        attempt = 0
        while True:
            try:
                return await call()
            except StoreUnavailable as err:
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                log.error(
                    "detection: %s failed (%s); retrying in %s s",
                    action,
                    err.detail,
                    delay,
                    extra={"event": "detect.action_retried"},
                )
                if self.observer:
                    self.observer.acted(action, False)
                attempt += 1
                await asyncio.sleep(delay)

    async def _event(self, event: str, target: str, detail: dict[str, Any], action: str) -> None:
        """Record what was done; `action` is the metric label it is counted under."""
        record = EventRecord(
            event=event, actor=ACTOR, target=target, time=rfc3339(self.clock()), detail=detail
        )
        try:
            ok = bool(await self.audit.commit(record))
        except Exception:
            log.exception("audit sink failed for %s", event, extra={"event": "detect.audit_failed"})
            ok = False
        if not ok:
            log.error(
                "the trail cannot record %s for %s; the response stands",
                event,
                target,
                extra={"event": "detect.unrecorded"},
            )
        if self.observer:
            self.observer.acted(action, True)
            if not ok:
                self.observer.acted("audit", False)


def _claim_kind(d: Detection) -> str:
    return f"{d.kind}:{d.scope}" if d.scope else d.kind


def _revoking(grants: GrantStore, grant_id: str) -> Callable[[], Awaitable[Grant | None]]:
    """One grant's revoke, retried: the grant when this revoke made it (a retry that finds it
    revoked may have made it on a try whose answer was lost); None when someone else did."""
    tried = False

    async def revoke() -> Grant | None:
        nonlocal tried
        retry, tried = tried, True
        made = await grants.revoke(grant_id)
        return made.grant if made is not None and (retry or not made.already) else None

    return revoke


def _agent_detail(agent: Agent) -> dict[str, Any]:
    return {
        "owner": agent.owner,
        "risk": agent.risk,
        "allowed_purposes": list(agent.allowed_purposes),
        "status": agent.status,
    }
