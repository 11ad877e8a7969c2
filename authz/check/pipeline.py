"""The decision path: one function per phase, in the order the spec gives.

    decision cache -> an identical request in the same second, against the same
                      policy, keys and store state, gets the decision already made
    identity  -> verify the bearer JWT                                       (401)
    chain     -> read `act` into user -> agents -> actor; refuse cycles, depth and
                 anyone presenting the token but the current actor
    registry  -> every agent in the chain registered and active; with `bind_peer`, the
                 mTLS peer is exactly the SPIFFE ID the current actor is bound to
    risk      -> the detectors' current values for the agent and token (`context.risk`);
                 an agent a detector has just contained here is refused
    intent    -> purpose and txn, from a verified txn-token or the token's own claims
    route     -> method + path -> Cedar action + resource; a POST to an MCP endpoint:
                 its JSON-RPC body -> the tool's action + resource (`check.mcp`); a
                 method override header naming another method is refused
    grants    -> a PHI route needs a live grant of (actor, user) for this purpose
    cedar     -> Allow with no errors, or deny
    uses      -> a use-limited grant counts this use atomically; over the limit: deny
    receipt   -> an allow gets a receipt for the upstream, bound to its record: its
                 claims here, signed with the batch its record is written in
    audit     -> one record per decision; no record, no allow

A database connection (a network CheckRequest: `CheckInput.connection`) goes
through the same phases, each its own small function (`check.connection`
states the rules): identity is the client certificate's SPIFFE ID, the chain
is the grant the connection names (its user -> its agent), the registry binds
that agent to the certificate always, the route is the listener's database,
and the grant must outlive the connection.

Combining rule: the first phase that refuses decides, with its reason. A
decision is allowed only on the path that reaches the end; every exception,
whatever its type, becomes a deny. The phase names are the metric labels.

Detection: the `risk` phase reads the detectors' last values (no I/O); once
recorded, every decision is handed to them (`observe`, which never waits) to
count in the fleet's windows and judge (`authz.detect`).

Deadline (`server.check_deadline_ms`): the phases that wait on the store run
under one timer; a check not decided by then is a 503 `store_unavailable`,
answered before Envoy's own ext_authz timeout would answer for us. The
receipt and the audit record come after it: a decision is never recorded as
one thing and answered as another.

Decision cache: a `Decision` is built once, kept as it is (`decisions.py`
says what its key holds) and served again with a new decision id; the
checks that repeat it are recorded as repeats of its first record, and
`check_now` answers them in the calling thread (the threaded server's
handlers). Never cached: 503s, a decision that spent a use of a use-limited
grant, and a connection's (checked once per connection, against the clock of
that moment).

Dry-run (`policies.mode = "dry-run"`, which needs `policies.allow_dry_run`):
a grant or Cedar denial is recorded as what it would have been and allowed.
Token, chain, route and availability failures are still enforced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from authz.audit.receipts import ReceiptSigner, Unsigned
from authz.audit.records import (
    AuditRecord,
    AuditSink,
    BlockingSink,
    Committed,
    EventRecord,
    Record,
    Repeat,
)
from authz.check import connection, delegation, grants, headers, identity, mcp
from authz.check.decisions import DecisionCache, Entry, Key
from authz.check.intent import TXN_TOKEN_HEADER, IntentReader
from authz.check.registry import resolve_chain
from authz.codec import random_id, rfc3339, trace_id_of
from authz.errors import (
    AuditUnavailable,
    DelegationError,
    GrantError,
    InternalError,
    LasthopError,
    PolicyDenied,
    StoreUnavailable,
)
from authz.model import (
    DEFAULT_TIERS,
    Agent,
    Chain,
    CheckInput,
    Connection,
    Decision,
    EntityRef,
    Grant,
    Intent,
    Risk,
    RiskTiers,
    RouteMatch,
    TokenClaims,
)
from authz.policy.evaluate import (
    CedarOutcome,
    CedarRequest,
    PolicyEngine,
    chain_context,
    enforce,
)
from authz.policy.load import PolicyBundle
from authz.reasons import Reason
from authz.spiffe import Binding
from authz.stores.cache import BoundedCache
from authz.stores.protocols import AgentRegistry, GrantStore

log = logging.getLogger(__name__)

PHASES = (
    "identity", "chain", "registry", "risk", "intent", "route", "grants", "cedar", "uses",
    "receipt", "audit",
)  # fmt: skip
EXPIRED_SEEN_ENTRIES = 10_000


class CheckObserver(Protocol):
    """What the pipeline reports as it goes (metrics, tracing); it never decides anything.

    `started` and `ended` pair up even when Envoy cancels the check; they run in
    the check's own task, so an observer may keep per-check state in a context
    variable. `started` returns the trace id the check is traced under ("" when
    the observer does not trace), which goes into the audit record."""

    def started(self, req: CheckInput) -> str: ...
    def phase(self, name: str, seconds: float) -> None: ...
    def decided(self, decision: Decision, seconds: float, cached: bool) -> None: ...
    def ended(self) -> None: ...


class Detector(Protocol):
    """The detectors (`authz.detect.monitor.Monitor`): values before Cedar, decisions after."""

    def signals(
        self, chain: Chain, agents: tuple[Agent, ...], claims: TokenClaims | None, token: str
    ) -> Risk: ...
    def observe(self, decision: Decision) -> None: ...


@dataclass(frozen=True)
class PipelineOptions:
    max_chain_depth: int
    bind_peer: bool
    binding: Binding = Binding()  # which SPIFFE ID each agent must present (bind_peer)
    method_overrides: tuple[str, ...] = headers.DEFAULT_METHOD_OVERRIDES
    dry_run: bool = False
    tiers: RiskTiers = DEFAULT_TIERS
    deadline: float | None = None  # seconds a check may take to decide; None: no limit
    connection_max_seconds: int = 300  # connections.max_duration_seconds


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, for whom and why, as a check establishes it (see `Pipeline.identify`)."""

    chain: Chain
    agents: tuple[Agent, ...]  # the chain's registered, active agents, first first
    intent: Intent


@dataclass
class _Facts:
    """What the phases have learned so far; a denial carries whatever was known."""

    policy_version: str
    kind: str = "http"  # http, mcp or connection
    ends_at: float = 0.0  # a connection: when Envoy ends it at the latest
    token_digest: str = ""
    client_id: str = ""
    chain: Chain | None = None
    owner: str = ""  # the current actor's accountable owner
    risk: Risk | None = None
    intent: Intent | None = None
    route: RouteMatch | None = None
    grant: Grant | None = None
    cedar: CedarRequest | None = None
    outcome: CedarOutcome | None = None
    spends_use: bool = False  # a use-limited grant was spent: never cache this decision
    policies: tuple[str, ...] = field(default_factory=tuple)

    def decision(
        self, decision_id: str, reason: Reason | str, detail: str, status: int, dry_run: str = ""
    ) -> Decision:
        outcome = self.outcome
        return Decision(
            decision_id=decision_id,
            allowed=status == 200,
            status=status,
            reason=reason,
            detail=detail,
            chain=self.chain,
            intent=self.intent,
            route=self.route,
            grant=self.grant,
            policies=self.policies or (outcome.policies if outcome else ()),
            client_id=self.client_id,
            token_digest=self.token_digest,
            cedar=self.cedar.as_cedar() if self.cedar else None,
            shadow=tuple((h.policy, h.effect) for h in outcome.shadow) if outcome else (),
            shadow_disagrees=outcome.shadow_disagrees if outcome else False,
            owner=self.owner,
            dry_run=dry_run,
            policy_version=self.policy_version,
            risk=self.risk,
            kind=self.kind,
            ends_at=self.ends_at,
        )


class Pipeline:
    def __init__(
        self,
        *,
        verifier: identity.AccessTokenVerifier,
        intent: IntentReader,
        registry: AgentRegistry,
        bundle: PolicyBundle,
        store: GrantStore,
        audit: AuditSink,
        observer: CheckObserver | None,
        options: PipelineOptions,
        clock: Callable[[], float] = time.time,
        decisions: DecisionCache | None = None,
        receipts: ReceiptSigner | None = None,
        detect: Detector | None = None,
    ) -> None:
        self.verifier = verifier
        self.intent = intent
        self.registry = registry
        self.options = options
        self.policy = PolicyEngine(bundle, options.tiers)  # replaced whole on reload
        self.store = store
        self.audit = audit
        self.observer = observer
        self.clock = clock
        self.decisions = decisions
        self.receipts = receipts
        self.detect = detect
        self._expired_seen: BoundedCache[str, bool] = BoundedCache(EXPIRED_SEEN_ENTRIES)

    @property
    def audit(self) -> AuditSink:
        return self._sink

    @audit.setter
    def audit(self, sink: AuditSink) -> None:
        """The sink records go to; `check_now` needs one that can commit from any thread."""
        self._sink = sink
        self._blocking = sink if isinstance(sink, BlockingSink) else None

    @property
    def bundle(self) -> PolicyBundle:
        return self.policy.bundle

    @bundle.setter
    def bundle(self, bundle: PolicyBundle) -> None:
        """Put a new policy bundle in force: checks that started keep the one they read."""
        self.policy = PolicyEngine(bundle, self.options.tiers)

    async def check(self, req: CheckInput) -> Decision:
        """Decide, sign, record: the one entry point. Never raises."""
        return await self._observed(req, self._decision)

    async def refuse(self, req: CheckInput, err: LasthopError) -> Decision:
        """Deny and record a request no phase could read (an undecodable CheckRequest)."""

        async def refused(req: CheckInput, decision_id: str) -> tuple[Decision, Entry | None]:
            facts = _Facts(policy_version=self.policy.bundle.version)
            return facts.decision(decision_id, err.reason, err.detail, err.status), None

        return await self._observed(req, refused)

    async def _observed(
        self,
        req: CheckInput,
        decide: Callable[[CheckInput, str], Awaitable[tuple[Decision, Entry | None]]],
    ) -> Decision:
        """`decide`, then sign and record, reported to the observer. Never raises."""
        started = time.perf_counter()
        observer = self.observer
        trace_id = trace_id_of(req.traceparent)
        if observer:
            trace_id = observer.started(req) or trace_id
        try:
            decision, entry = await decide(req, random_id())
            cached = entry is not None and entry.record is not None
            decision, record, receipt = self._recorded(decision, req, started, entry, trace_id)
            timer = self._timer()
            decision = _committed(decision, await self._audit(record, receipt))
            timer("audit")
            return self._decided(decision, req, started, trace_id, cached)
        finally:
            if observer:
                observer.ended()

    def check_now(self, req: CheckInput) -> Decision | None:
        """`check` in the calling thread, for a request whose decision is cached (the threaded
        server answers those without the event loop); None when it must be decided (`check`)."""
        cache, sink = self.decisions, self._blocking
        if cache is None or sink is None or req.connection is not None:
            return None
        started = time.perf_counter()
        hit = cache.get(self._cache_key(cache, req, self.policy))
        if hit is None or hit.record is None:
            return None
        observer = self.observer
        trace_id = trace_id_of(req.traceparent)
        if observer:
            trace_id = observer.started(req) or trace_id
        try:
            decision = replace(hit.decision, decision_id=random_id())
            decision, record, receipt = self._recorded(decision, req, started, hit, trace_id)
            timer = self._timer()
            try:
                committed = sink.commit_blocking(record, receipt)
            except Exception:
                log.exception(
                    "audit sink failed for %s",
                    decision.decision_id,
                    extra={"event": "audit.sink_failed"},
                )
                committed = Committed(False)
            timer("audit")
            return self._decided(_committed(decision, committed), req, started, trace_id, True)
        finally:
            if observer:
                observer.ended()

    def _decided(
        self, decision: Decision, req: CheckInput, started: float, trace_id: str, cached: bool
    ) -> Decision:
        """Report the decision made (detection, metrics, the debug log); return it."""
        if self.detect is not None:
            self.detect.observe(decision)
        if self.observer:
            self.observer.decided(decision, time.perf_counter() - started, cached)
        if log.isEnabledFor(logging.DEBUG):
            _log_decision(decision, req, trace_id, cached)
        return decision

    async def identify(self, req: CheckInput) -> Caller:
        """The identity, chain, registry and intent phases exactly as a check runs them, for a
        caller outside Envoy (an agent asking for access); raises the first refusal."""
        facts = _Facts(policy_version="")
        claims = await self._identity(req, facts)
        chain = await self._chain(req, claims)
        agents = await self._registry(req, chain, facts)
        intent = await self.intent.read(claims, req.headers.get(TXN_TOKEN_HEADER, []))
        return Caller(chain, agents, intent)

    async def _decision(self, req: CheckInput, decision_id: str) -> tuple[Decision, Entry | None]:
        """The cached decision for this exact request, or a new one, and its cache entry."""
        policy = self.policy  # one bundle for the whole check, whatever a reload does
        # a connection is decided afresh: its grant must outlive it from this very moment
        cache = self.decisions if req.connection is None else None
        key = None
        if cache is not None:
            key = self._cache_key(cache, req, policy)
            hit = cache.get(key)
            if hit is not None:
                return replace(hit.decision, decision_id=decision_id), hit
        facts = _Facts(policy_version=policy.bundle.version, kind=_kind(req, policy))
        decision = await self._decide_all(req, policy, facts, decision_id)
        if cache is not None and decision.status != 503 and not facts.spends_use:
            return decision, cache.put(key, decision)
        return decision, None

    async def _decide_all(
        self, req: CheckInput, policy: PolicyEngine, facts: _Facts, decision_id: str
    ) -> Decision:
        """Every phase, and the decision they come to, within the deadline; never raises."""
        deadline = asyncio.timeout(self.options.deadline)
        try:
            async with deadline:
                await self._decide(req, policy, facts)
            return facts.decision(decision_id, Reason.ALLOWED, "allowed", 200)
        except (GrantError, PolicyDenied) as err:
            if self.options.dry_run:
                detail = f"dry run: would deny: {err.reason}: {err.detail}"
                return facts.decision(decision_id, Reason.DRY_RUN, detail, 200, str(err.reason))
            facts.policies = err.policies or facts.policies
            return facts.decision(decision_id, err.reason, err.detail, err.status)
        except LasthopError as err:
            facts.policies = err.policies or facts.policies
            return facts.decision(decision_id, err.reason, err.detail, err.status)
        except Exception as err:
            if isinstance(err, TimeoutError) and deadline.expired():
                return self._late(facts, decision_id)
            log.exception(
                "check %s failed",
                decision_id,
                extra=_fields("check.failed", decision_id, req),
            )
            return self._internal(facts, decision_id)

    def _internal(self, facts: _Facts, decision_id: str) -> Decision:
        """A bug: denied."""
        internal = InternalError()
        return facts.decision(decision_id, internal.reason, internal.detail, internal.status)

    def _late(self, facts: _Facts, decision_id: str) -> Decision:
        """Past `server.check_deadline_ms`: the store did not answer in time."""
        millis = (self.options.deadline or 0) * 1000
        late = StoreUnavailable(
            f"no decision within server.check_deadline_ms ({millis:.0f} ms): "
            "the store did not answer in time"
        )
        return facts.decision(decision_id, late.reason, late.detail, late.status)

    async def _decide(self, req: CheckInput, policy: PolicyEngine, facts: _Facts) -> None:
        """The phases in order; each records what it learned, the first refusal raises."""
        if req.connection is not None:
            return await self._decide_connection(req, req.connection, policy, facts)
        timer = self._timer()
        claims = await self._identity(req, facts)
        timer("identity")
        chain = facts.chain = await self._chain(req, claims)
        timer("chain")
        agents = await self._registry(req, chain, facts)
        timer("registry")
        risk = facts.risk = self._risk(chain, agents, claims, facts.token_digest)
        timer("risk")
        intent = facts.intent = await self.intent.read(
            claims, req.headers.get(TXN_TOKEN_HEADER, [])
        )
        timer("intent")
        route = facts.route = self._route(req, policy)
        timer("route")
        grant = facts.grant = await self._grants(chain, route, intent)
        timer("grants")
        self._cedar(req, policy, facts, chain, agents, intent, route, grant, risk)
        timer("cedar")
        if grant is not None and grant.max_uses:
            facts.spends_use = True
            await self._uses(grant)
            timer("uses")

    async def _decide_connection(
        self, req: CheckInput, conn: Connection, policy: PolicyEngine, facts: _Facts
    ) -> None:
        """A database connection: the same phases, from its certificates and the grant it
        names instead of a token (`check.connection`)."""
        timer = self._timer()
        connection.peer_identity(req.peer_principal)
        timer("identity")
        grant = facts.grant = await self._named_grant(conn)
        chain, intent = facts.chain, facts.intent = connection.acting_for(grant)
        timer("chain")
        agents = await self._registry(req, chain, facts)
        timer("registry")
        risk = facts.risk = self._risk(chain, agents, None, "")
        timer("risk")
        route = facts.route = policy.bundle.routes.databases.resolve(conn.listener)
        timer("route")
        facts.ends_at = connection.admit(
            grant, route, self.clock(), self.options.connection_max_seconds
        )
        timer("grants")
        self._cedar(req, policy, facts, chain, agents, intent, route, grant, risk)
        timer("cedar")
        if grant.max_uses:  # each connection is one use
            facts.spends_use = True
            await self._uses(grant)
            timer("uses")

    # --- the phases, in order -----------------------------------------------------------------

    async def _identity(self, req: CheckInput, facts: _Facts) -> TokenClaims:
        """Exactly one `Bearer <jwt>` that verifies against the issuer's current keys."""
        token = identity.bearer_token(req.headers.get("authorization", []))
        facts.token_digest = identity.token_digest(token)
        claims = await self.verifier.verify_current(token)
        facts.client_id = claims.client_id
        return claims

    async def _chain(self, req: CheckInput, claims: TokenClaims) -> Chain:
        """The `act` chain, presented by its current actor and no one else."""
        chain = delegation.read_chain(claims, self.options.max_chain_depth)
        client = claims.client_id
        # Only a token with no `act` needs the client looked up: an agent presenting it.
        presenting_agent = (
            bool(client) and not chain.agents and await self.registry.get(client) is not None
        )
        delegation.check_presenter(claims, chain, {client} if presenting_agent else set())
        return chain

    async def _registry(self, req: CheckInput, chain: Chain, facts: _Facts) -> tuple[Agent, ...]:
        """Every agent in the chain registered and active; with `bind_peer`, the mTLS peer
        is the exact SPIFFE ID the current actor is bound to, never just its last segment."""
        agents = await resolve_chain(self.registry, chain)
        facts.owner = agents[-1].owner if agents else ""
        if self.options.bind_peer or req.connection is not None:
            registered = agents[-1].spiffe_id if agents else ""
            try:
                self.options.binding.check(req.peer_principal, chain.actor, registered)
            except ValueError as err:
                raise DelegationError(Reason.PEER_MISMATCH, str(err)) from None
        return tuple(agents)

    def _risk(
        self, chain: Chain, agents: tuple[Agent, ...], claims: TokenClaims | None, token: str
    ) -> Risk:
        """The detectors' current values; with no detectors, the token's own facts only
        (a connection has no token: `claims` is None)."""
        if self.detect is not None:
            return self.detect.signals(chain, agents, claims, token)
        if claims is None:
            return Risk()
        return Risk(token_lifetime=claims.expires_at - claims.issued_at, token_jti=bool(claims.jti))

    async def _named_grant(self, conn: Connection) -> Grant:
        """A connection's chain comes from the grant its TLS server name names."""
        name = connection.grant_name(conn)
        return connection.existing(await self.store.get(name), name)

    def _route(self, req: CheckInput, policy: PolicyEngine) -> RouteMatch:
        """The route table's action and resource; an MCP endpoint's come from the body.
        A method override header naming another method is refused first."""
        headers.check_method_override(req.headers, req.method, self.options.method_overrides)
        routes = policy.bundle.routes
        endpoint = routes.mcp_endpoint(req.method, req.path)
        if endpoint is None:
            return routes.resolve(req.method, req.path)
        messages, batch = mcp.read(req, endpoint.max_body_bytes, endpoint.max_depth)
        return endpoint.resolve(messages, batch)

    async def _grants(self, chain: Chain, route: RouteMatch, intent: Intent) -> Grant | None:
        """A PHI route needs a live grant of (actor, user) for this purpose; others need none."""
        if not route.phi:
            return None
        held = await self.store.for_pair(chain.actor, chain.user)
        try:
            return grants.select(held, route, intent.purpose, self.clock(), intent.txn)
        except GrantError as err:
            if err.reason == Reason.GRANT_EXPIRED:
                await self._expired(held, route)
            raise

    def _cedar(
        self,
        req: CheckInput,
        policy: PolicyEngine,
        facts: _Facts,
        chain: Chain,
        agents: tuple[Agent, ...],
        intent: Intent,
        route: RouteMatch,
        grant: Grant | None,
        risk: Risk,
    ) -> None:
        """Cedar says Allow with no errors, or the request is denied."""
        principal = (
            EntityRef("Agent", chain.actor) if chain.agents else EntityRef("User", chain.user)
        )
        request = facts.cedar = CedarRequest(
            principal=principal,
            action=route.action,
            resource=route.resource,
            context=self._context(req, chain, agents, intent, grant, route, risk),
        )
        facts.outcome = policy.evaluate(
            request, policy.delta(route.resource, route.parents, agents)
        )
        enforce(facts.outcome)

    async def _uses(self, grant: Grant) -> None:
        """Count this use atomically across replicas; over the limit: deny."""
        uses = await self.store.consume(grant)
        if uses > grant.max_uses:
            raise GrantError(Reason.GRANT_EXHAUSTED, f"grant `{grant.id}` has no uses left")
        detail = {
            "uses": uses,
            "max_uses": grant.max_uses,
            "agent": grant.agent,
            "user": grant.user,
        }
        await self._event("grant_used", grant.id, detail)
        if uses == grant.max_uses:
            await self._event("grant_exhausted", grant.id, detail)

    def _recorded(
        self, decision: Decision, req: CheckInput, started: float, entry: Entry | None, trace: str
    ) -> tuple[Decision, Record, Unsigned | None]:
        """The decision's receipt claims and its record, for the sink: no record, no allow,
        and a receipt that cannot be made fails the check closed (recorded as it ended)."""
        timer = self._timer()
        receipt = None
        # a connection has no upstream to tell
        if decision.allowed and self.receipts is not None and req.connection is None:
            try:
                receipt = self.receipts.claims(decision, req)
            except Exception:
                log.exception(
                    "receipt for %s failed",
                    decision.decision_id,
                    extra=_fields("check.receipt_failed", decision.decision_id, req),
                )
                decision, entry = _refused(decision, InternalError("cannot sign the receipt")), None
        timer("receipt")
        return decision, self._record_of(decision, req, started, entry, trace), receipt

    def _record_of(
        self, decision: Decision, req: CheckInput, started: float, entry: Entry | None, trace: str
    ) -> Record:
        """The decision's record; a repeat of the record of the check that made it, if cached."""
        time_ = rfc3339(self.clock())
        elapsed = time.perf_counter() - started
        if entry is None:
            return AuditRecord.of(decision, req, time_, elapsed, trace)
        if entry.record is None:
            entry.record = AuditRecord.of(decision, req, time_, elapsed, trace)
            return entry.record
        latency = round(elapsed * 1000, 3)
        return Repeat(entry.record, decision.decision_id, time_, latency, req.request_id, trace)

    # --- helpers --------------------------------------------------------------------------------

    def _cache_key(self, cache: DecisionCache, req: CheckInput, policy: PolicyEngine) -> Key | None:
        return cache.key(req, policy.bundle.version, self.verifier.key_generation, self.clock())

    def _timer(self) -> Callable[[str], None]:
        """`timer(phase)` reports the time since the previous call (or since this one)."""
        observer = self.observer
        if observer is None:
            return _no_timer
        last = [time.perf_counter()]

        def timer(name: str) -> None:
            now = time.perf_counter()
            observer.phase(name, now - last[0])
            last[0] = now

        return timer

    async def _event(self, event: str, target: str, detail: dict[str, object]) -> None:
        """A lifecycle event the check caused; it must be on the trail before the check ends."""
        record = EventRecord(
            event=event, actor="lasthop", target=target, time=rfc3339(self.clock()), detail=detail
        )
        if not await self._audit(record):
            raise AuditUnavailable()  # `Committed` is falsy when the sink refused

    async def _expired(self, held: list[Grant], route: RouteMatch) -> None:
        """Record each covering grant found expired, once per process."""
        now = self.clock()
        for grant in held:
            if (
                grant.expires_at <= now
                and grants.covers(grant, route)
                and grant.id not in self._expired_seen
            ):
                self._expired_seen.put(grant.id, True)
                detail = {"agent": grant.agent, "user": grant.user, "expires_at": grant.expires_at}
                await self._event("grant_expired", grant.id, detail)

    async def _audit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        """Hand `record` to the sink, with the receipt to sign; refused if the sink raises."""
        try:
            return await self.audit.commit(record, receipt)
        except Exception:
            log.exception(
                "audit sink failed for %s",
                getattr(record, "decision_id", "") or getattr(record, "event", ""),
                extra={"event": "audit.sink_failed"},
            )
            return Committed(False)

    def _context(
        self,
        req: CheckInput,
        chain: Chain,
        agents: tuple[Agent, ...],
        intent: Intent,
        grant: Grant | None,
        route: RouteMatch,
        risk: Risk,
    ) -> dict[str, object]:
        context: dict[str, object] = {
            "user": {"__entity": {"type": "User", "id": chain.user}},
            "chain_depth": chain.depth,
            "agents": [{"__entity": {"type": "Agent", "id": a}} for a in chain.agents],
            "chain": chain_context(agents, intent.purpose, self.options.tiers),
            "delegator": chain.delegator,
            "purpose": intent.purpose,
            "txn": intent.txn,
            "request": {"method": req.method, "path": req.path, "host": req.host},
            "time": int(self.clock()),
            "risk": risk.as_context(),
        }
        if grant is not None:
            context["grant"] = {
                "id": grant.id,
                "purpose": grant.purpose,
                "issued_by": grant.issued_by,
                "expires_at": grant.expires_at,
            }
        call = route.mcp
        if call is not None and call.arguments is not None:
            context["tool"] = {"name": call.tool, "arguments": call.arguments}
        conn = req.connection
        if conn is not None:
            context["connection"] = {"peer": req.peer_principal, "listener": conn.listener}
        return context


def _no_timer(name: str) -> None:
    return None


def _kind(req: CheckInput, policy: PolicyEngine) -> str:
    """What the check decides, for the metrics and the record: http, mcp or connection."""
    if req.connection is not None:
        return "connection"
    return "mcp" if policy.bundle.routes.mcp_endpoint(req.method, req.path) else "http"


def _fields(event: str, decision_id: str, req: CheckInput) -> dict[str, str]:
    """What a log line about one check carries to find it elsewhere (never a token)."""
    return {
        "event": event,
        "decision_id": decision_id,
        "request_id": req.request_id,
        "trace_id": trace_id_of(req.traceparent),
    }


def _log_decision(decision: Decision, req: CheckInput, trace_id: str, cached: bool) -> None:
    """The debug line for one decision: what it was, and the ids that find it elsewhere."""
    verdict = "allow" if decision.allowed else "deny"
    log.debug(
        "%s %s %s",
        verdict,
        decision.status,
        decision.reason,
        extra={
            "event": "check.decided",
            "decision_id": decision.decision_id,
            "request_id": req.request_id,
            "trace_id": trace_id,
            "decision": verdict,
            "status": decision.status,
            "reason": str(decision.reason),
            "agent": decision.chain.actor if decision.chain else "",
            "route": decision.route.template if decision.route else "",
            "cached": cached,
        },
    )


def _committed(decision: Decision, committed: Committed) -> Decision:
    """The decision as the sink took it: refused if it could not, with its signed receipt."""
    if not committed.ok:
        return _refused(decision, AuditUnavailable())
    if committed.receipt:
        return replace(decision, receipt=committed.receipt)
    return decision


def _refused(decision: Decision, err: LasthopError) -> Decision:
    """An allow that a later step could not complete: denied with that step's reason."""
    return replace(
        decision, allowed=False, status=err.status, reason=err.reason, detail=err.detail, receipt=""
    )
