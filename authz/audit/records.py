"""What goes into the audit trail, and the sink the request path hands it to.

Three kinds of record share one hash chain (`authz.audit.chain`), told apart
by `type`:

    decision    one per Check, allow or deny (`AuditRecord`)
    event       a lifecycle change: the trail opened, a grant issued, used or
                revoked, an agent registered or suspended (`EventRecord`)
    checkpoint  a signed statement of the chain's head (`authz.audit.chain`)

The chain hashes every field a record holds, so adding a field (a future
`shadow` decision, say) needs no change to hashing or verification. Records
never hold a token, only its SHA-256, nor an MCP tool call's arguments (they
may be PHI), only the tool and the SHA-256 of the arguments' canonical JSON.
`json.dumps` escapes every control and non-ASCII character, so each record
stays one ASCII line whatever the claims contain. Floats are not allowed in
the chained part except `latency_ms`, which always holds at most three
decimals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from authz.model import CheckInput, Decision, Grant

if TYPE_CHECKING:
    from authz.audit.receipts import Unsigned

DECISION = "decision"
EVENT = "event"
CHECKPOINT = "checkpoint"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    decision_id: str
    time: str  # RFC 3339, UTC, milliseconds
    decision: str  # allow | deny
    status: int
    reason: str
    user: str
    chain: list[str]
    agent: str
    client_id: str
    peer: str
    action: str
    resource: str
    method: str
    host: str
    path: str  # without the query string
    purpose: str
    txn: str
    grant_id: str
    policies: list[str]
    policy_version: str
    token_sha256: str
    latency_ms: float
    shadow: list[dict[str, str]] = field(default_factory=list)  # [{policy, effect}]
    shadow_disagrees: bool = False  # enforcing the shadow policies would flip the decision
    dry_run: str = ""  # dry-run mode: the reason this allow would have been a deny
    owner: str = ""  # the current actor's accountable owner, from the registry
    phi: bool = False  # the route is marked `phi = true`: an allow is a disclosure
    parents: list[str] = field(default_factory=list)  # the resource's ancestors
    request_id: str = ""  # Envoy's x-request-id
    trace_id: str = ""  # the W3C trace id: Envoy's trace, or Lasthop's own span's
    mcp_method: str = ""  # an MCP request's JSON-RPC method (`batch` for a batch)
    tool: str = ""  # an MCP tools/call: the tool
    arguments_sha256: str = ""  # and the SHA-256 of its arguments; never the arguments
    approved_by: str = ""  # who issued the grant used: a person's `sub` or `policy:<id>`
    break_glass: bool = False  # the grant used was emergency (break-glass) access
    kind: str = "http"  # http, mcp or connection (a database connection)
    listener: str = ""  # a connection: the SPIFFE ID of the listener it reached

    def to_dict(self) -> dict[str, Any]:
        """Every field, shallow: a record is never changed once made."""
        return {"type": DECISION, **{name: getattr(self, name) for name in _DECISION_FIELDS}}

    @classmethod
    def of(
        cls, d: Decision, req: CheckInput, time: str, elapsed: float, trace_id: str = ""
    ) -> AuditRecord:
        """The record of decision `d` on request `req`, taken `elapsed` seconds, at `time`,
        under trace `trace_id`."""
        chain, intent, route = d.chain, d.intent, d.route
        return cls(
            decision_id=d.decision_id,
            time=time,
            decision="allow" if d.allowed else "deny",
            status=d.status,
            reason=str(d.reason),
            user=chain.user if chain else "",
            chain=list(chain.agents) if chain else [],
            agent=chain.actor if chain else "",
            client_id=d.client_id,
            peer=req.peer_principal,
            action=route.action if route else "",
            resource=str(route.resource) if route else "",
            method=req.method,
            host=req.host,
            path=req.path,
            purpose=intent.purpose if intent else "",
            txn=intent.txn if intent else "",
            grant_id=d.grant.id if d.grant else "",
            policies=list(d.policies),
            policy_version=d.policy_version,
            token_sha256=d.token_digest,
            latency_ms=round(elapsed * 1000, 3),
            shadow=[{"policy": policy, "effect": effect} for policy, effect in d.shadow],
            shadow_disagrees=d.shadow_disagrees,
            dry_run=d.dry_run,
            owner=d.owner,
            phi=route.phi if route else False,
            parents=[str(p) for p in route.parents] if route else [],
            request_id=req.request_id,
            trace_id=trace_id,
            mcp_method=route.mcp.method if route and route.mcp else "",
            tool=route.mcp.tool if route and route.mcp else "",
            arguments_sha256=route.mcp.arguments_sha256 if route and route.mcp else "",
            approved_by=d.grant.issued_by if d.grant else "",
            break_glass=d.grant.break_glass if d.grant else False,
            kind=d.kind,
            listener=req.connection.listener if req.connection else "",
        )


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A lifecycle event: `event` says what, `actor` who did it, `target` to what."""

    event: str  # trail_opened, grant_issued|revoked|used|exhausted|expired, agent_registered...
    actor: str  # the admin token's `sub`, or `lasthop` for the server itself
    target: str  # a grant id, an agent id, a file
    time: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": EVENT, **{name: getattr(self, name) for name in _EVENT_FIELDS}}


@dataclass(frozen=True, slots=True)
class Repeat:
    """The record of a check that repeated a cached decision: what the first check's record
    (`like`) says, with this check's own id, time, latency, request id and trace id. The
    writer encodes it from `like`'s encoding (`templates.py`), so a repeated decision costs
    no JSON encoding."""

    like: AuditRecord
    decision_id: str
    time: str
    latency_ms: float
    request_id: str
    trace_id: str

    def record(self) -> AuditRecord:
        return replace(
            self.like,
            decision_id=self.decision_id,
            time=self.time,
            latency_ms=self.latency_ms,
            request_id=self.request_id,
            trace_id=self.trace_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return self.record().to_dict()


def grant_detail(grant: Grant) -> dict[str, Any]:
    """A grant event's detail (issued, revoked): every field but the id, which is the target."""
    return {
        "agent": grant.agent,
        "user": grant.user,
        "actions": list(grant.actions),
        "resources": list(grant.resources),
        "purpose": grant.purpose,
        "issued_by": grant.issued_by,
        "issued_at": grant.issued_at,
        "expires_at": grant.expires_at,
        "max_uses": grant.max_uses,
    }


_DECISION_FIELDS = tuple(f.name for f in fields(AuditRecord))
_EVENT_FIELDS = tuple(f.name for f in fields(EventRecord))

Record = AuditRecord | EventRecord | Repeat


class Committed(NamedTuple):
    """What the sink answers `commit`: taken (as safe as `audit.fsync` promises), and the
    signed receipt when one was asked for."""

    ok: bool
    receipt: str = ""

    def __bool__(self) -> bool:
        return self.ok


class AuditSink(Protocol):
    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        """Hand `record` to the trail, and sign `receipt` with the batch it is written in.
        `ok` once the record is as safe as `audit.fsync` promises (`always`: on disk; an
        interval: handed to the writer, or written when it carries a receipt); not `ok` if
        it cannot be, and then there is no receipt either."""
        ...


@runtime_checkable
class BlockingSink(Protocol):
    """A sink a thread other than the event loop's can commit to (the threaded front)."""

    def commit_blocking(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        """`commit`, waiting in the calling thread."""
        ...


class NullAudit:
    """Takes every record and keeps none, signing no receipt: the pipeline measured without
    its trail (benchmarks)."""

    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        return Committed(True)


class MemoryAudit:
    """Keeps records in a list (a repeat as the whole record); signs each receipt alone. Tests."""

    def __init__(self) -> None:
        self.records: list[AuditRecord | EventRecord] = []

    def emit(self, record: Record) -> bool:
        self.records.append(record.record() if isinstance(record, Repeat) else record)
        return True

    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        try:
            signed = receipt.signer.sign([receipt])[0] if receipt is not None else ""
        except Exception:  # noqa: BLE001 - as the writer: a receipt that cannot be signed refuses
            return Committed(False)
        return Committed(self.emit(record), signed)
