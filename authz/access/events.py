"""The audit events of access requests, and how they are committed.

Events that go together (a request and its approval, say) are committed at
once, so the writer's group commit covers them with one fsync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from authz.access.approval import Verdict
from authz.audit.records import AuditSink, Committed, EventRecord
from authz.codec import rfc3339
from authz.errors import AuditUnavailable
from authz.model import AccessRequest, Grant

log = logging.getLogger(__name__)

_REQUEST_FIELDS = (
    "agent", "user", "action", "resource", "purpose", "ttl_seconds", "max_uses", "txn",
    "reason", "break_glass", "status", "decided_by", "outcome", "detail", "limit",
    "grant_id", "expires_at",
)  # fmt: skip
_GRANT_FIELDS = (
    "agent", "user", "purpose", "issued_by", "issued_at", "expires_at", "max_uses", "txn",
    "request_id", "break_glass",
)  # fmt: skip


class Recorder:
    def __init__(self, audit: AuditSink, clock: Callable[[], float]) -> None:
        self._audit = audit
        self._clock = clock

    def request(
        self, event: str, actor: str, request: AccessRequest, verdict: Verdict | None = None
    ) -> EventRecord:
        detail: dict[str, Any] = {k: getattr(request, k) for k in _REQUEST_FIELDS}
        detail["chain"] = list(request.chain)
        detail["approvers"] = list(request.approvers)
        detail["policies"] = list(request.policies)
        if verdict is not None and verdict.shadow:
            detail["shadow"] = [{"policy": p, "effect": e} for p, e in verdict.shadow]
            detail["shadow_disagrees"] = bool(verdict.shadow_outcome)
            detail["shadow_outcome"] = verdict.shadow_outcome
        return self.event(event, actor, request.id, detail)

    def grant(self, event: str, actor: str, grant: Grant) -> EventRecord:
        detail: dict[str, Any] = {k: getattr(grant, k) for k in _GRANT_FIELDS}
        detail["actions"] = list(grant.actions)
        detail["resources"] = list(grant.resources)
        return self.event(event, actor, grant.id, detail)

    def event(self, event: str, actor: str, target: str, detail: dict[str, Any]) -> EventRecord:
        return EventRecord(event, actor, target, rfc3339(self._clock()), detail)

    async def commit(self, *events: EventRecord) -> bool:
        """Commit `events` together; True if every one is on the trail."""
        results = await asyncio.gather(
            *(self._audit.commit(e) for e in events), return_exceptions=True
        )
        return all(isinstance(r, Committed) and r.ok for r in results)

    async def commit_or_raise(self, *events: EventRecord) -> None:
        if not await self.commit(*events):
            raise AuditUnavailable()

    async def commit_or_log(self, *events: EventRecord) -> None:
        """Steps that take access away stand even when the trail cannot take them."""
        if not await self.commit(*events):
            log.error(
                "access: the trail could not record %s",
                [e.event for e in events],
                extra={"event": "access.unrecorded"},
            )
