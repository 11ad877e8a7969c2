"""The detectors on the check path: `signals` before Cedar, `observe` after each decision.

    signals   (the pipeline's `risk` phase) the agent's latest window values, its
              token's facts and its working hours -> `Risk`, which Cedar reads as
              `context.risk`. No I/O: the values are those of the last window update
              this replica saw for the agent (fleet-wide counts with Redis), at most
              SNAPSHOT_SECONDS old. An agent a detector has just contained here is
              refused (`agent_suspended`) even before the store has the suspension.
    observe   queue the decision and return at once. A background flush counts the
              queue in batches (one round trip each, at most one per LINGER, so a
              check after a quiet spell is counted at once and a busy replica sends a
              batch, not a check, per round trip) in the windows,
              runs the detectors on the tallies, and hands each detection to the
              responder, at most once per agent and kind per claim (`detect.cooldown`,
              fleet-wide).

Redis down: a batch the store refuses goes back to the head of the queue and
is counted, at its own times, once the store is back (up to MAX_PENDING checks;
each refusal is counted in `lasthop_detect_window_failures_total`). Checks
that need the store are 503 meanwhile, but local caches may allow for up to
the invalidation channel's dead interval: those are counted late, not lost,
and a line they crossed is judged when the store returns. A containment
already decided is enforced on this replica at once and written to the store
until it takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from authz.config import DetectSettings
from authz.detect.detectors import DetectObserver, Seen, judge
from authz.detect.respond import Responder
from authz.errors import RegistryError, StoreUnavailable
from authz.model import Agent, Chain, Decision, Risk, TokenClaims, WorkingHours
from authz.reasons import Reason
from authz.stores.cache import BoundedCache
from authz.stores.protocols import AgentRegistry
from authz.stores.windows import Observation, Tally, Windows, WindowSpec

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 60.0  # a window value this replica has not refreshed for this long is dropped
SNAPSHOT_ENTRIES = 100_000
MAX_BATCH = 256  # observations per round trip
MAX_PENDING = 50_000  # past this, new observations are dropped (and counted) until flushed
MIN_BACKOFF, MAX_BACKOFF = 0.05, 2.0  # seconds between attempts while the store refuses
LINGER = 0.01  # at most one batch this often: fewer wake-ups and round trips under load
CLOSE_SECONDS = 5.0
NOT_COUNTED = frozenset({Reason.AGENT_SUSPENDED, Reason.AGENT_UNREGISTERED})


@dataclass(slots=True)  # built for every check: a frozen dataclass costs several times more
class _Values:
    """An agent's last tally, as `context.risk` reads it."""

    patients: int
    rate: int
    denials: int
    approval_required: bool


def window_spec(s: DetectSettings) -> WindowSpec:
    return WindowSpec(
        breadth=s.breadth_window,
        rate=s.rate_window,
        rate_horizon=s.rate_baseline,
        probing=s.probing_window,
        learning=s.novelty_learning,
    )


class Monitor:
    def __init__(
        self,
        settings: DetectSettings,
        windows: Windows,
        responder: Responder,
        registry: AgentRegistry,
        observer: DetectObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spec = window_spec(settings)
        self.windows = windows
        self.responder = responder
        self.registry = registry
        self.observer = observer
        self.clock = clock
        # the last window values this replica saw: by agent, by (agent, user), by token
        self._values: BoundedCache[str, _Values] = BoundedCache(SNAPSHOT_ENTRIES, SNAPSHOT_SECONDS)
        self._changes = 0  # of the values below: part of `generation`
        self._pairs: BoundedCache[tuple[str, str], int] = BoundedCache(
            SNAPSHOT_ENTRIES, SNAPSHOT_SECONDS
        )
        self._tokens: BoundedCache[str, int] = BoundedCache(SNAPSHOT_ENTRIES, SNAPSHOT_SECONDS)
        self._hours: BoundedCache[str, WorkingHours] = BoundedCache(SNAPSHOT_ENTRIES)
        # appended from the event loop and from the threaded server's handler threads (a
        # cached decision answered off the loop): a deque, whose appends are thread-safe
        self._pending: deque[Seen] = deque()
        self._backoff = MIN_BACKOFF
        self._flusher: asyncio.Task[None] | None = None  # started with the first observation
        self._wake: asyncio.Event | None = None

    @property
    def generation(self) -> int:
        """Moves on with every local containment and release and every change of the values
        `context.risk` reads: the decision cache keys on it."""
        return self.responder.generation + self._changes

    # --- the risk phase -----------------------------------------------------------------------

    def signals(
        self, chain: Chain, agents: tuple[Agent, ...], claims: TokenClaims | None, token: str
    ) -> Risk:
        """`context.risk` for this check; a locally contained agent is refused. A database
        connection has no token (`claims` None): its token facts stay at their defaults."""
        for agent_id in chain.agents if self.responder.containing else ():
            detector = self.responder.contained(agent_id)
            if detector is not None:
                raise RegistryError(
                    Reason.AGENT_SUSPENDED,
                    f"agent `{agent_id}` is suspended by detector `{detector}`",
                )
        actor = chain.actor
        values = self._values.get(actor) if chain.agents else None
        return Risk(
            patients=values.patients if values else 0,
            user_patients=self._pairs.get((actor, chain.user)) or 0,
            rate=values.rate if values else 0,
            denials=values.denials if values else 0,
            token_denials=(self._tokens.get(token) or 0) if token else 0,
            off_hours=bool(agents) and self._off_hours(agents[-1]),
            approval_required=values.approval_required if values else False,
            token_lifetime=claims.expires_at - claims.issued_at if claims else 0,
            token_jti=bool(claims.jti) if claims else True,
        )

    def _off_hours(self, agent: Agent) -> bool:
        if not agent.hours:
            return False
        hours = self._hours.get(agent.hours)
        if hours is None:
            hours = WorkingHours.parse(agent.hours)  # validated when the agent was stored
            self._hours.put(agent.hours, hours)
        return not hours.contains(self.clock())

    # --- after the decision -------------------------------------------------------------------

    def observe(self, decision: Decision) -> None:
        """Queue the decision for the windows; never waits, never raises. From a thread
        other than the event loop's (`Pipeline.check_now`), it is only queued: the flusher
        looks every LINGER while idle."""
        obs = self._observation(decision)
        if obs is None:
            return
        if len(self._pending) >= MAX_PENDING:
            if self.observer:
                self.observer.windows_failed()
            return
        self._pending.append(Seen.of(obs, decision))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a handler thread: asyncio's Event is not for it
        if self._wake is not None and self._flusher is not None and not self._flusher.done():
            self._wake.set()
        else:  # the first observation, or the loop the flusher ran on is gone (tests)
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(self._wake))

    def _observation(self, d: Decision) -> Observation | None:
        chain = d.chain
        if chain is None or not chain.agents or d.status == 503:
            return None  # a person acting alone, or Lasthop could not decide
        route, intent, allowed = d.route, d.intent, d.allowed
        return Observation(
            agent=chain.actor,
            user=chain.user,
            at=self.clock(),
            entity=self._entity(d) if route else "",
            denial=not allowed and d.reason not in NOT_COUNTED,
            token=d.token_digest,
            habit=f"{route.action} {route.resource.type}" if allowed and route else "",
            chain=" ".join(chain.agents) if allowed and self.spec.learning else "",
            txn=intent.txn if intent else "",
            txn_owner=f"{chain.user} {chain.agents[0]}",
            event=d.decision_id,
        )

    def _entity(self, d: Decision) -> str:
        """The id of the breadth entity the request asked for (all of one type), or ""."""
        assert d.route is not None
        wanted = self.settings.breadth_entity
        for ref in (d.route.resource, *d.route.parents):
            if ref.type == wanted:
                return ref.id
        return ""

    async def _flush_forever(self, wake: asyncio.Event) -> None:
        """One batch at a time, at most one per LINGER: a check that comes after a quiet
        spell is counted at once; while checks keep coming, a batch holds what came since
        the last one, not one check each."""
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            wake.clear()
            if not self._pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER):  # handler threads queue without waking
                        await wake.wait()
                if not self._pending:
                    continue
            pause = last + LINGER - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            last = loop.time()
            if not await self._flush_batch():
                await asyncio.sleep(self._backoff)  # the store refused: try again later

    async def flush(self) -> bool:
        """Count everything queued, judge it and respond; until nothing is queued.

        False when the store refused a batch: it goes back to the head of the queue, to
        be counted (at its own times) once the store is back."""
        while self._pending:
            if not await self._flush_batch():
                return False
        return True

    async def _flush_batch(self) -> bool:
        pending = self._pending
        batch = [pending.popleft() for _ in range(min(MAX_BATCH, len(pending)))]
        try:
            await self._judge(batch)
        except StoreUnavailable as err:
            pending.extendleft(reversed(batch[: max(0, MAX_PENDING - len(pending))]))
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            log.warning(
                "detection windows: %s; %d checks wait",
                err.detail,
                len(self._pending),
                extra={"event": "detect.windows_failed"},
            )
            if self.observer:
                self.observer.windows_failed()
            return False
        except Exception:
            log.exception(
                "detection failed for %d checks", len(batch), extra={"event": "detect.failed"}
            )
        self._backoff = MIN_BACKOFF
        return True

    async def _judge(self, batch: list[Seen]) -> None:
        batch = await self._resolve(batch)
        tallies = await self.windows.record([seen.obs for seen in batch], self.spec)
        for seen, tally in zip(batch, tallies, strict=True):
            self._remember(seen.obs, tally)
            for detection in judge(seen, tally, self.settings):
                self.responder.spawn(detection)

    async def _resolve(self, batch: list[Seen]) -> list[Seen]:
        """Name the unregistered agents of each `agent_unregistered` denial (cached reads)."""
        resolved = []
        for seen in batch:
            if seen.reason == Reason.AGENT_UNREGISTERED:
                found = [(a, await self.registry.get(a)) for a in seen.chain]
                missing = tuple(a for a, agent in found if agent is None or not agent.registered)
                seen = dataclasses.replace(seen, unregistered=missing)
            resolved.append(seen)
        return resolved

    def _remember(self, obs: Observation, tally: Tally) -> None:
        """Keep the tally as `context.risk` reads it; a value that changed moves `generation`
        on, so no cached decision outlives the values its policy read."""
        values = _Values(
            tally.patients,
            int(tally.requests / tally.baseline) if tally.baseline >= 1 else 0,
            tally.denials,
            tally.approval_required,
        )
        changed = self._values.get(obs.agent) != values
        self._values.put(obs.agent, values)
        pair = (obs.agent, obs.user)
        changed |= self._pairs.get(pair) != tally.user_patients
        self._pairs.put(pair, tally.user_patients)
        if obs.token:
            changed |= self._tokens.get(obs.token) != tally.token_denials
            self._tokens.put(obs.token, tally.token_denials)
        if changed:
            self._changes += 1

    async def close(self, grace: float = CLOSE_SECONDS) -> None:
        """Flush what is queued and let the responses under way finish, for up to `grace`."""
        try:
            async with asyncio.timeout(grace):
                if self._pending:
                    await self.flush()
                await self.responder.drain()
        except TimeoutError:
            log.error(
                "detection: responses still under way at shutdown were abandoned",
                extra={"event": "detect.abandoned"},
            )
        if self._flusher is not None:
            self._flusher.cancel()
