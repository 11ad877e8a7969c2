"""Typed data passed between the phases of a check."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from authz import spiffe

# Every identifier pattern is used with `fullmatch`: `$` would let a trailing newline through.
_ENTITY = re.compile(
    r'([A-Z][A-Za-z0-9_]*(?:::[A-Z][A-Za-z0-9_]*)*)::"([^"\\\x00-\x1f\x7f-\x9f]*)"'
)


def split_target(target: str) -> tuple[str, str]:
    """A request target -> (path, query). The fragment, if a client sent one, is dropped."""
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


KINDS = ("http", "mcp", "connection")  # what a check decides; the metrics' `kind` label


@dataclass(frozen=True, slots=True)
class Connection:
    """A network-level CheckRequest: a new connection to a listener Envoy fronts (no HTTP)."""

    listener: str  # destination.principal: the SPIFFE ID of the certificate the listener presents
    server_name: str  # the TLS server name (SNI) the client sent: its first label names a grant
    source: str = ""  # the client's address, `ip:port`


@dataclass(frozen=True, slots=True)
class CheckInput:
    """What Envoy told us about one HTTP request or new connection, protocol-free."""

    method: str
    path: str  # as Envoy saw it, without the query string (see `split_target`)
    host: str
    headers: dict[str, list[str]]  # lowercase name -> every value sent
    peer_principal: str = ""  # source.principal, e.g. spiffe://trust/ns/x/sa/scribe
    request_id: str = ""  # Envoy's x-request-id
    body_sha256: str = ""  # when Envoy sent the whole body (with_request_body); for receipts
    traceparent: str = ""  # the W3C trace context the check continues (see codec.traceparent)
    body: bytes | None = None  # what Envoy sent of the body; None: it sends none (no
    # `with_request_body`); read only by an MCP endpoint, never logged
    body_partial: bool = False  # Envoy says it sent only the start of the body
    connection: Connection | None = None  # a network CheckRequest: method, path, host are ""

    @classmethod
    def with_body(cls, body: bytes, **fields: Any) -> CheckInput:
        """A request whose whole body was sent, as Envoy's `with_request_body` does."""
        return cls(body=body, body_sha256=hashlib.sha256(body).hexdigest(), **fields)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified access token: the claims the phases read."""

    subject: str
    issuer: str
    client_id: str  # client_id, else azp, else ""
    act: Any  # the `act` claim as sent (validated by the delegation phase)
    has_act: bool  # present at all: `"act": null` is a malformed act, not "no act"
    purpose: str
    txn: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Chain:
    """user -> first agent -> ... -> current actor."""

    user: str
    agents: tuple[str, ...]  # first agent first, current actor last; empty: the user acts

    @property
    def actor(self) -> str:
        return self.agents[-1] if self.agents else self.user

    @property
    def delegator(self) -> str:
        """Who handed the current actor the task: the previous agent, else the user."""
        return self.agents[-2] if len(self.agents) > 1 else self.user

    @property
    def depth(self) -> int:
        return len(self.agents)

    def render(self) -> str:
        return " -> ".join((self.user, *self.agents))


@dataclass(frozen=True, slots=True)
class Intent:
    purpose: str
    txn: str
    source: str  # "txn-token" or "access-token"


@dataclass(frozen=True, slots=True)
class EntityRef:
    type: str
    id: str

    def __str__(self) -> str:
        """`Type::"id"`, which `parse` reads back: only what it refuses is escaped."""
        return f"{self.type}::{json.dumps(self.id, ensure_ascii=False)}"

    def as_cedar(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}

    @classmethod
    def parse(cls, text: str) -> EntityRef:
        """`Type::"id"` -> EntityRef. Raises ValueError for anything else."""
        match = _ENTITY.fullmatch(text)
        if not match:
            raise ValueError(f'`{text}` is not a Cedar entity reference like Patient::"p-1001"')
        return cls(match.group(1), match.group(2))


@dataclass(frozen=True, slots=True)
class RpcMessage:
    """One JSON-RPC 2.0 message of an MCP body, as parsed (`check.mcp`)."""

    method: str  # "" for a response the client sends back (it has `result` or `error`)
    is_notification: bool = False  # no `id`
    tool: str = ""  # tools/call: `params.name`
    arguments: dict[str, Any] = field(default_factory=dict)  # tools/call: `params.arguments`


@dataclass(frozen=True, slots=True)
class ToolCall:
    """What an MCP request was: its JSON-RPC method and, for `tools/call`, the tool."""

    method: str  # tools/call, initialize, tools/list, ... (the first, for a batch)
    tool: str = ""  # the tool's name, for tools/call
    arguments: dict[str, Any] | None = None  # as declared and checked; never audited
    arguments_sha256: str = ""  # SHA-256 of the arguments' canonical JSON: what is audited


@dataclass(frozen=True, slots=True)
class RouteMatch:
    action: str
    resource: EntityRef
    parents: tuple[EntityRef, ...]  # the resource's ancestors, e.g. its Patient
    template: str  # the route's path template, for audit and explanations
    phi: bool
    mcp: ToolCall | None = None  # the MCP request, when the route is an MCP endpoint


AGENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
PURPOSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
# A person: a token's `sub`, which OpenID Connect caps at 255 ASCII characters.
USER_ID = re.compile(r"[!-~]{1,255}")
MAX_DESCRIPTION = 1000
AGENT_STATUSES = ("active", "suspended")  # what seeds and the admin API may set
# what the store may hold: a deregistered agent stays as a tombstone, so a seed in
# entities.json cannot bring it back on a restart or reload
STORED_STATUSES = (*AGENT_STATUSES, "deregistered")


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered non-human identity, with the human accountable for it."""

    id: str
    owner: str
    risk: int  # 0 to 100
    status: str  # "active" | "suspended"
    description: str = ""
    allowed_purposes: tuple[str, ...] = ()  # purposes it may act for
    created_at: int = 0
    registered_by: str = ""
    spiffe_id: str = ""  # the one workload it runs as; "" binds through identity.spiffe_id_template

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def registered(self) -> bool:
        return self.status != "deregistered"

    def check(self, statuses: tuple[str, ...] = AGENT_STATUSES) -> Agent:
        """The one agent validator (admin API, entities.json, the store). Raises ValueError
        naming the field; returns the agent unchanged when every field is well formed."""
        if not AGENT_ID.fullmatch(self.id):
            raise ValueError(
                f"id `{self.id}` must be 1-63 lowercase letters, digits, `.`, `_` or `-`, "
                "starting with a letter or digit"
            )
        if not USER_ID.fullmatch(self.owner):
            raise ValueError(
                f"agent `{self.id}`: `owner` must name the accountable human "
                "(1-255 printable ASCII characters, no spaces)"
            )
        if not 0 <= self.risk <= 100:
            raise ValueError(f"agent `{self.id}`: `risk` must be an integer 0 to 100")
        if self.status not in statuses:
            raise ValueError(f"agent `{self.id}`: `status` must be one of {list(statuses)}")
        for purpose in self.allowed_purposes:
            if not PURPOSE.fullmatch(purpose):
                raise ValueError(f"agent `{self.id}`: purpose `{purpose}` is not a purpose name")
        if len(self.description) > MAX_DESCRIPTION:
            raise ValueError(
                f"agent `{self.id}`: `description` must be at most {MAX_DESCRIPTION} characters"
            )
        if self.spiffe_id:
            try:
                spiffe.parse(self.spiffe_id)
            except ValueError as err:
                raise ValueError(f"agent `{self.id}`: `spiffe_id`: {err}") from None
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Agent:
        """Raises ValueError on anything that is not a well-formed agent."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("agent is not an object")
        try:
            agent = cls(
                id=_str(data["id"]),
                owner=_str(data["owner"]),
                risk=_int(data["risk"]),
                status=_str(data["status"]),
                description=_str(data.get("description", "")),
                allowed_purposes=tuple(_str(p) for p in data.get("allowed_purposes", [])),
                created_at=_int(data.get("created_at", 0)),
                registered_by=_str(data.get("registered_by", "")),
                spiffe_id=_str(data.get("spiffe_id", "")),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed agent: {err}") from err
        return agent.check(STORED_STATUSES)


@dataclass(frozen=True, slots=True)
class RiskTiers:
    """risk -> tier: below `medium` is low, below `high` is medium, else high."""

    medium: int = 30
    high: int = 70

    def of(self, risk: int) -> str:
        return "high" if risk >= self.high else "medium" if risk >= self.medium else "low"


DEFAULT_TIERS = RiskTiers()


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    agent: str
    user: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]  # Cedar entity references, e.g. Patient::"p-1001"
    purpose: str
    issued_by: str
    issued_at: int
    expires_at: int
    max_uses: int = 0  # 0: unlimited
    txn: str = ""  # bound to this task: covers only requests carrying this txn; "": any
    request_id: str = ""  # the access request it was approved on; "": issued directly
    break_glass: bool = False  # emergency access: flagged in the accounting of disclosures

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Grant:
        """Raises ValueError on anything that is not a well-formed grant. Grants stored
        before `txn`, `request_id` and `break_glass` existed read with their defaults."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("grant is not an object")
        try:
            grant = cls(
                id=_str(data["id"]),
                agent=_str(data["agent"]),
                user=_str(data["user"]),
                actions=tuple(_str(a) for a in data["actions"]),
                resources=tuple(_str(r) for r in data["resources"]),
                purpose=_str(data["purpose"]),
                issued_by=_str(data["issued_by"]),
                issued_at=_int(data["issued_at"]),
                expires_at=_int(data["expires_at"]),
                max_uses=_int(data.get("max_uses", 0)),
                txn=_str(data.get("txn", "")),
                request_id=_str(data.get("request_id", "")),
                break_glass=_bool(data.get("break_glass", False)),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed grant: {err}") from err
        return grant


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoke the store made durable: the grant, and whether an earlier call had already
    revoked it (a retry: the store found its tombstone and made it durable again)."""

    grant: Grant
    already: bool = False


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return tuple(_str(v) for v in value)


REQUEST_STATUSES = ("pending", "approved", "refused", "denied", "expired", "cancelled")
_FIELD_TYPES = {"str": _str, "int": _int, "bool": _bool, "tuple[str, ...]": _strs}


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """An agent's request for a grant, and what became of it (see `authz.access.requests`).

    pending -> approved (by policy or a person) | denied (by a person) | expired
               (undecided in time) | cancelled (its task ended); or refused at once
    """

    id: str
    agent: str  # the current actor that asked
    user: str  # on whose behalf the chain acts
    chain: tuple[str, ...]  # every agent, first first
    action: str
    resource: str  # a Cedar entity reference
    purpose: str
    ttl_seconds: int
    max_uses: int  # 0: unlimited
    txn: str  # bind the grant to this task; "": not bound
    reason: str  # the agent's own words
    break_glass: bool
    created_at: int
    expires_at: int  # still pending after this: expired
    status: str = "pending"
    approvers: tuple[str, ...] = ()  # whom policy lets approve: user, owner, role:<name>
    policies: tuple[str, ...] = ()  # the approval policies that decided
    decided_by: str = ""  # a person's `sub`, `policy:<id>`, or `lasthop`
    decided_at: int = 0
    outcome: str = ""  # why it was refused, denied, expired or cancelled: a stable code
    detail: str = ""  # the same in a sentence
    limit: str = ""  # refused over a policy limit: which, e.g. `ttl_seconds <= 900`
    grant_id: str = ""
    owner: str = ""  # the agent's accountable owner when it asked

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> AccessRequest:
        """Raises ValueError on anything that is not a well-formed access request."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("access request is not an object")
        values: dict[str, Any] = {}
        try:
            for f in fields(cls):
                if f.name in data:
                    values[f.name] = _FIELD_TYPES[str(f.type)](data[f.name])
                elif f.default is MISSING:
                    raise KeyError(f.name)
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed access request: {err}") from err
        request = cls(**values)
        if request.status not in REQUEST_STATUSES:
            raise ValueError(f"malformed access request: status `{request.status}`")
        return request


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check. `allowed` is True only for a Cedar Allow with no errors."""

    decision_id: str
    allowed: bool
    status: int  # 200 on allow, else 401 / 403 / 503
    reason: str  # a `Reason`, or a forbid's own `@reason`
    detail: str
    chain: Chain | None = None
    intent: Intent | None = None
    route: RouteMatch | None = None
    grant: Grant | None = None
    policies: tuple[str, ...] = ()
    client_id: str = ""
    token_digest: str = ""
    cedar: dict[str, Any] | None = None  # the Cedar request as evaluated, for explanations
    shadow: tuple[tuple[str, str], ...] = ()  # (@id, effect) of shadow policies that held
    shadow_disagrees: bool = False
    owner: str = ""  # the current actor's accountable owner, once the registry resolved it
    dry_run: str = ""  # dry-run mode: the reason this allow would have been a deny
    policy_version: str = ""  # the policy set that decided
    receipt: str = ""  # on allow: the signed receipt for the upstream
    kind: str = "http"  # one of KINDS
    ends_at: float = 0.0  # a connection: when Envoy ends it at the latest (grant and maximum)
