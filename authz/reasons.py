"""Every reason a check can end with: the code, the audit field, the metric label, the docs.

Each member carries the HTTP status Envoy returns for it, the phase that
decides it, and one line saying what it means. `docs/reference/reasons.md`
is generated from this table (and a test fails when it drifts), so the code,
the metrics, the tests and the docs all take their codes from here.

A Cedar `forbid` may name its own reason with `@reason("...")`; such a
reason is the policy author's, not listed here, and is always a 403.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    status: int
    phase: str
    summary: str

    def __new__(cls, value: str, status: int, phase: str, summary: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.phase = phase
        member.summary = summary
        return member

    # allow
    ALLOWED = "allowed", 200, "cedar", "every phase passed and Cedar allowed"
    DRY_RUN = "dry_run", 200, "cedar", "dry-run mode: a grant or policy denial was not enforced"

    # request: the CheckRequest itself
    MALFORMED_REQUEST = (
        "malformed_request",
        400,
        "request",
        "the CheckRequest is not a protobuf Lasthop can decode (invalid UTF-8 in a string...)",
    )

    # identity: the bearer token (401)
    MISSING_TOKEN = "missing_token", 401, "identity", "no `authorization` header"
    MALFORMED_AUTHORIZATION = (
        "malformed_authorization",
        401,
        "identity",
        "not exactly one `Bearer <jwt>` authorization header",
    )
    TOKEN_TOO_LARGE = "token_too_large", 401, "identity", "token longer than 8 KiB"
    MALFORMED_TOKEN = (
        "malformed_token",
        401,
        "identity",
        "not a compact JWS of base64url JSON objects, or JSON nested too deeply",
    )
    INVALID_ENCODING = (
        "invalid_encoding",
        401,
        "identity",
        "a token part is not strict UTF-8 (BOM, NUL, UTF-16, unpaired surrogate)",
    )
    DUPLICATE_MEMBER = "duplicate_member", 401, "identity", "a JSON member appears twice"
    INVALID_TOKEN_TYPE = (
        "invalid_token_type",
        401,
        "identity",
        "`typ` is not at+jwt, application/at+jwt or JWT",
    )
    ALGORITHM_NOT_ALLOWED = (
        "algorithm_not_allowed",
        401,
        "identity",
        "`alg` is not in `identity.algorithms`",
    )
    UNSUPPORTED_CRITICAL_HEADER = (
        "unsupported_critical_header",
        401,
        "identity",
        "`crit` or `b64` header present",
    )
    EMBEDDED_KEY_REFUSED = (
        "embedded_key_refused",
        401,
        "identity",
        "`jwk`, `jku`, `x5u` or `x5c` in the header",
    )
    UNKNOWN_KEY = "unknown_key", 401, "identity", "`kid` names no key of the issuer"
    KEY_ALGORITHM_MISMATCH = (
        "key_algorithm_mismatch",
        401,
        "identity",
        "the key is bound to another algorithm",
    )
    BAD_SIGNATURE = "bad_signature", 401, "identity", "the signature does not verify"
    INVALID_ISSUER = "invalid_issuer", 401, "identity", "`iss` is not the configured issuer"
    INVALID_AUDIENCE = "invalid_audience", 401, "identity", "`aud` does not name this service"
    MISSING_CLAIM = "missing_claim", 401, "identity", "`exp`, `iat` or `sub` missing"
    INVALID_CLAIM = "invalid_claim", 401, "identity", "a claim has the wrong type"
    TOKEN_EXPIRED = "token_expired", 401, "identity", "`exp` has passed (with leeway)"
    TOKEN_ISSUED_IN_FUTURE = (
        "token_issued_in_future",
        401,
        "identity",
        "`iat` is in the future (with leeway)",
    )
    TOKEN_NOT_YET_VALID = (
        "token_not_yet_valid",
        401,
        "identity",
        "`nbf` is in the future (with leeway)",
    )
    TOKEN_LIFETIME_TOO_LONG = (
        "token_lifetime_too_long",
        401,
        "identity",
        "`exp - iat` exceeds `identity.max_token_lifetime`",
    )

    # identity of a connection: its mTLS client certificate (`source.principal`)
    INVALID_PEER = (
        "invalid_peer",
        401,
        "identity",
        "a connection's client certificate holds no valid SPIFFE ID (is the listener mTLS?)",
    )

    # chain: the RFC 8693 delegation chain
    INVALID_ACT = "invalid_act", 401, "chain", "`act` is not an object with a string `sub`"
    CHAIN_TOO_DEEP = ("chain_too_deep", 403, "chain", "more agents than `identity.max_chain_depth`")
    DELEGATION_CYCLE = "delegation_cycle", 403, "chain", "an actor appears twice in the chain"
    IMPERSONATION = (
        "impersonation",
        403,
        "chain",
        "`client_id`/`azp` is not the current actor, or an agent presents a user's token",
    )
    PEER_MISMATCH = (
        "peer_mismatch",
        403,
        "registry",
        "the mTLS peer is not exactly the SPIFFE ID the current actor is bound to",
    )

    # registry
    AGENT_UNREGISTERED = (
        "agent_unregistered",
        403,
        "registry",
        "an agent in the chain is not registered",
    )
    AGENT_SUSPENDED = "agent_suspended", 403, "registry", "an agent in the chain is suspended"

    # intent
    INVALID_TXN_TOKEN = (
        "invalid_txn_token",
        401,
        "intent",
        "the `txn-token` header does not verify",
    )

    # route
    INVALID_PATH = (
        "invalid_path",
        403,
        "route",
        "`..`, `.`, `//`, a backslash, an encoded separator or a control character in the path",
    )
    NO_ROUTE = "no_route", 403, "route", "no route maps the method and path"
    NO_DATABASE = (
        "no_database",
        403,
        "route",
        "no `[[database]]` in the route table is the listener a connection reached",
    )
    METHOD_OVERRIDE = (
        "method_override",
        403,
        "route",
        "a method override header (`x-http-method-override`...) names another method",
    )

    # route, MCP: the JSON-RPC body of a POST to an MCP endpoint, parsed by Lasthop
    MCP_BODY_MISSING = (
        "mcp_body_missing",
        503,
        "route",
        "Envoy sent no body for an MCP endpoint: set `with_request_body` on its ext_authz",
    )
    MCP_BODY_PARTIAL = (
        "mcp_body_partial",
        413,
        "route",
        "Envoy sent part of the body (`allow_partial_message` is true and it was cut)",
    )
    MCP_BODY_TOO_LARGE = (
        "mcp_body_too_large",
        413,
        "route",
        "the body is longer than the endpoint's `max_body_bytes`",
    )
    MCP_INVALID_ENCODING = (
        "mcp_invalid_encoding",
        400,
        "route",
        "the body is not strict UTF-8 (an invalid byte, a BOM, an unpaired surrogate)",
    )
    MCP_NOT_JSON = "mcp_not_json", 400, "route", "the body is not one JSON document"
    MCP_TOO_DEEP = (
        "mcp_too_deep",
        400,
        "route",
        "the JSON nests deeper than the endpoint's `max_depth`",
    )
    MCP_DUPLICATE_MEMBER = (
        "mcp_duplicate_member",
        400,
        "route",
        "a JSON member appears twice in one object",
    )
    MCP_INVALID_MESSAGE = (
        "mcp_invalid_message",
        400,
        "route",
        "not a JSON-RPC 2.0 request or notification of the shape MCP defines",
    )
    MCP_HEADER_MISMATCH = (
        "mcp_header_mismatch",
        400,
        "route",
        "an `mcp-method` or `mcp-name` header disagrees with the body",
    )
    MCP_BATCH_REFUSED = (
        "mcp_batch_refused",
        403,
        "route",
        "a JSON-RPC batch that holds a tool call, or whose messages map to different "
        "actions or resources",
    )
    MCP_METHOD_NOT_ALLOWED = (
        "mcp_method_not_allowed",
        403,
        "route",
        "the route table has no rule for the JSON-RPC method",
    )
    MCP_UNKNOWN_TOOL = "mcp_unknown_tool", 403, "route", "the route table declares no such tool"
    MCP_INVALID_ARGUMENTS = (
        "mcp_invalid_arguments",
        403,
        "route",
        "the tool's arguments do not match the shape the route table declares",
    )

    # grants
    NO_GRANT = "no_grant", 403, "grants", "no grant of (agent, user) covers the action and resource"
    GRANT_EXPIRED = "grant_expired", 403, "grants", "every covering grant has expired"
    TASK_MISMATCH = (
        "task_mismatch",
        403,
        "grants",
        "covering grants are bound to another task (`txn`) than the request's",
    )
    GRANT_NOT_NAMED = (
        "grant_not_named",
        403,
        "chain",
        "a connection's TLS server name does not start with the id of the grant it uses",
    )
    GRANT_ENDS_TOO_SOON = (
        "grant_ends_too_soon",
        403,
        "grants",
        "the connection's grant ends before `connections.max_duration_seconds` from now",
    )
    PURPOSE_MISMATCH = (
        "purpose_mismatch",
        403,
        "grants",
        "covering grants are for another purpose",
    )
    GRANT_EXHAUSTED = "grant_exhausted", 403, "uses", "the grant's `max_uses` are spent"

    # cedar
    POLICY_DENIED = (
        "policy_denied",
        403,
        "cedar",
        "no policy permits, or a forbid without `@reason` matched",
    )
    POLICY_ERROR = (
        "policy_error",
        503,
        "cedar",
        "Cedar could not decide (NoDecision or an erroring policy)",
    )

    # availability: Lasthop cannot decide and fails closed
    STORE_UNAVAILABLE = (
        "store_unavailable",
        503,
        "any",
        "the store is down, slow or answered junk",
    )
    AUDIT_UNAVAILABLE = (
        "audit_unavailable",
        503,
        "audit",
        "the audit trail cannot take the record",
    )
    INTERNAL_ERROR = (
        "internal_error",
        503,
        "any",
        "a bug, or a receipt that could not be signed: failed closed",
    )


POLICY_REASON_STATUS = 403  # a forbid's own `@reason`
