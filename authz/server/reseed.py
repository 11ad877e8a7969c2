"""The agent registry's upkeep: a Redis that restarted empty (or was flushed) loses it.

Rule: every `INTERVAL_SECONDS`, every seed agent of the policy set in force
(`entities.json`) must be in the store, in whatever state the admin API left
it (a deregistered agent's tombstone counts). If any is missing, the store
lost it: the missing ones are seeded again, exactly as at start-up, and the
audit trail records `registry_reseeded` naming them.

What the store lost stays lost: every grant and use count (checks for a lost
grant answer `no_grant` until it is issued again), agents registered through
the admin API, and the API's changes to seed agents: a seed agent suspended
or deregistered through the API comes back as `entities.json` describes it,
as a restart of Lasthop on an empty store would bring it back. The event
names every agent seeded again, so an operator can suspend those again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from authz.audit.records import AuditSink, EventRecord
from authz.codec import rfc3339
from authz.errors import StoreUnavailable
from authz.policy.load import PolicyBundle
from authz.stores.redis_store import RedisStore
from authz.stores.registry import seed

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 1.0
EVENT = "registry_reseeded"


class RegistryKeeper:
    def __init__(
        self,
        store: RedisStore,
        bundle: Callable[[], PolicyBundle],
        audit: AuditSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bundle = bundle
        self.audit = audit
        self.clock = clock

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_SECONDS)
            try:
                await self.check()
            except StoreUnavailable as err:
                log.debug(
                    "registry upkeep skipped: %s",
                    err.detail,
                    extra={"event": "registry.upkeep_skipped"},
                )

    async def check(self) -> list[str]:
        """Seed again whatever seed agent the store lacks; the ids seeded."""
        agents = self.bundle().agents
        if not agents or await self.store.agents_present(list(agents)) == len(agents):
            return []
        added = await seed(self.store, agents, int(self.clock()))
        if added:
            await self._record(added)
        return added

    async def _record(self, added: list[str]) -> None:
        log.warning(
            "registry: the store had lost seed agents %s; seeded them again from entities.json "
            "(agents registered through the API, and every grant, are not restored)",
            ", ".join(added),
            extra={"event": "registry.reseeded"},
        )
        event = EventRecord(
            event=EVENT,
            actor="lasthop",
            target="registry",
            time=rfc3339(self.clock()),
            detail={"agents": added, "why": "seed agents missing from the store"},
        )
        if not await self.audit.commit(event):
            log.error(
                "registry_reseeded could not be recorded in the audit trail",
                extra={"event": "registry.reseed_unrecorded"},
            )
