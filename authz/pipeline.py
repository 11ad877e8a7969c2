"""The decision path, one phase per step, in the order the spec gives.

    identity  -> verify the bearer JWT                          (401 on any failure)
    chain     -> read `act` into user -> agents -> actor; refuse cycles, depth, impersonation
    registry  -> every agent in the chain registered and active
    intent    -> purpose and txn, from a verified txn-token or the token's claims
    route     -> method + path -> Cedar action + resource
    grants    -> a PHI route needs a live grant of (actor, user) for this purpose
    cedar     -> Allow with no errors, or deny
    uses      -> a use-limited grant counts this use atomically; over the limit: deny
    receipt   -> an allow gets a signed receipt for the upstream, bound to its record
    audit     -> one record per decision; no record, no allow

Combining rule: the first phase that refuses decides, with its reason.
`Decision.allowed` is True only on the path that reaches the end; every
exception, whatever its type, becomes a deny.

Dry-run (`policies.mode = "dry-run"`, which needs `policies.allow_dry_run`):
a grant or Cedar denial is recorded as what it would have been and allowed.
Token, chain, route and availability failures are still enforced.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from authz import delegation, grants, identity, policy
from authz.audit import AuditRecord, AuditSink, EventRecord, rfc3339
from authz.decision_cache import DecisionCache
from authz.errors import (
    AuditUnavailable,
    DelegationError,
    GrantError,
    InternalError,
    LasthopError,
    PolicyDenied,
)
from authz.intent import TXN_TOKEN_HEADER, IntentReader
from authz.metrics import Metrics
from authz.model import (
    Chain,
    CheckInput,
    Decision,
    EntityRef,
    Grant,
    Intent,
    RiskTiers,
    RouteMatch,
)
from authz.policy_load import PolicyBundle
from authz.receipts import ReceiptSigner
from authz.registry import AgentRegistry, resolve_chain

log = logging.getLogger(__name__)


@dataclass
class _Trace:
    """What the phases learned so far; the audit record is built from it, allow or deny."""

    client_id: str = ""
    token_digest: str = ""
    chain: Chain | None = None
    intent: Intent | None = None
    route: RouteMatch | None = None
    grant: Grant | None = None
    policies: tuple[str, ...] = field(default_factory=tuple)
    cedar: policy.CedarRequest | None = None
    shadow: tuple[policy.ShadowHit, ...] = ()
    shadow_disagrees: bool = False
    dry_run: str = ""  # in dry-run mode: the reason it would have been denied
    owner: str = ""  # the current actor's accountable owner


@dataclass(frozen=True)
class PipelineOptions:
    max_chain_depth: int
    bind_peer: bool
    trust_domain: str = ""  # SPIFFE trust domain peers must come from; empty: any
    dry_run: bool = False
    tiers: RiskTiers = RiskTiers()


class Pipeline:
    def __init__(
        self,
        *,
        verifier: identity.AccessTokenVerifier,
        intent: IntentReader,
        registry: AgentRegistry,
        bundle: PolicyBundle,
        store: grants.GrantStore,
        audit: AuditSink,
        metrics: Metrics | None,
        options: PipelineOptions,
        clock: Callable[[], float] = time.time,
        decisions: DecisionCache | None = None,
        receipts: ReceiptSigner | None = None,
    ) -> None:
        self.verifier = verifier
        self.intent = intent
        self.registry = registry
        self.bundle = bundle  # replaced whole on reload; a check reads it once
        self.store = store
        self.audit = audit
        self.metrics = metrics
        self.options = options
        self.clock = clock
        self.decisions = decisions
        self._expired_seen: set[str] = set()
        self.receipts = receipts

    async def check(self, req: CheckInput) -> Decision:
        started = time.perf_counter()
        decision_id = uuid.uuid4().hex
        bundle = self.bundle
        if self.metrics:
            self.metrics.in_flight.inc()
        try:
            return await self._check(req, bundle, started, decision_id)
        finally:
            if self.metrics:
                self.metrics.in_flight.dec()  # also when Envoy cancels the call

    async def _check(
        self, req: CheckInput, bundle: PolicyBundle, started: float, decision_id: str
    ) -> Decision:
        key = (
            self.decisions.key(
                req, f"{bundle.version}/{self.verifier.key_generation}", self.clock()
            )
            if self.decisions
            else None
        )
        cached = self.decisions.get(key) if self.decisions else None
        if cached is not None:
            trace, status, reason, detail, policies = cached
            decision = _decision(decision_id, trace, status, reason, detail, policies)
        else:
            trace = _Trace()
            decision = await self._decide_all(req, bundle, trace, decision_id)
            if (
                self.decisions
                and decision.status != 503
                and not (trace.grant is not None and trace.grant.max_uses)
            ):
                self.decisions.put(
                    key,
                    (trace, decision.status, decision.reason, decision.detail, decision.policies),
                )
        elapsed = time.perf_counter() - started
        record = self._record(req, decision, trace, bundle.version, elapsed)
        if decision.allowed and self.receipts is not None:
            receipt = self._receipt(record, req)
            if receipt:
                decision = replace(decision, receipt=receipt)
            else:
                internal = InternalError("cannot sign the receipt")
                decision = _decision(
                    decision_id, trace, internal.status, internal.reason, internal.detail
                )
                record = self._record(req, decision, trace, bundle.version, elapsed)
        audit_started = time.perf_counter()
        if not await self._audit(record):
            decision = _decision(
                decision_id,
                trace,
                503,
                "audit_unavailable",
                "the audit trail cannot take the record; refusing",
            )
        if self.metrics:
            self.metrics.phases["audit"].observe(time.perf_counter() - audit_started)
            self.metrics.check_duration.observe(time.perf_counter() - started)
            self.metrics.decisions.labels(
                "allow" if decision.allowed else "deny", decision.reason
            ).inc()
            self.metrics.cache_requests.labels(
                "decisions", "hit" if cached is not None else "miss"
            ).inc()
            if trace.shadow_disagrees:
                self.metrics.shadow_disagreements.inc()
        return decision

    async def _decide_all(
        self, req: CheckInput, bundle: PolicyBundle, trace: _Trace, decision_id: str
    ) -> Decision:
        """Every phase, and the decision they come to; never raises."""
        try:
            await self._decide(req, bundle, trace)
            decision = _decision(decision_id, trace, 200, "allowed", "allowed")
        except (GrantError, PolicyDenied) as err:
            if self.options.dry_run:
                trace.dry_run = err.reason
                decision = _decision(
                    decision_id,
                    trace,
                    200,
                    "dry_run",
                    f"dry run: would deny: {err.reason}: {err.detail}",
                )
            else:
                decision = _decision(
                    decision_id,
                    trace,
                    err.status,
                    err.reason,
                    err.detail,
                    policies=err.policies or trace.policies,
                )
        except LasthopError as err:
            decision = _decision(
                decision_id,
                trace,
                err.status,
                err.reason,
                err.detail,
                policies=err.policies or trace.policies,
            )
        except Exception:  # noqa: BLE001 - any bug is a deny, never an allow
            log.exception("check %s failed", decision_id)
            internal = InternalError()
            decision = _decision(
                decision_id, trace, internal.status, internal.reason, internal.detail
            )
        return decision

    async def _decide(self, req: CheckInput, bundle: PolicyBundle, trace: _Trace) -> None:
        phase = self._phase_timer()
        # identity: the bearer token, verified
        token = identity.bearer_token(req.headers.get("authorization", []))
        trace.token_digest = identity.token_digest(token)
        claims = self.verifier.verify(token)
        trace.client_id = claims.client_id
        phase("token")

        # chain: user -> agents -> current actor; the presenter must be that actor
        chain = delegation.read_chain(claims, self.options.max_chain_depth)
        trace.chain = chain
        client = claims.client_id
        client_is_agent = bool(client) and await self.registry.get(client) is not None
        delegation.check_presenter(
            claims, chain, {client} if client_is_agent else set(), self._peer_agent(req)
        )

        # registry: every agent in the chain registered and active
        agents = await resolve_chain(self.registry, chain)
        trace.owner = agents[-1].owner if agents else ""

        # intent: purpose and txn travel with the decision
        trace.intent = self.intent.read(claims, req.headers.get(TXN_TOKEN_HEADER, []))

        # route: what the request is, in Cedar's terms
        route = bundle.routes.resolve(req.method, req.path)
        trace.route = route

        phase("chain")

        # grants: PHI needs a live grant of this actor for this user and purpose
        grant = None
        if route.phi:
            held = await self.store.for_pair(chain.actor, chain.user)
            try:
                grant = grants.select(held, route, trace.intent.purpose, self.clock())
            except GrantError as err:
                if err.reason == "grant_expired":
                    await self._expired(held, route)
                raise
            trace.grant = grant

        phase("grants")

        # cedar: Allow with no errors, or deny
        request = policy.CedarRequest(
            principal=EntityRef("Agent", chain.actor)
            if chain.agents
            else EntityRef("User", chain.user),
            action=route.action,
            resource=route.resource,
            context=self._context(req, chain, trace.intent, grant),
        )
        trace.cedar = request
        delta = policy.request_entities(route.resource, route.parents, agents, self.options.tiers)
        outcome = policy.evaluate(bundle, request, delta)
        trace.policies, trace.shadow = outcome.policies, outcome.shadow
        trace.shadow_disagrees = outcome.shadow_disagrees
        phase("policy")
        if not outcome.allowed:
            raise PolicyDenied(outcome.reason, outcome.detail, policies=outcome.policies)

        # uses: counted only for an allowed request, atomically across replicas
        if grant is not None and grant.max_uses:
            uses = await self.store.consume(grant)
            if uses > grant.max_uses:
                raise GrantError("grant_exhausted", f"grant `{grant.id}` has no uses left")
            detail = {
                "uses": uses,
                "max_uses": grant.max_uses,
                "agent": grant.agent,
                "user": grant.user,
            }
            await self._event("grant_used", grant.id, detail)
            if uses == grant.max_uses:
                await self._event("grant_exhausted", grant.id, detail)

    def _phase_timer(self) -> Callable[[str], None]:
        """`phase(name)` records the time since the previous call (or since this one)."""
        if self.metrics is None:
            return _no_phase
        phases = self.metrics.phases
        last = [time.perf_counter()]

        def phase(name: str) -> None:
            now = time.perf_counter()
            phases[name].observe(now - last[0])
            last[0] = now

        return phase

    async def _event(self, event: str, target: str, detail: dict[str, object]) -> None:
        """A lifecycle event the check caused; it must be on the trail before the check ends."""
        record = EventRecord(
            event=event, actor="lasthop", target=target, time=rfc3339(self.clock()), detail=detail
        )
        if not await self._audit(record):
            raise AuditUnavailable()

    async def _expired(self, held: list[Grant], route: RouteMatch) -> None:
        """Record each covering grant found expired, once per process."""
        now = self.clock()
        for grant in held:
            if (
                grant.expires_at <= now
                and grants.covers(grant, route)
                and grant.id not in self._expired_seen
            ):
                if len(self._expired_seen) >= 10_000:
                    self._expired_seen.clear()
                self._expired_seen.add(grant.id)
                await self._event(
                    "grant_expired",
                    grant.id,
                    {"agent": grant.agent, "user": grant.user, "expires_at": grant.expires_at},
                )

    async def _audit(self, record: AuditRecord | EventRecord) -> bool:
        """No record, no allow: a sink that refuses or raises fails the check closed."""
        try:
            return await self.audit.commit(record)
        except Exception:  # noqa: BLE001
            log.exception(
                "audit sink failed for %s",
                getattr(record, "decision_id", "") or getattr(record, "event", ""),
            )
            return False

    def _receipt(self, record: AuditRecord, req: CheckInput) -> str:
        """The signed receipt of an allow; "" when it cannot be made (the check then fails)."""
        assert self.receipts is not None
        try:
            return self.receipts.mint(record, req.body_sha256)
        except Exception:  # noqa: BLE001
            log.exception("receipt for %s failed", record.decision_id)
            return ""

    def _peer_agent(self, req: CheckInput) -> str | None:
        if not self.options.bind_peer:
            return None
        agent = delegation.spiffe_agent(req.peer_principal, self.options.trust_domain)
        if agent is None:
            raise DelegationError(
                "peer_mismatch", "no SPIFFE peer identity from Envoy in the trust domain to bind"
            )
        return agent

    def _context(
        self, req: CheckInput, chain: Chain, intent: Intent, grant: Grant | None
    ) -> dict[str, object]:
        context: dict[str, object] = {
            "user": {"__entity": {"type": "User", "id": chain.user}},
            "chain_depth": chain.depth,
            "agents": [{"__entity": {"type": "Agent", "id": a}} for a in chain.agents],
            "delegator": chain.delegator,
            "purpose": intent.purpose,
            "txn": intent.txn,
            "request": {"method": req.method, "path": req.path.partition("?")[0], "host": req.host},
            "time": int(self.clock()),
        }
        if grant is not None:
            context["grant"] = {
                "id": grant.id,
                "purpose": grant.purpose,
                "issued_by": grant.issued_by,
                "expires_at": grant.expires_at,
            }
        return context

    def _record(
        self, req: CheckInput, d: Decision, trace: _Trace, version: str, elapsed: float
    ) -> AuditRecord:
        chain = d.chain
        return AuditRecord(
            decision_id=d.decision_id,
            time=datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="milliseconds"),
            decision="allow" if d.allowed else "deny",
            status=d.status,
            reason=d.reason,
            user=chain.user if chain else "",
            chain=list(chain.agents) if chain else [],
            agent=chain.actor if chain else "",
            client_id=d.client_id,
            peer=req.peer_principal,
            action=d.route.action if d.route else "",
            resource=str(d.route.resource) if d.route else "",
            method=req.method,
            host=req.host,
            path=req.path.partition("?")[0],
            purpose=d.intent.purpose if d.intent else "",
            txn=d.intent.txn if d.intent else "",
            grant_id=d.grant.id if d.grant else "",
            policies=list(d.policies),
            policy_version=version,
            token_sha256=d.token_digest,
            latency_ms=round(elapsed * 1000, 3),
            shadow=[{"policy": h.policy, "effect": h.effect} for h in trace.shadow],
            shadow_disagrees=trace.shadow_disagrees,
            dry_run=trace.dry_run,
            owner=d.owner,
            phi=d.route.phi if d.route else False,
            parents=[str(p) for p in d.route.parents] if d.route else [],
        )


def _no_phase(name: str) -> None:
    return None


def _decision(
    decision_id: str,
    trace: _Trace,
    status: int,
    reason: str,
    detail: str,
    policies: tuple[str, ...] = (),
) -> Decision:
    return Decision(
        decision_id=decision_id,
        allowed=status == 200,
        status=status,
        reason=reason,
        detail=detail,
        chain=trace.chain,
        intent=trace.intent,
        route=trace.route,
        grant=trace.grant,
        policies=policies or trace.policies,
        client_id=trace.client_id,
        token_digest=trace.token_digest,
        cedar=trace.cedar.as_cedar() if trace.cedar else None,
        shadow=tuple((h.policy, h.effect) for h in trace.shadow),
        shadow_disagrees=trace.shadow_disagrees,
        owner=trace.owner,
    )
